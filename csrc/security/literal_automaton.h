// Literal automaton: every occurrence of every literal of a fixed set in one pass over a text.
//
// The prompt-security pattern layer (security/patterns.py) runs ~700 literal-led regexes, each
// only where its literal lead occurs, and gates rules on ~300 trigger phrases being present.
// Python's `re` has no multi-literal search: finding them cost one pass over the text per
// literal (a Chinese or Japanese lead's `finditer`, a `str.find` per English word). This is an
// Aho-Corasick automaton over code points, compiled to a full transition table, so a scan reads
// each character once whatever the number of literals: linear in the text, floods included.
//
// Layout. Code points are first mapped to symbols: 0 for every character no literal contains,
// 1..S-1 for the others (a 64K table for the BMP, a sorted list for astral characters, which no
// shipped literal has). The table `next_` is states x symbols, row-major, uint16 states (the ~800
// shipped literals make ~2,300 states and ~450 symbols: a 2 MB table of which a scan touches the
// few rows near the root). `out_` lists, for each state, the literals that end there (its own and
// those of its suffix links), flattened with `out_start_` offsets.
//
// Occurrences are reported as start offsets in code points, ascending per literal, overlapping
// ones included. A literal marked `whole_word` also gets the offsets where it is a whole a-z word
// (no ASCII letter a-z right before or after), the tokens of security/tokens.py.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmaas::security {

// Occurrences of the literals in one text. For literal i: `count[i]` occurrences, the first
// min(count[i], cap + 1) of them at starts[i * (cap + 1)...]; likewise for whole-word ones.
// `seen` lists the literals that occur, in order of their first occurrence's end. The offset
// buffers are not initialised: only what the counts cover is written (~100 KB a scan otherwise).
struct Occurrences {
  uint32_t cap = 0;
  std::vector<uint32_t> count;
  std::vector<uint32_t> word_count;
  std::unique_ptr<uint32_t[]> starts;
  std::unique_ptr<uint32_t[]> word_starts;
  std::vector<uint32_t> seen;

  const uint32_t* starts_of(uint32_t id) const { return starts.get() + static_cast<size_t>(id) * (cap + 1); }
  const uint32_t* word_starts_of(uint32_t id) const { return word_starts.get() + static_cast<size_t>(id) * (cap + 1); }
};

class LiteralAutomaton {
 public:
  // `literals`: non-empty, distinct strings of code points; `whole_word[i]`: also report
  // literal i's whole-word occurrences. Throws std::invalid_argument on an empty or repeated
  // literal, std::length_error past 65,535 states or distinct characters (or a 2^26-entry table).
  LiteralAutomaton(const std::vector<std::u32string>& literals, const std::vector<bool>& whole_word);

  // Scans text[0, n) (1, 2 or 4 bytes a code point: CPython's string kinds), keeping at most
  // cap + 1 offsets per literal. Linear in n: one table look-up a character, plus one step per
  // literal ending there (a chain of literals each a suffix of the next: a handful at most).
  template <typename Char>
  Occurrences find(const Char* text, size_t n, uint32_t cap) const;

  size_t size() const { return length_.size(); }

 private:
  uint32_t symbol(uint32_t cp) const;

  uint32_t symbols_ = 1;               // S: symbol 0 is "in no literal"
  std::vector<uint16_t> bmp_symbol_;   // code point < 0x10000 -> symbol
  std::vector<std::pair<uint32_t, uint32_t>> astral_symbol_;  // sorted (code point, symbol)
  std::vector<uint16_t> next_;         // states x symbols
  std::vector<uint32_t> out_start_;    // states + 1 offsets into out_
  std::vector<uint32_t> out_;          // literal ids
  std::vector<uint32_t> length_;       // per literal, in code points
  std::vector<uint8_t> whole_word_;
};

}  // namespace llmaas::security
