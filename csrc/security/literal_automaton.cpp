// Aho-Corasick construction (trie, breadth-first suffix links, full transition table) and the
// one-pass scan. See literal_automaton.h for the design.
#include "literal_automaton.h"

#include <algorithm>
#include <deque>
#include <map>
#include <stdexcept>

namespace llmaas::security {

namespace {

constexpr uint32_t kMaxStates = 65535;
constexpr size_t kMaxTable = size_t{1} << 26;  // entries (128 MB): far past any rule set

bool is_az(uint32_t cp) { return cp >= 'a' && cp <= 'z'; }

}  // namespace

LiteralAutomaton::LiteralAutomaton(const std::vector<std::u32string>& literals,
                                   const std::vector<bool>& whole_word)
    : bmp_symbol_(0x10000, 0), whole_word_(whole_word.begin(), whole_word.end()) {
  if (whole_word.size() != literals.size()) throw std::invalid_argument("one whole_word flag per literal");
  std::map<uint32_t, uint32_t> astral;
  for (const auto& literal : literals) {
    if (literal.empty()) throw std::invalid_argument("empty literal");
    for (char32_t c : literal) {
      uint32_t cp = static_cast<uint32_t>(c);
      if (cp < 0x10000) {
        if (bmp_symbol_[cp] == 0) bmp_symbol_[cp] = static_cast<uint16_t>(symbols_++);
      } else if (astral.emplace(cp, symbols_).second) {
        ++symbols_;
      }
      if (symbols_ > kMaxStates) throw std::length_error("too many distinct characters");
    }
    length_.push_back(static_cast<uint32_t>(literal.size()));
  }
  astral_symbol_.assign(astral.begin(), astral.end());

  // The trie, children by symbol; own[s]: the literal ending at state s, or -1.
  std::vector<std::map<uint32_t, uint32_t>> children(1);
  std::vector<int64_t> own(1, -1);
  for (size_t i = 0; i < literals.size(); ++i) {
    uint32_t state = 0;
    for (char32_t c : literals[i]) {
      uint32_t sym = symbol(static_cast<uint32_t>(c));
      auto it = children[state].find(sym);
      if (it == children[state].end()) {
        if (children.size() > kMaxStates) throw std::length_error("literal automaton past 65,535 states");
        children[state].emplace(sym, static_cast<uint32_t>(children.size()));
        state = static_cast<uint32_t>(children.size());
        children.emplace_back();
        own.push_back(-1);
      } else {
        state = it->second;
      }
    }
    if (own[state] >= 0) throw std::invalid_argument("repeated literal");
    own[state] = static_cast<int64_t>(i);
  }

  // Breadth-first: a state's suffix link is final before its children are reached, so each
  // row of the table is its link's row with the state's own children written over it.
  const size_t states = children.size();
  if (states * symbols_ > kMaxTable) throw std::length_error("literal automaton table too large");
  next_.assign(states * symbols_, 0);
  std::vector<uint32_t> link(states, 0);
  std::vector<std::vector<uint32_t>> outputs(states);
  std::deque<uint32_t> queue;
  for (const auto& [sym, child] : children[0]) {
    next_[sym] = static_cast<uint16_t>(child);
    queue.push_back(child);
  }
  std::vector<uint32_t> order;
  while (!queue.empty()) {
    uint32_t state = queue.front();
    queue.pop_front();
    order.push_back(state);
    uint16_t* row = &next_[static_cast<size_t>(state) * symbols_];
    std::copy_n(&next_[static_cast<size_t>(link[state]) * symbols_], symbols_, row);
    for (const auto& [sym, child] : children[state]) {
      link[child] = next_[static_cast<size_t>(link[state]) * symbols_ + sym];
      row[sym] = static_cast<uint16_t>(child);
      queue.push_back(child);
    }
  }
  out_start_.assign(states + 1, 0);
  for (uint32_t state : order) {  // a link is shallower, so its outputs are complete already
    if (own[state] >= 0) outputs[state].push_back(static_cast<uint32_t>(own[state]));
    const auto& inherited = outputs[link[state]];
    outputs[state].insert(outputs[state].end(), inherited.begin(), inherited.end());
  }
  for (size_t s = 0; s < states; ++s) {
    out_start_[s + 1] = out_start_[s] + static_cast<uint32_t>(outputs[s].size());
    out_.insert(out_.end(), outputs[s].begin(), outputs[s].end());
  }
}

uint32_t LiteralAutomaton::symbol(uint32_t cp) const {
  if (cp < 0x10000) return bmp_symbol_[cp];
  if (astral_symbol_.empty()) return 0;
  auto it = std::lower_bound(astral_symbol_.begin(), astral_symbol_.end(), std::make_pair(cp, 0u));
  return it != astral_symbol_.end() && it->first == cp ? it->second : 0;
}

template <typename Char>
Occurrences LiteralAutomaton::find(const Char* text, size_t n, uint32_t cap) const {
  const size_t literals = length_.size();
  const size_t kept = static_cast<size_t>(cap) + 1;
  Occurrences occ;
  occ.cap = cap;
  occ.count.assign(literals, 0);
  occ.word_count.assign(literals, 0);
  occ.starts.reset(new uint32_t[literals * kept]);
  occ.word_starts.reset(new uint32_t[literals * kept]);
  const uint16_t* next = next_.data();
  const size_t width = symbols_;
  uint32_t state = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t cp = static_cast<uint32_t>(text[i]);
    const uint32_t sym = sizeof(Char) == 4 ? symbol(cp) : bmp_symbol_[cp];
    state = next[state * width + sym];
    const uint32_t* lit = out_.data() + out_start_[state];
    const uint32_t* end = out_.data() + out_start_[state + 1];
    for (; lit != end; ++lit) {
      const uint32_t id = *lit;
      const size_t start = i + 1 - length_[id];
      const uint32_t k = occ.count[id]++;
      if (k == 0) occ.seen.push_back(id);
      if (k < kept) occ.starts[id * kept + k] = static_cast<uint32_t>(start);
      if (whole_word_[id] && (start == 0 || !is_az(text[start - 1])) && (i + 1 == n || !is_az(text[i + 1]))) {
        const uint32_t w = occ.word_count[id]++;
        if (w < kept) occ.word_starts[id * kept + w] = static_cast<uint32_t>(start);
      }
    }
  }
  return occ;
}

template Occurrences LiteralAutomaton::find<uint8_t>(const uint8_t*, size_t, uint32_t) const;
template Occurrences LiteralAutomaton::find<uint16_t>(const uint16_t*, size_t, uint32_t) const;
template Occurrences LiteralAutomaton::find<uint32_t>(const uint32_t*, size_t, uint32_t) const;

}  // namespace llmaas::security
