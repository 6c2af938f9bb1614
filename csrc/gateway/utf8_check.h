// UTF-8 validation 16 bytes at a time (SSSE3), after Keiser and Lemire, "Validating UTF-8 in less
// than one instruction per byte" (2021). Each byte is classified together with the byte before it
// by three 16-entry table lookups (that byte's high and low nibble, this byte's high nibble) whose
// AND is nonzero exactly for the invalid pairs of RFC 3629 (a continuation byte where none may be,
// a missing one, overlong forms, surrogates, values past U+10FFFF); the third and fourth bytes of
// longer sequences are then checked against the lead byte two or three places back. Without SSSE3
// json_reader.h validates byte by byte instead.
#pragma once

#if defined(__SSSE3__)
#include <tmmintrin.h>

#include <cstdint>

namespace llmaas::gw {

class Utf8Check {
 public:
  // Checks the next 16 bytes; the bytes before them are those of the last block (ASCII at first).
  void add(__m128i block) {
    const bool non_ascii = _mm_movemask_epi8(block) != 0;
    if (non_ascii || previous_non_ascii_) {  // an ASCII block after an ASCII one cannot be wrong
      error_ = _mm_or_si128(error_, errors(block));
    }
    previous_ = block;
    previous_non_ascii_ = non_ascii;
  }
  // The next block follows an ASCII byte, not the last block (a string resumed after an escape).
  void restart() {
    previous_ = _mm_setzero_si128();
    previous_non_ascii_ = false;
  }
  bool ok() const { return _mm_movemask_epi8(_mm_cmpeq_epi8(error_, _mm_setzero_si128())) == 0xFFFF; }

 private:
  // Bits of the pair classes: a pair is invalid when all three lookups share a bit.
  static constexpr uint8_t kTooShort = 1 << 0;  // a lead byte followed by ASCII or another lead
  static constexpr uint8_t kTooLong = 1 << 1;   // ASCII followed by a continuation byte
  static constexpr uint8_t kOverlong3 = 1 << 2;  // E0 80..9F
  static constexpr uint8_t kTooLarge = 1 << 3;   // F4 90..BF, F5..FF
  static constexpr uint8_t kSurrogate = 1 << 4;  // ED A0..BF
  static constexpr uint8_t kOverlong2 = 1 << 5;  // C0, C1
  static constexpr uint8_t kTooLarge1000 = 1 << 6;  // F5..FF 80..8F
  static constexpr uint8_t kOverlong4 = 1 << 6;     // F0 80..8F
  static constexpr uint8_t kTwoContinuations = 1 << 7;  // a continuation after a continuation
  static constexpr uint8_t kCarry = kTooShort | kTooLong | kTwoContinuations;  // decided by the high nibble

  static __m128i lookup(const uint8_t (&table)[16], __m128i nibbles) {
    return _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)), nibbles);
  }

  __m128i errors(__m128i block) const {
    static constexpr uint8_t kFirstHigh[16] = {
        kTooLong, kTooLong, kTooLong, kTooLong, kTooLong, kTooLong, kTooLong, kTooLong,  // 0xxx: ASCII
        kTwoContinuations, kTwoContinuations, kTwoContinuations, kTwoContinuations,      // 10xx
        kTooShort | kOverlong2, kTooShort, kTooShort | kOverlong3 | kSurrogate,           // C, D, E
        kTooShort | kTooLarge | kTooLarge1000 | kOverlong4,                              // F
    };
    static constexpr uint8_t kFirstLow[16] = {
        kCarry | kOverlong3 | kOverlong2 | kOverlong4, kCarry | kOverlong2, kCarry, kCarry,
        kCarry | kTooLarge, kCarry | kTooLarge | kTooLarge1000, kCarry | kTooLarge | kTooLarge1000,
        kCarry | kTooLarge | kTooLarge1000, kCarry | kTooLarge | kTooLarge1000, kCarry | kTooLarge | kTooLarge1000,
        kCarry | kTooLarge | kTooLarge1000, kCarry | kTooLarge | kTooLarge1000, kCarry | kTooLarge | kTooLarge1000,
        kCarry | kTooLarge | kTooLarge1000 | kSurrogate, kCarry | kTooLarge | kTooLarge1000,
        kCarry | kTooLarge | kTooLarge1000,
    };
    static constexpr uint8_t kSecondHigh[16] = {
        kTooShort, kTooShort, kTooShort, kTooShort, kTooShort, kTooShort, kTooShort, kTooShort,  // ASCII
        kTooLong | kOverlong2 | kTwoContinuations | kOverlong3 | kTooLarge1000 | kOverlong4,    // 1000
        kTooLong | kOverlong2 | kTwoContinuations | kOverlong3 | kTooLarge,                     // 1001
        kTooLong | kOverlong2 | kTwoContinuations | kSurrogate | kTooLarge,                     // 1010
        kTooLong | kOverlong2 | kTwoContinuations | kSurrogate | kTooLarge,                     // 1011
        kTooShort, kTooShort, kTooShort, kTooShort,                                             // a lead
    };
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const __m128i prev1 = _mm_alignr_epi8(block, previous_, 15);
    const __m128i special = _mm_and_si128(
        _mm_and_si128(lookup(kFirstHigh, _mm_and_si128(_mm_srli_epi16(prev1, 4), low_nibble)),
                      lookup(kFirstLow, _mm_and_si128(prev1, low_nibble))),
        lookup(kSecondHigh, _mm_and_si128(_mm_srli_epi16(block, 4), low_nibble)));
    // Bytes that must be continuations: the third after an E0..EF lead, the fourth after F0..FF.
    // Saturating subtraction leaves the top bit set exactly where the lead byte was at least E0 (F0).
    const __m128i third =
        _mm_subs_epu8(_mm_alignr_epi8(block, previous_, 14), _mm_set1_epi8(static_cast<char>(0xE0 - 0x80)));
    const __m128i fourth =
        _mm_subs_epu8(_mm_alignr_epi8(block, previous_, 13), _mm_set1_epi8(static_cast<char>(0xF0 - 0x80)));
    const __m128i must_continue = _mm_and_si128(_mm_or_si128(third, fourth), _mm_set1_epi8(static_cast<char>(0x80)));
    // Such a byte shows as "two continuations" in `special`; anything else there is an error.
    return _mm_xor_si128(must_continue, special);
  }

  __m128i previous_ = _mm_setzero_si128();
  __m128i error_ = _mm_setzero_si128();
  bool previous_non_ascii_ = false;
};

}  // namespace llmaas::gw
#endif
