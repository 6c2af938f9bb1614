// The hash of one of the lane's audit records, byte for byte as gateway/tenancy/audit.py's
// record_hash computes it for a record with no verdict, rules version or prompt:
//   sha256(msgspec JSON of [seq, time, tenant, token_id, client, model, status, reason,
//                           input_tokens, output_tokens, null, request_id, null, prev_hash,
//                           ["chain", chain]]), as 64 lowercase hex digits.
// So the JSON is msgspec's canonical form: no spaces; strings escape `"`, `\` and the C0 controls
// (\b \t \n \f \r, else \u00xx), all else raw UTF-8; floats in their shortest round-trip digits,
// fixed for 1e-5 <= |v| < 1e16 (".0" when whole), else d.ddde[-]x with no '+' or leading zeros.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace llmaas::gw {

struct AuditFields {
  int64_t seq = 0;
  double time = 0;
  std::string_view tenant, token_id;
  std::string_view client;  // empty: null
  std::string_view model;
  int64_t status = 0;
  std::string_view reason;
  int64_t input_tokens = 0, output_tokens = 0;
  std::string_view request_id, prev_hash, chain;
};

// The float as msgspec writes it (strings: lane_io.h append_json_string, which escapes as msgspec does).
void append_json_double(std::string* out, double v);

// The record's hash as hex; `scratch` is reused between calls (the JSON is built there).
std::string audit_record_hash(const AuditFields& r, std::string* scratch);

}  // namespace llmaas::gw
