// See http_head.h. RFC 9112 syntax, restricted to what the native lane serves.
#include "http_head.h"

#include <algorithm>

namespace llmaas::gw {
namespace {

// ASCII only, inline: the locale-aware <cctype> calls were a tenth of the lane's own time.
inline unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c | 0x20 : c; }

bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (lower(c) >= 'a' && lower(c) <= 'z')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-': case '.':
    case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(static_cast<unsigned char>(a[i])) != lower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Decimal digits only, at most 18 of them (no overflow); false otherwise.
bool parse_length(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

// Whether a Connection header's comma-separated options include `token`.
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

struct Header {
  std::string_view name, value;
};

// Splits "name: value" (one line, CRLF removed). False on bad syntax (obs-fold, empty name, ...).
bool split_header(std::string_view line, Header* out) {
  size_t colon = line.find(':');
  if (colon == 0 || colon == std::string_view::npos) return false;
  for (size_t i = 0; i < colon; ++i)
    if (!is_tchar(static_cast<unsigned char>(line[i]))) return false;
  std::string_view value = trim(line.substr(colon + 1));
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    if ((u < 0x20 && u != '\t') || u == 0x7f) return false;
  }
  out->name = line.substr(0, colon);
  out->value = value;
  return true;
}

// Finds the blank line ending a head; npos while it has not arrived.
size_t head_end(std::string_view buf) {
  size_t end = buf.find("\r\n\r\n");
  return end == std::string_view::npos ? end : end + 4;
}

// The head (through its blank line) and its first line, once the head has arrived whole; a head
// longer than max_head_bytes is kUnsupported.
HeadStatus split_head(std::string_view buf, size_t max_head_bytes, std::string_view* head,
                      std::string_view* first_line) {
  std::string_view window = buf.substr(0, std::min(buf.size(), max_head_bytes));
  size_t end = head_end(window);
  if (end == std::string_view::npos) {
    // A bare LF (no CR before it) never ends a line here: the Python server answers it at once,
    // instead of a 408 once the header timeout has passed.
    for (size_t lf = window.find('\n'); lf != std::string_view::npos; lf = window.find('\n', lf + 1))
      if (lf == 0 || window[lf - 1] != '\r') return HeadStatus::kUnsupported;
    return buf.size() >= max_head_bytes ? HeadStatus::kUnsupported : HeadStatus::kIncomplete;
  }
  *head = buf.substr(0, end);
  *first_line = head->substr(0, head->find("\r\n"));
  return HeadStatus::kComplete;
}

// Calls on_header for each header line of head (after its first line); false on bad syntax.
template <typename OnHeader>
bool for_each_header(std::string_view head, size_t first_line_end, OnHeader on_header) {
  size_t pos = first_line_end + 2;
  while (pos < head.size() - 2) {
    size_t eol = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, eol - pos);
    Header h;
    if (!split_header(line, &h) || !on_header(h)) return false;
    pos = eol + 2;
  }
  return true;
}

}  // namespace

HeadStatus parse_request_head(std::string_view buf, size_t max_head_bytes, RequestHead* out) {
  std::string_view head, line;
  HeadStatus status = split_head(buf, max_head_bytes, &head, &line);
  if (status != HeadStatus::kComplete) return status;
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.substr(sp2 + 1) != "HTTP/1.1") return HeadStatus::kUnsupported;
  *out = RequestHead{};
  out->method = line.substr(0, sp1);
  out->target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  out->head_bytes = head.size();
  bool has_length = false;
  bool ok = for_each_header(head, line.size(), [&](const Header& h) {
    if (iequals(h.name, "content-length")) {
      if (has_length) return false;  // repeated: ambiguous framing, left to the strict parser
      has_length = true;
      return parse_length(h.value, &out->content_length);
    }
    // A browser's request (Origin) gets its CORS headers from the Python server (gateway/http/cors.py).
    if (iequals(h.name, "transfer-encoding") || iequals(h.name, "expect") || iequals(h.name, "upgrade") ||
        iequals(h.name, "origin"))
      return false;
    if (iequals(h.name, "connection")) {
      if (has_token(h.value, "upgrade")) return false;
      if (has_token(h.value, "close")) out->keep_alive = false;
    } else if (iequals(h.name, "x-request-id")) {
      if (!out->request_id.empty()) return false;  // repeated: Python joins them, we do not
      out->request_id = h.value;
    } else if (iequals(h.name, "authorization")) {
      if (out->has_authorization) return false;  // repeated: which one Python reads is its business
      out->has_authorization = true;
      out->authorization = h.value;
    }
    return true;
  });
  return ok ? HeadStatus::kComplete : HeadStatus::kUnsupported;
}

