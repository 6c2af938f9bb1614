// Fold table: prompt security's fold (security/normalize.py) one code point at a time, in C++.
//
// Folding maps each character of a prompt to zero or more characters (NFKD, marks and invisible
// characters dropped, casefold, look-alikes to their Latin twins, tag characters to the ASCII they
// hide). It is a function of the character alone, so a text folds by table look-up: one pass that
// also yields what the check needs beside the folded text, namely whether the text was plain (no
// character that folding drops or that is a look-alike) and the offset map back to the original
// (normalize.py's _Offsets: where a character folds to other than exactly one).
//
// The table is taught, not built in: Python computes what each code point folds to with its
// reference fold (normalize.py) once per process, for the whole BMP and for the ~2,600 astral code
// points that do not fold to themselves; any other astral code point folds to itself and leaves a
// text not plain (its decomposition is itself, an astral character). Layout: one 8-byte entry
// per BMP code point, a hash map for the astral ones taught; a fold of exactly one character is
// stored in the entry, longer or empty ones in a shared pool.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmaas::security {

struct Folding {
  std::u32string text;
  bool plain = true;
  std::vector<uint32_t> at;    // original offset of each character that does not fold to one
  std::vector<uint32_t> ends;  // length of the folded text just after it
};

class FoldTable {
 public:
  FoldTable() : bmp_(0x10000) {}

  // `folded`: what `cp` folds to; `plain`: whether it leaves a text plain.
  void learn(uint32_t cp, const std::u32string& folded, bool plain);

  // Folds text[0, n). Throws std::logic_error on a BMP code point not taught.
  template <typename Char>
  Folding fold(const Char* text, size_t n) const;

 private:
  struct Entry {
    uint32_t value = 0;  // the one character it folds to, or its offset in pool_
    uint16_t length = 0;
    bool known = false;
    bool plain = false;
  };

  const Entry* find(uint32_t cp) const;  // nullptr: not taught

  std::vector<Entry> bmp_;
  std::unordered_map<uint32_t, Entry> astral_;
  std::u32string pool_;
};

}  // namespace llmaas::security
