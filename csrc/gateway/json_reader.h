// A strict RFC 8259 reader over one buffer, for the few fields the gateway's native lane reads.
//
// It never builds a tree: callers walk an object key by key, read the values they care about and
// skip (but fully validate) the rest. Everything it accepts is valid JSON: UTF-8 checked per RFC 3629
// (no overlongs, no encoded surrogates), escapes checked (a lone \uD800-\uDFFF is refused), numbers
// by the grammar, nesting at most kMaxDepth deep. That is stricter than msgspec (which does not check
// the UTF-8 of strings it skips), so whatever this accepts msgspec accepts too.
//
// Strings go to a Sink, a template parameter so the per-byte work inlines:
//   raw(const char* bytes, size_t size, int64_t chars)  a validated UTF-8 run of `chars` code points
//   code_point(uint32_t cp)                            one code point from an escape
// Strings are scanned 16 bytes at a time (SSSE3): a block is searched for '"', '\\' and control bytes
// while utf8_check.h validates it and its continuation bytes are counted, so mixed-script text costs
// no branch per character. Without SSSE3 (build with -march=x86-64-v2 to have it) non-ASCII bytes
// are validated one character at a time, between 16-byte (SSE2) runs of plain ASCII.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "utf8_check.h"

#if defined(__SSE2__) && !defined(__SSSE3__)
#include <emmintrin.h>
#endif

