// Run-time choice among a kernel's instruction-set variants.
//
// A kernel file lists its variants best first in a table of structs that each have a `name` and a
// `supported()` predicate, ending with a baseline that every x86-64 CPU runs. The selector starts
// on the best supported variant; tests and benchmarks may force another by name.
#pragma once

#include <atomic>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace llmaas {

#if defined(__x86_64__)
// What the CPU runs. Each asks libgcc to read the CPU model first: a static initializer may run
// before libgcc has. "avx512" is the set every AVX-512 variant is compiled for (F, BW, VL and DQ,
// with AVX2 and FMA).
inline bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

inline bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

inline bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif

template <typename Variant, std::size_t N>
class IsaSelector {
 public:
  explicit IsaSelector(const Variant (&variants)[N]) : variants_(variants), current_(best()) {}

  const Variant* current() const { return current_.load(std::memory_order_relaxed); }

  std::vector<std::string> supported_names() const {
    std::vector<std::string> names;
    for (const Variant& v : variants_)
      if (v.supported()) names.emplace_back(v.name);
    return names;
  }

  void select(const std::string& isa) {
    for (const Variant& v : variants_) {
      if (isa == v.name) {
        if (!v.supported()) throw std::invalid_argument("this CPU does not support " + isa);
        current_.store(&v);
        return;
      }
    }
    throw std::invalid_argument("unknown ISA variant: " + isa);
  }

 private:
  const Variant* best() const {
    for (const Variant& v : variants_)
      if (v.supported()) return &v;
    return &variants_[N - 1];  // the baseline: always supported
  }

  const Variant (&variants_)[N];
  std::atomic<const Variant*> current_;
};

}  // namespace llmaas
