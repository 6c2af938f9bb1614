// The non-template parts of JsonReader (json_reader.h): literals, numbers and skipping.
#include "json_reader.h"

#include <cstring>

namespace llmaas::gw {
namespace {

inline bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

}  // namespace

bool JsonReader::read_literal(int* out) {
  static constexpr std::string_view kLiterals[3] = {"false", "true", "null"};
  peek();
  for (int i = 0; i < 3; ++i) {
    const std::string_view word = kLiterals[i];
    if (static_cast<size_t>(end_ - pos_) >= word.size() && std::memcmp(pos_, word.data(), word.size()) == 0) {
      pos_ += word.size();
      *out = i;
      return true;
    }
  }
  return false;
}

bool JsonReader::read_int64(int64_t* out) {
  peek();
  const uint8_t* p = pos_;
  const bool negative = p < end_ && *p == '-';
  if (negative) ++p;
  if (p == end_ || !is_digit(*p)) return false;
  if (*p == '0' && p + 1 < end_ && is_digit(p[1])) return false;  // no leading zeros
  // Accumulates the magnitude; int64's most negative value has a magnitude one above its maximum.
  const uint64_t limit = negative ? (uint64_t{1} << 63) : (uint64_t{1} << 63) - 1;
  uint64_t magnitude = 0;
  for (; p < end_ && is_digit(*p); ++p) {
    const uint64_t digit = *p - '0';
    if (magnitude > (limit - digit) / 10) return false;
    magnitude = magnitude * 10 + digit;
  }
  if (p < end_ && (*p == '.' || *p == 'e' || *p == 'E')) return false;  // a float: msgspec refuses it for int
  *out = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
  pos_ = p;
  return true;
}

bool JsonReader::skip_number() {
  const uint8_t* p = pos_;
  if (p < end_ && *p == '-') ++p;
  if (p == end_ || !is_digit(*p)) return false;
  if (*p == '0') {
    ++p;
  } else {
    while (p < end_ && is_digit(*p)) ++p;
  }
  if (p < end_ && *p == '.') {
    ++p;
    if (p == end_ || !is_digit(*p)) return false;
    while (p < end_ && is_digit(*p)) ++p;
  }
  if (p < end_ && (*p == 'e' || *p == 'E')) {
    ++p;
    if (p < end_ && (*p == '+' || *p == '-')) ++p;
    if (p == end_ || !is_digit(*p)) return false;
    while (p < end_ && is_digit(*p)) ++p;
  }
  pos_ = p;
  return true;
}

bool JsonReader::skip_value(int depth) {
  SkipSink skip;
  int literal;
  switch (peek()) {
    case '"': return read_string(skip);
    case '{':
    case '[': return skip_container(depth + 1);
    case 't':
    case 'f':
    case 'n': return read_literal(&literal);
    default: return skip_number();
  }
}

bool JsonReader::skip_container(int depth) {
  if (depth > kMaxDepth) return false;
  const bool object = *pos_ == '{';
  const uint8_t close = object ? '}' : ']';
  ++pos_;
  if (consume(close)) return true;
  SkipSink skip;
  do {
    if (object && (!read_string(skip) || !consume(':'))) return false;
    if (!skip_value(depth)) return false;
  } while (consume(','));
  return consume(close);
}

}  // namespace llmaas::gw
