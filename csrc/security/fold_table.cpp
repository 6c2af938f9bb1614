// The fold table's look-ups and its one-pass fold. See fold_table.h for the design.
#include "fold_table.h"

#include <stdexcept>

namespace llmaas::security {

const FoldTable::Entry* FoldTable::find(uint32_t cp) const {
  if (cp < 0x10000) return bmp_[cp].known ? &bmp_[cp] : nullptr;
  auto it = astral_.find(cp);
  return it == astral_.end() ? nullptr : &it->second;
}

void FoldTable::learn(uint32_t cp, const std::u32string& folded, bool plain) {
  if (cp > 0x10FFFF) throw std::invalid_argument("not a code point");
  if (folded.size() > 0xFFFF) throw std::length_error("fold too long");
  Entry entry;
  entry.known = true;
  entry.plain = plain;
  entry.length = static_cast<uint16_t>(folded.size());
  if (folded.size() == 1) {
    entry.value = static_cast<uint32_t>(folded[0]);
  } else {
    entry.value = static_cast<uint32_t>(pool_.size());
    pool_ += folded;
  }
  if (cp < 0x10000) {
    bmp_[cp] = entry;
  } else {
    astral_[cp] = entry;
  }
}

template <typename Char>
Folding FoldTable::fold(const Char* text, size_t n) const {
  Folding out;
  out.text.reserve(n + 16);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t cp = static_cast<uint32_t>(text[i]);
    const Entry* e = find(cp);
    if (e == nullptr) {
      if (cp < 0x10000) throw std::logic_error("fold table not taught the BMP");
      out.plain = false;  // an astral character that folds to itself
      out.text.push_back(static_cast<char32_t>(cp));
      continue;
    }
    out.plain = out.plain && e->plain;
    if (e->length == 1) {
      out.text.push_back(static_cast<char32_t>(e->value));
      continue;
    }
    out.text.append(pool_, e->value, e->length);
    out.at.push_back(static_cast<uint32_t>(i));
    out.ends.push_back(static_cast<uint32_t>(out.text.size()));
  }
  return out;
}

template Folding FoldTable::fold<uint8_t>(const uint8_t*, size_t) const;
template Folding FoldTable::fold<uint16_t>(const uint16_t*, size_t) const;
template Folding FoldTable::fold<uint32_t>(const uint32_t*, size_t) const;

}  // namespace llmaas::security
