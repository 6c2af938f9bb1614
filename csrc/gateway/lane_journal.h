// The native lane's ledger journal: the usage of each request the lane served under the tenant
// stages, made durable against a kill -9 before the answer's first byte is written, as the Python
// path's journal (gateway/tenancy/journal.py) does for its own: one copy of a frame into a
// MAP_SHARED mapping of the file, whose bytes are then the kernel's.
//
// Frames are journal.py's: u32 length | u32 crc32(payload) | payload, payload a msgpack array
// (gateway/tenancy/lane_ledger.py LaneEntry, in field order). Every tick the lane's ledger
// (lane_ledger.h) chains these entries into the audit trail and the ledger: `take` switches the
// lane to the other of the two files and returns the entries of the one it was writing (kept in
// memory beside their frames: nothing is decoded back); once they are committed to the store,
// `release` empties that file (until then, `take` returns the same entries again). At start,
// before the lane opens them, Python replays whatever both files still hold and empties them
// (gateway/tenancy/lane_ledger.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace llmaas::gw {

// Packed in this order: a usage row's twelve columns, then the audit record's client and reason.
struct LedgerEntry {
  std::string request_id;  // the x-request-id header's bytes (append makes them Python's text)
  double time = 0;  // seconds since the epoch, at the end
  std::string tenant, token_id, model;
  int64_t input = 0, cached_input = 0, output = 0, reasoning = 0;
  double cost_eur = 0;
  int status = 0;
  double latency_ms = 0;
  std::string client;  // empty: unknown (nil)
  std::string reason;  // ok, error, aborted
};

class LaneJournal {
 public:
  // Opens (creates) path-0 and path-1, taking an exclusive flock on the first; throws
  // std::runtime_error when another process holds it or a file cannot be opened.
  explicit LaneJournal(const std::string& path);
  ~LaneJournal();
  LaneJournal(const LaneJournal&) = delete;
  LaneJournal& operator=(const LaneJournal&) = delete;

  // False when the disk refused room for it (the caller then must not answer as if it were kept).
  // The request id is kept as Python reads a header (latin-1: each byte one character), in UTF-8.
  bool append(LedgerEntry entry);
  // The entries of the file taken; valid until `release`. Only one thread takes and releases.
  const std::vector<LedgerEntry>& take();
  void release();

 private:
  bool reserve(int n, size_t needed);

  std::mutex mutex_;
  int fds_[2] = {-1, -1};
  uint8_t* maps_[2] = {nullptr, nullptr};
  size_t sizes_[2] = {0, 0};  // mapped bytes
  size_t ends_[2] = {0, 0};   // where the next frame goes
  std::vector<LedgerEntry> entries_[2];  // the frames' entries, in order
  int active_ = 0;
  int taken_ = -1;
  std::string frame_;  // reused between appends
};

uint32_t crc32(const void* data, size_t size);

// Header bytes as text the way the Python server decodes them (latin-1), written in UTF-8.
void latin1_to_utf8(std::string* bytes);

}  // namespace llmaas::gw
