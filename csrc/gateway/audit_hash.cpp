// See audit_hash.h.
#include "audit_hash.h"

#include <charconv>
#include <cmath>

#include "lane_io.h"
#include "sha256.h"

namespace llmaas::gw {

void append_json_double(std::string* out, double v) {
  char buffer[64];
  double magnitude = std::fabs(v);
  if (v == 0 || (magnitude >= 1e-5 && magnitude < 1e16)) {
    auto r = std::to_chars(buffer, buffer + sizeof buffer, v, std::chars_format::fixed);
    std::string_view digits(buffer, static_cast<size_t>(r.ptr - buffer));
    out->append(digits);
    if (digits.find('.') == std::string_view::npos) out->append(".0");
    return;
  }
  // Scientific, "1.5e+16" written "1.5e16", "1e-07" written "1e-7".
  auto r = std::to_chars(buffer, buffer + sizeof buffer, v, std::chars_format::scientific);
  std::string_view text(buffer, static_cast<size_t>(r.ptr - buffer));
  size_t e = text.find('e');
  out->append(text.substr(0, e + 1));
  size_t at = e + 1;
  if (text[at] == '+') ++at;
  else if (text[at] == '-') out->push_back(text[at++]);
  while (at + 1 < text.size() && text[at] == '0') ++at;
  out->append(text.substr(at));
}

std::string audit_record_hash(const AuditFields& r, std::string* scratch) {
  std::string& j = *scratch;
  j.assign("[");
  j.append(std::to_string(r.seq));
  j.push_back(',');
  append_json_double(&j, r.time);
  j.push_back(',');
  lane::append_json_string(&j, r.tenant);
  j.push_back(',');
  lane::append_json_string(&j, r.token_id);
  j.push_back(',');
  if (r.client.empty()) j.append("null");
  else lane::append_json_string(&j, r.client);
  j.push_back(',');
  lane::append_json_string(&j, r.model);
  j.push_back(',');
  j.append(std::to_string(r.status));
  j.push_back(',');
  lane::append_json_string(&j, r.reason);
  j.push_back(',');
  j.append(std::to_string(r.input_tokens));
  j.push_back(',');
  j.append(std::to_string(r.output_tokens));
  j.append(",null,");
  lane::append_json_string(&j, r.request_id);
  j.append(",null,");
  lane::append_json_string(&j, r.prev_hash);
  j.append(",[\"chain\",");
  lane::append_json_string(&j, r.chain);
  j.append("]]");
  Sha256 sha;
  sha.update(j.data(), j.size());
  uint8_t digest[32];
  sha.final(digest);
  static const char kHex[] = "0123456789abcdef";
  std::string hex(64, '0');
  for (int i = 0; i < 32; ++i) {
    hex[2 * i] = kHex[digest[i] >> 4];
    hex[2 * i + 1] = kHex[digest[i] & 15];
  }
  return hex;
}

}  // namespace llmaas::gw
