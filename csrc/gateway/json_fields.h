// The routing fields of a chat or completions request body, and the usage of an engine's answer,
// read the way the Python path reads them (gateway/fleet/wire.py RoutingFields and UsageFields,
// gateway/fleet/proxy.py _prompt_text, gateway/fleet/balancer.py prefix_key and _rendezvous).
//
// scan_request says "unsupported" (false) for every body it cannot read exactly as the Python path
// does: invalid JSON (UTF-8 checked everywhere), a wrong type, a duplicate top-level key, content
// parts, token-id prompts, a lone surrogate. The Python path then answers it, 400s included (*out
// then holds partial values). Linear time; no allocation besides the model name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "blake2b.h"

namespace llmaas::gw {

struct RequestFields {
  std::string model;           // unescaped UTF-8
  bool stream = false;         // true only for JSON true (null, false, absent: false)
  bool include_usage = false;  // stream_options.include_usage is true
  bool has_max_tokens = false;  // absent or null: false
  int64_t max_tokens = 0;
  bool has_max_completion_tokens = false;
  int64_t max_completion_tokens = 0;
  bool has_n = false;  // absent or null: false (the Python path then takes 1)
  int64_t n = 0;
  int64_t prompt_chars = 0;    // Python len() of the prompt text: code points
  bool has_affinity = false;   // prompt_chars >= affinity_min_chars
  uint8_t affinity_key[16] = {};  // blake2b-16 of the text's first affinity_min_chars code points, UTF-8
};

// true: supported and *out filled; false: unsupported (the Python path decides, and answers any
// error). A negative affinity_min_chars is unsupported (Python would slice from the end).
bool scan_request(std::string_view body, int64_t affinity_min_chars, RequestFields* out);

struct UsageCounts {
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, reasoning_tokens = 0;
};

// true when the Python path's _usage(body) is not None: a JSON object whose last top-level "usage"
// is an object of int fields (absent: 0; null details: 0). false otherwise, and also for a few bodies
// msgspec would still read: counts outside int64, nesting beyond 128 levels, invalid UTF-8 in strings
// it skips (no engine writes those).
bool scan_usage(std::string_view body, UsageCounts* out);

// _rendezvous(key, host) of balancer.py: blake2b-8 of key + host name; compare scores with memcmp.
void rendezvous_score(const uint8_t key[16], std::string_view host_name, uint8_t out[8]);

}  // namespace llmaas::gw
