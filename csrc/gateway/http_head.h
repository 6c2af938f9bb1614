// HTTP/1.1 message heads for the gateway's native lane: a client's request head, an engine's
// response head, and a chunked body decoder.
//
// The native lane serves only the plain case (HTTP/1.1, Content-Length bodies, no Expect, no
// Upgrade, no Transfer-Encoding from clients). Anything else is kUnsupported: the connection goes
// to the Python server (gateway/http/protocol.py), which answers it, errors included. So these
// parsers are strict and small; they never have to produce an error response themselves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llmaas::gw {

enum class HeadStatus { kIncomplete, kComplete, kUnsupported };

struct RequestHead {
  std::string_view method;
  std::string_view target;
  std::string_view request_id;  // the x-request-id header's value, empty when absent
  std::string_view authorization;  // the Authorization header's value
  bool has_authorization = false;
  size_t head_bytes = 0;        // request line + headers + the blank line
  int64_t content_length = 0;
  bool keep_alive = true;
};

// Views in *out point into buf. A head longer than max_head_bytes is kUnsupported (the Python
// server answers 431), as is any syntax it does not accept.
HeadStatus parse_request_head(std::string_view buf, size_t max_head_bytes, RequestHead* out);

enum class BodyKind { kLength, kChunked, kUntilClose, kNone };

struct ResponseHead {
  int status = 0;
  size_t head_bytes = 0;
  BodyKind body_kind = BodyKind::kUntilClose;
  int64_t content_length = 0;
  bool keep_alive = true;
  std::string content_type;  // "application/json" when absent, as the Python path assumes
};

HeadStatus parse_response_head(std::string_view buf, size_t max_head_bytes, ResponseHead* out);

// Decodes a chunked body incrementally. feed() is given the whole body region received so far
// (from the end of the head) each time; it resumes where it stopped.
class ChunkedDecoder {
 public:
  enum class State { kMore, kDone, kError };
  State feed(std::string_view raw, std::string* body);
  size_t consumed() const { return pos_; }  // raw bytes of the body, trailers included, when kDone

 private:
  enum class Part { kSize, kData, kDataEnd, kTrailer };
  Part part_ = Part::kSize;
  size_t pos_ = 0;
  uint64_t left_ = 0;
};

}  // namespace llmaas::gw