HeadStatus parse_response_head(std::string_view buf, size_t max_head_bytes, ResponseHead* out) {
  std::string_view head, line;
  HeadStatus split = split_head(buf, max_head_bytes, &head, &line);
  if (split != HeadStatus::kComplete) return split;
  // "HTTP/1.x NNN reason"
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || line[8] != ' ' || (line.size() > 12 && line[12] != ' '))
    return HeadStatus::kUnsupported;
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return HeadStatus::kUnsupported;
    status = status * 10 + (line[i] - '0');
  }
  if (status < 200) return HeadStatus::kUnsupported;  // interim answers are never asked for
  *out = ResponseHead{};
  out->status = status;
  out->head_bytes = head.size();
  out->keep_alive = line[7] == '1';
  out->content_type = "application/json";
  bool has_length = false, chunked = false;
  bool ok = for_each_header(head, line.size(), [&](const Header& h) {
    if (iequals(h.name, "content-length")) {
      if (has_length) return false;
      has_length = true;
      return parse_length(h.value, &out->content_length);
    }
    if (iequals(h.name, "transfer-encoding")) {
      if (!iequals(h.value, "chunked")) return false;
      chunked = true;
    } else if (iequals(h.name, "connection")) {
      if (has_token(h.value, "close")) out->keep_alive = false;
      if (has_token(h.value, "keep-alive")) out->keep_alive = true;
    } else if (iequals(h.name, "content-type")) {
      out->content_type.assign(h.value.data(), h.value.size());
    }
    return true;
  });
  if (!ok || (chunked && has_length)) return HeadStatus::kUnsupported;
  if (status == 204 || status == 304) out->body_kind = BodyKind::kNone;
  else if (chunked) out->body_kind = BodyKind::kChunked;
  else if (has_length) out->body_kind = BodyKind::kLength;
  else out->body_kind = BodyKind::kUntilClose;
  if (out->body_kind == BodyKind::kUntilClose) out->keep_alive = false;
  return HeadStatus::kComplete;
}

ChunkedDecoder::State ChunkedDecoder::feed(std::string_view raw, std::string* body) {
  for (;;) {
    switch (part_) {
      case Part::kSize: {
        size_t eol = raw.find("\r\n", pos_);
        if (eol == std::string_view::npos) return raw.size() - pos_ > 1024 ? State::kError : State::kMore;
        std::string_view line = raw.substr(pos_, eol - pos_);
        size_t ext = line.find(';');  // chunk extensions are ignored
        line = trim(line.substr(0, ext));
        if (line.empty() || line.size() > 15) return State::kError;
        uint64_t size = 0;
        for (char c : line) {
          int digit = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                      : (c >= 'a' && c <= 'f')                    ? c - 'a' + 10
                      : (c >= 'A' && c <= 'F')                    ? c - 'A' + 10
                                                                  : -1;
          if (digit < 0) return State::kError;
          size = size * 16 + static_cast<uint64_t>(digit);
        }
        pos_ = eol + 2;
        left_ = size;
        part_ = size == 0 ? Part::kTrailer : Part::kData;
        break;
      }
      case Part::kData: {
        size_t take = std::min<uint64_t>(left_, raw.size() - pos_);
        body->append(raw.data() + pos_, take);
        pos_ += take;
        left_ -= take;
        if (left_ > 0) return State::kMore;
        part_ = Part::kDataEnd;
        break;
      }
      case Part::kDataEnd:
        if (raw.size() - pos_ < 2) return State::kMore;
        if (raw.substr(pos_, 2) != "\r\n") return State::kError;
        pos_ += 2;
        part_ = Part::kSize;
        break;
      case Part::kTrailer: {
        size_t eol = raw.find("\r\n", pos_);
        if (eol == std::string_view::npos) return raw.size() - pos_ > 8192 ? State::kError : State::kMore;
        bool blank = eol == pos_;
        pos_ = eol + 2;
        if (blank) return State::kDone;
        break;
      }
    }
  }
}

}  // namespace llmaas::gw
