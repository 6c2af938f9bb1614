// See lane_journal.h.
#include "lane_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace llmaas::gw {
namespace {

constexpr size_t kFirstMap = 1 << 20;  // as journal.py: grown by doubling past it

// msgpack, the few forms a LedgerEntry needs (https://github.com/msgpack/msgpack/blob/master/spec.md).
void put_be(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void pack_str(std::string* out, const std::string& s) {
  size_t n = s.size();
  if (n < 32) {
    out->push_back(static_cast<char>(0xa0 | n));
  } else if (n < 256) {
    out->push_back(static_cast<char>(0xd9));
    put_be(out, n, 1);
  } else if (n < 65536) {
    out->push_back(static_cast<char>(0xda));
    put_be(out, n, 2);
  } else {
    out->push_back(static_cast<char>(0xdb));
    put_be(out, n, 4);
  }
  out->append(s);
}

void pack_int(std::string* out, int64_t v) {
  if (v >= 0 && v < 128) {
    out->push_back(static_cast<char>(v));
  } else {
    out->push_back(static_cast<char>(0xd3));
    put_be(out, static_cast<uint64_t>(v), 8);
  }
}

void pack_double(std::string* out, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  out->push_back(static_cast<char>(0xcb));
  put_be(out, bits, 8);
}

void put_le32(uint8_t* at, uint32_t v) {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Slicing by 8: entries[k][b] is the CRC of byte b followed by k zero bytes, so eight bytes are
// folded with eight independent lookups instead of a chain of eight (the frame's CRC was 3% of the
// lane thread's time byte by byte).
struct CrcTables {
  uint32_t entries[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      entries[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int k = 1; k < 8; ++k) entries[k][i] = (entries[k - 1][i] >> 8) ^ entries[0][entries[k - 1][i] & 0xff];
  }
};

}  // namespace

uint32_t crc32(const void* data, size_t size) {
  static const CrcTables tables;
  const auto& t = tables.entries;
  uint32_t c = 0xffffffffu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (; size >= 8; p += 8, size -= 8) {
    uint32_t lo = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
                  static_cast<uint32_t>(p[3]) << 24;
    const uint32_t hi = static_cast<uint32_t>(p[4]) | static_cast<uint32_t>(p[5]) << 8 |
                        static_cast<uint32_t>(p[6]) << 16 | static_cast<uint32_t>(p[7]) << 24;
    lo ^= c;
    c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
        t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  for (; size > 0; ++p, --size) c = t[0][(c ^ *p) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

void latin1_to_utf8(std::string* bytes) {
  size_t high = 0;
  for (char c : *bytes) high += static_cast<unsigned char>(c) >> 7;
  if (high == 0) return;  // ASCII, nearly always
  std::string text;
  text.reserve(bytes->size() + high);
  for (char c : *bytes) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x80) {
      text.push_back(c);
    } else {
      text.push_back(static_cast<char>(0xc0 | (u >> 6)));
      text.push_back(static_cast<char>(0x80 | (u & 0x3f)));
    }
  }
  bytes->swap(text);
}

LaneJournal::LaneJournal(const std::string& path) {
  for (int n = 0; n < 2; ++n) {
    std::string name = path + "-" + std::to_string(n);
    fds_[n] = open(name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fds_[n] < 0) {
      std::string error = std::strerror(errno);
      if (n == 1) close(fds_[0]);
      throw std::runtime_error("cannot open " + name + ": " + error);
    }
    if (n == 0 && flock(fds_[0], LOCK_EX | LOCK_NB) != 0) {
      close(fds_[0]);
      throw std::runtime_error(name + " is held by another process");
    }
    // Python replayed and emptied both before the lane opened them.
    if (ftruncate(fds_[n], 0) != 0) {
      std::string error = std::strerror(errno);
      close(fds_[0]);
      if (n == 1) close(fds_[1]);
      throw std::runtime_error("cannot empty " + name + ": " + error);
    }
  }
}

LaneJournal::~LaneJournal() {
  for (int n = 0; n < 2; ++n) {
    if (maps_[n] != nullptr) munmap(maps_[n], sizes_[n]);
    if (fds_[n] >= 0) {
      int ignored = ftruncate(fds_[n], static_cast<off_t>(ends_[n]));  // the frames stay for the replay
      (void)ignored;
      close(fds_[n]);  // the first drops the flock
    }
  }
}

bool LaneJournal::reserve(int n, size_t needed) {
  if (maps_[n] != nullptr && needed <= sizes_[n]) return true;
  size_t size = std::max(kFirstMap, sizes_[n]);
  while (size < needed) size *= 2;
  // Blocks first, so a full disk fails here rather than as a SIGBUS at the copy.
  int error = posix_fallocate(fds_[n], 0, static_cast<off_t>(size));
  if (error == EOPNOTSUPP || error == EINVAL) error = ftruncate(fds_[n], static_cast<off_t>(size)) == 0 ? 0 : errno;
  if (error != 0) return false;
  void* mapped = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds_[n], 0);
  if (mapped == MAP_FAILED) return false;
  if (maps_[n] != nullptr) munmap(maps_[n], sizes_[n]);
  maps_[n] = static_cast<uint8_t*>(mapped);
  sizes_[n] = size;
  return true;
}

bool LaneJournal::append(LedgerEntry e) {
  // A header's bytes are not always UTF-8: as they came, they made the usage and audit tables
  // unreadable to Python (and a replay stopped at the frame, the entries after it lost).
  latin1_to_utf8(&e.request_id);
  std::lock_guard<std::mutex> lock(mutex_);
  std::string& f = frame_;
  f.assign(8, '\0');
  f.push_back(static_cast<char>(0x90 | 14));  // fixarray of the 14 fields
  pack_str(&f, e.request_id);
  pack_double(&f, e.time);
  pack_str(&f, e.tenant);
  pack_str(&f, e.token_id);
  pack_str(&f, e.model);
  pack_int(&f, e.input);
  pack_int(&f, e.cached_input);
  pack_int(&f, e.output);
  pack_int(&f, e.reasoning);
  pack_double(&f, e.cost_eur);
  pack_int(&f, e.status);
  pack_double(&f, e.latency_ms);
  if (e.client.empty()) f.push_back(static_cast<char>(0xc0));  // nil
  else pack_str(&f, e.client);
  pack_str(&f, e.reason);
  size_t payload = f.size() - 8;
  auto* head = reinterpret_cast<uint8_t*>(f.data());
  put_le32(head, static_cast<uint32_t>(payload));
  put_le32(head + 4, crc32(f.data() + 8, payload));
  int n = active_;
  if (!reserve(n, ends_[n] + f.size())) return false;
  std::memcpy(maps_[n] + ends_[n], f.data(), f.size());
  ends_[n] += f.size();
  entries_[n].push_back(std::move(e));
  return true;
}

const std::vector<LedgerEntry>& LaneJournal::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (taken_ < 0) {  // else the last take was not released (its commit failed): again
    taken_ = active_;
    active_ = 1 - active_;
  }
  return entries_[taken_];
}

void LaneJournal::release() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (taken_ < 0) return;
  // Zeroed, not shrunk: the mapping and its blocks serve the next batch (journal.py truncate).
  if (maps_[taken_] != nullptr) std::memset(maps_[taken_], 0, ends_[taken_]);
  ends_[taken_] = 0;
  entries_[taken_].clear();
  taken_ = -1;
}

}  // namespace llmaas::gw