namespace llmaas::gw {

constexpr int kMaxDepth = 128;

// Appends the UTF-8 encoding of cp (a scalar value, never a surrogate) to out; returns its length.
inline int encode_utf8(uint32_t cp, char* out) {
  if (cp < 0x80) {
    out[0] = static_cast<char>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<char>(0xC0 | (cp >> 6));
    out[1] = static_cast<char>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<char>(0xE0 | (cp >> 12));
    out[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<char>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<char>(0xF0 | (cp >> 18));
  out[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<char>(0x80 | (cp & 0x3F));
  return 4;
}

// What a UTF-8 lead byte allows (RFC 3629, section 4): the sequence length (0: not a lead byte) and
// the range of the second byte, which is where overlongs, surrogates and values past U+10FFFF are
// ruled out. For the byte-by-byte scan (no SSSE3); tables rather than branches, which mixed 2-, 3-
// and 4-byte characters would mispredict.
struct Utf8Lead {
  uint8_t length, second_lo, second_hi;
};

constexpr Utf8Lead utf8_lead_of(int lead) {
  if (lead >= 0xC2 && lead <= 0xDF) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead >= 0xE1 && lead <= 0xEF) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead >= 0xF1 && lead <= 0xF3) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

struct Utf8LeadTable {
  Utf8Lead entries[256];
  constexpr Utf8LeadTable() : entries() {
    for (int i = 0; i < 256; ++i) entries[i] = utf8_lead_of(i);
  }
};
inline constexpr Utf8LeadTable kUtf8Leads{};

// The length of the well-formed UTF-8 sequence at p (lead byte >= 0x80), or 0.
inline int utf8_sequence_length(const uint8_t* p, const uint8_t* end) {
  const Utf8Lead lead = kUtf8Leads.entries[p[0]];
  if (lead.length == 0 || end - p < lead.length) return 0;
  bool ok = static_cast<uint8_t>(p[1] - lead.second_lo) <= lead.second_hi - lead.second_lo;
  // Bytes 3 and 4 when the sequence has them: continuation bytes, 10xxxxxx.
  ok &= lead.length < 3 || (p[2] & 0xC0) == 0x80;
  ok &= lead.length < 4 || (p[3] & 0xC0) == 0x80;
  return ok ? lead.length : 0;
}

// The value of a hex digit, or -1.
struct HexTable {
  int8_t values[256];
  constexpr HexTable() : values() {
    for (int i = 0; i < 256; ++i) {
      values[i] = i >= '0' && i <= '9'   ? i - '0'
                  : i >= 'a' && i <= 'f' ? i - 'a' + 10
                  : i >= 'A' && i <= 'F' ? i - 'A' + 10
                                         : -1;
    }
  }
};
inline constexpr HexTable kHex{};

// What a one-letter escape stands for (\" \\ \/ \b \f \n \r \t), or 0 for a letter that is none.
struct EscapeTable {
  uint8_t values[256];
  constexpr EscapeTable() : values() {
    values['"'] = '"';
    values['\\'] = '\\';
    values['/'] = '/';
    values['b'] = '\b';
    values['f'] = '\f';
    values['n'] = '\n';
    values['r'] = '\r';
    values['t'] = '\t';
  }
};
inline constexpr EscapeTable kEscapes{};

// A sink that keeps nothing: the string is only validated.
struct SkipSink {
  void raw(const char*, size_t, int64_t) {}
  void code_point(uint32_t) {}
};

class JsonReader {
 public:
  explicit JsonReader(std::string_view text)
      : pos_(reinterpret_cast<const uint8_t*>(text.data())), end_(pos_ + text.size()) {}

  // The next non-whitespace byte, or 0 at the end (0 is never valid there, so callers just fail).
  uint8_t peek() {
    while (pos_ < end_ && (*pos_ == ' ' || *pos_ == '\n' || *pos_ == '\r' || *pos_ == '\t')) ++pos_;
    return pos_ < end_ ? *pos_ : 0;
  }
  bool consume(uint8_t c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  bool at_end() { return peek() == 0 && pos_ == end_; }
  const char* position() const { return reinterpret_cast<const char*>(pos_); }

  // Reads the literal `true`, `false` or `null` at the cursor into *out (0, 1, 2); false if none.
  bool read_literal(int* out);
  // Reads an integer in int64's range; false for a fraction, an exponent or anything out of range.
  bool read_int64(int64_t* out);
  // Validates one value of any kind; `depth` counts the containers already open around it.
  bool skip_value(int depth);

  // Reads the string at the cursor (after whitespace) into sink.
  template <class Sink>
  bool read_string(Sink& sink) {
    if (peek() != '"') return false;
    const uint8_t* p = pos_ + 1;
    const uint8_t* run = p;  // the raw bytes not yet given to sink
    StringScan scan;
    for (;;) {
      p = next_stop(p, &scan);
      if (p == nullptr || (*p != '"' && *p != '\\')) return false;  // invalid UTF-8, a control byte, the end
      const size_t size = static_cast<size_t>(p - run);
      if (size > 0) {
        sink.raw(reinterpret_cast<const char*>(run), size, static_cast<int64_t>(size) - scan.continuation_bytes);
      }
      if (*p == '"') {
        pos_ = p + 1;
        return true;
      }
      do {  // escapes often come in a row (text in another script, escaped by an ASCII-only encoder)
        uint32_t cp = 0;
        if (!read_escape(&p, &cp)) return false;
        sink.code_point(cp);
      } while (p < end_ && *p == '\\');
      run = p;
      scan.restart();
    }
  }

 private:
  // What a string's scan carries from one block to the next.
  struct StringScan {
    int64_t continuation_bytes = 0;  // of the run so far: its code points are its bytes minus these
#if defined(__SSSE3__)
    Utf8Check utf8;
    void restart() {
      continuation_bytes = 0;
      utf8.restart();
    }
#else
    void restart() { continuation_bytes = 0; }
#endif
  };

#if defined(__SSSE3__)
  // The first '"', '\\' or control byte at or after p, counting the continuation bytes before it;
  // nullptr at the end of the text or after invalid UTF-8.
  const uint8_t* next_stop(const uint8_t* p, StringScan* scan) const {
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control_max = _mm_set1_epi8(0x1F);
    const __m128i continuation_below = _mm_set1_epi8(static_cast<char>(0xC0));  // signed: 0x80..0xBF are below
    for (;;) {
      const __m128i block = load_block(p);
      // Bytes past the stop are validated too: an error there is one in the text all the same,
      // since outside strings only ASCII is valid and every string is validated.
      scan->utf8.add(block);
      const __m128i control = _mm_cmpeq_epi8(_mm_min_epu8(block, control_max), block);
      const unsigned stops = static_cast<unsigned>(_mm_movemask_epi8(
          _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(block, quote), _mm_cmpeq_epi8(block, backslash)), control)));
      const unsigned continuations =
          static_cast<unsigned>(_mm_movemask_epi8(_mm_cmplt_epi8(block, continuation_below)));
      if (stops == 0) {
        scan->continuation_bytes += __builtin_popcount(continuations);
        p += 16;
        continue;
      }
      const int stop = __builtin_ctz(stops);
      scan->continuation_bytes += __builtin_popcount(continuations & ((1u << stop) - 1));
      p += stop;
      return p < end_ && scan->utf8.ok() ? p : nullptr;
    }
  }

  // The 16 bytes at p; past the end of the text, zeros (control bytes, so a string stops there).
  __m128i load_block(const uint8_t* p) const {
    if (end_ - p >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    alignas(16) uint8_t padded[16] = {};
    std::memcpy(padded, p, static_cast<size_t>(end_ - p));
    return _mm_load_si128(reinterpret_cast<const __m128i*>(padded));
  }
#else
  // As above, a character at a time past the runs of plain ASCII.
  const uint8_t* next_stop(const uint8_t* p, StringScan* scan) const {
    for (;;) {
      p = skip_plain_ascii(p);
      if (p == end_) return nullptr;
      if (*p < 0x80) return p;
      const int length = utf8_sequence_length(p, end_);
      if (length == 0) return nullptr;
      scan->continuation_bytes += length - 1;
      p += length;
    }
  }

  // The first byte at or after p that is '"', '\\', a control byte or non-ASCII; end_ if none.
  const uint8_t* skip_plain_ascii(const uint8_t* p) const {
#if defined(__SSE2__)  // every x86-64 has it: the runs between non-ASCII characters go 16 bytes at a time
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end_ - p >= 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      // Signed compare: bytes >= 0x80 are negative, so `< 0x20` catches them with the control bytes.
      const __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                           _mm_cmplt_epi8(v, space));
      const int mask = _mm_movemask_epi8(special);
      if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
      p += 16;
    }
#endif
    while (p < end_ && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') ++p;
    return p;
  }
#endif

  // The four hex digits at p as a UTF-16 code unit; false if fewer than four or not all hex.
  bool read_hex4(const uint8_t* p, uint32_t* out) const {
    if (end_ - p < 4) return false;
    const int8_t a = kHex.values[p[0]], b = kHex.values[p[1]], c = kHex.values[p[2]], d = kHex.values[p[3]];
    if ((a | b | c | d) < 0) return false;
    *out = static_cast<uint32_t>(a) << 12 | static_cast<uint32_t>(b) << 8 | static_cast<uint32_t>(c) << 4 |
           static_cast<uint32_t>(d);
    return true;
  }

  // *at is a backslash: decodes the escape, advancing *at past it. Small enough to inline at -O2,
  // which matters for text escaped character by character.
  bool read_escape(const uint8_t** at, uint32_t* out) const {
    const uint8_t* p = *at + 1;
    if (p == end_) return false;
    if (*p != 'u') {
      *out = kEscapes.values[*p];
      *at = p + 1;
      return *out != 0;
    }
    uint32_t unit;
    if (!read_hex4(p + 1, &unit)) return false;
    p += 5;
    if (unit >= 0xD800 && unit <= 0xDFFF) {  // a surrogate: valid only as a high one followed by a low one
      uint32_t low;
      if (unit >= 0xDC00 || end_ - p < 6 || p[0] != '\\' || p[1] != 'u' || !read_hex4(p + 2, &low)) return false;
      if (low < 0xDC00 || low > 0xDFFF) return false;
      unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
      p += 6;
    }
    *out = unit;
    *at = p;
    return true;
  }

  bool skip_number();
  bool skip_container(int depth);

  const uint8_t* pos_;
  const uint8_t* end_;
};

}  // namespace llmaas::gw
