// Causal paged attention over a mixed batch (prefill chunks and decodes) on CPU.
//
// Data layout
//   query      (num_tokens, H, D): the query rows of all sequences concatenated,
//              rows query_start_loc[s]..query_start_loc[s+1] belong to sequence s.
//              Strided (it is a view of the fused qkv projection); last dim unit.
//   k/v cache  (num_blocks, block_size, Hkv, D), contiguous. Position p of sequence
//              s lives in block block_tables[s][p / block_size], row p % block_size.
//   out        (num_tokens, H, D), contiguous.
//   Query row j of a sequence with q_len rows and context_len cached tokens (its
//   own rows included) sits at position context_len - q_len + j and sees 0..itself;
//   with sliding_window W > 0 only its last W keys, p - W + 1 .. p (local attention).
//
// Design
//   The work is cut into items (sequence, tile of query tokens, range of kv
//   heads), each computed by attend_item.h's kernel with online softmax. Tiles
//   are as long as possible for K/V reuse, yet short enough for every thread to
//   get several; an item takes all kv heads (each cache block read as one
//   stretch) unless the sequences' tiles are too few to go round the threads.
//   Items are sorted by estimated cost, largest first, and handed out dynamically:
//   a decode batch gives many items of similar cost, a prefill gives tiles whose
//   causal cost grows with position, and longest-first keeps the tail short.
//   A sliding window caps each token's keys at W: an item walks only the blocks from
//   its first token's window on (a decode reads its window's blocks, no others) and
//   each token attends its own window's part of them.
//   On avx512_bf16 CPUs, bf16 caches of head dim 64 or 128 go to attend_bf16.h, which reads
//   K and V in place instead of staging them as fp32 (1.5-2x in cache, 1.1-1.2x from DRAM).
//   The kernel is compiled for AVX-512, AVX2 and the x86-64-v2 baseline, each with
//   its own vector width, and for head dims 64 and 128 as constants plus any other
//   at run time; the variant is picked at load time, because the build must not
//   assume the machine it runs on.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attend_item.h"
#if defined(__x86_64__)
#include "attend_amx.h"
#include "attend_bf16.h"
#endif
#include "isa_select.h"
#include "kernels.h"

namespace llmaas {
namespace {

using attention::attend_item;
using attention::Scratch;
using attention::WorkItem;

// Query tokens per work item, at most: beyond this the K/V reuse gain is small
// next to the parallelism lost on short prefills.
constexpr int64_t kMaxQueryTile = 16;
// Work items wanted per thread so that dynamic scheduling can even out costs.
constexpr int64_t kItemsPerThread = 4;
// Multiply-adds below which waking the thread team costs more than it saves
// (a few short decodes).
constexpr int64_t kMinParallelWork = 1 << 18;

using AttendFn = void (*)(const PagedAttentionArgs&, const WorkItem&, Scratch&);

template <typename T, int64_t kHeadDim>
void attend_baseline(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  attend_item<Simd<4>::F, T, kHeadDim>(a, w, sc);
}

#if defined(__x86_64__)
template <typename T, int64_t kHeadDim>
__attribute__((target("avx2,fma"))) void attend_avx2(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  attend_item<Simd<8>::F, T, kHeadDim>(a, w, sc);
}

template <typename T, int64_t kHeadDim>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void attend_avx512(
    const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  attend_item<Simd<16>::F, T, kHeadDim>(a, w, sc);
}

template <int64_t kHeadDim>
void attend_amx(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  attention::attend_item_amx<kHeadDim>(a, w, sc);
}

template <int64_t kHeadDim>
void attend_bf16(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  attention::attend_item_bf16<kHeadDim>(a, w, sc);
}
#endif

// The head dimensions compiled as constants, then the generic one.
constexpr int64_t kHeadDims[] = {64, 128, 0};

struct IsaVariant {
  const char* name;
  bool (*supported)();
  AttendFn kernels[2][3];  // [float32, bfloat16][kHeadDims]
};

// clang-format off
#define LLMAAS_KERNELS(fn) \
  {{fn<float, 64>, fn<float, 128>, fn<float, 0>}, {fn<uint16_t, 64>, fn<uint16_t, 128>, fn<uint16_t, 0>}}
// clang-format on

// Best first.
const IsaVariant kVariants[] = {
#if defined(__x86_64__)
    // bf16 caches of head dim 64 or 128 read in place (attend_bf16.h); the rest as avx512.
    {"avx512_bf16", cpu_has_avx512_bf16,
     {{attend_avx512<float, 64>, attend_avx512<float, 128>, attend_avx512<float, 0>},
      {attend_bf16<64>, attend_bf16<128>, attend_avx512<uint16_t, 0>}}},
    // bf16 caches of head dim 64 or 128 on AMX tiles (attend_amx.h); the rest as avx512. Chosen only
    // by name (LLMAAS_CPU_ATTENTION): faster prefill, slower decode at long contexts.
    {"amx_bf16", cpu_has_amx_bf16,
     {{attend_avx512<float, 64>, attend_avx512<float, 128>, attend_avx512<float, 0>},
      {attend_amx<64>, attend_amx<128>, attend_avx512<uint16_t, 0>}}},
    {"avx512", cpu_has_avx512, LLMAAS_KERNELS(attend_avx512)},
    {"avx2", cpu_has_avx2, LLMAAS_KERNELS(attend_avx2)},
#endif
    {"baseline", [] { return true; }, LLMAAS_KERNELS(attend_baseline)},
};

IsaSelector g_isa(kVariants);

// Checks what the kernel is about to dereference, and cuts the query rows into
// work items: tiles of `tile` query tokens, each split into ranges of kv heads
// when there are fewer tiles than `wanted` items.
std::vector<WorkItem> plan_work(const PagedAttentionArgs& a, int64_t tile, int64_t wanted) {
  const int32_t* qsl = a.query_start_loc;
  if (qsl[0] != 0 || qsl[a.num_seqs] != a.num_tokens)
    throw std::invalid_argument("query_start_loc must start at 0 and end at num_tokens");
  int64_t tiles = 0;
  for (int64_t s = 0; s < a.num_seqs; ++s) tiles += (qsl[s + 1] - qsl[s] + tile - 1) / tile;
  const int64_t pieces = std::clamp((wanted + tiles - 1) / std::max<int64_t>(tiles, 1), int64_t{1}, a.num_kv_heads);
  const int64_t heads = (a.num_kv_heads + pieces - 1) / pieces;  // per item, at most
  std::vector<WorkItem> items;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t q_len = qsl[s + 1] - qsl[s], ctx = a.context_lens[s];
    if (q_len < 0) throw std::invalid_argument("query_start_loc must be non-decreasing");
    if (ctx < q_len) throw std::invalid_argument("context_lens[s] must include the sequence's query tokens");
    const int64_t blocks = (ctx + a.block_size - 1) / a.block_size;
    if (blocks > a.max_blocks_per_seq) throw std::invalid_argument("context_lens[s] exceeds block_tables' width");
    const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
    // Only the blocks from the first query row's window on are read, so only they are checked.
    for (int64_t b = attention::window_start(ctx - q_len, a.sliding_window) / a.block_size; b < blocks; ++b)
      if (table[b] < 0 || table[b] >= a.num_blocks)
        throw std::invalid_argument("block id out of range in block_tables");
    for (int64_t t0 = 0; t0 < q_len; t0 += tile) {
      const int64_t t1 = std::min(q_len, t0 + tile);
      const int64_t last = ctx - q_len + t1 - 1;  // the tile's last position
      const int64_t keys = last + 1 - attention::window_start(last, a.sliding_window);
      for (int64_t g0 = 0; g0 < a.num_kv_heads; g0 += heads) {
        const int64_t g1 = std::min(a.num_kv_heads, g0 + heads);
        items.push_back({(t1 - t0) * keys * (g1 - g0), static_cast<int32_t>(s),
                         static_cast<int32_t>(t0), static_cast<int32_t>(t1), static_cast<int32_t>(g0),
                         static_cast<int32_t>(g1)});
      }
    }
  }
  std::sort(items.begin(), items.end(), [](const WorkItem& x, const WorkItem& y) { return x.cost > y.cost; });
  return items;
}

}  // namespace

void paged_attention(const PagedAttentionArgs& a) {
  if (a.num_seqs < 0 || a.num_tokens < 0 || a.head_dim <= 0 || a.block_size <= 0 || a.num_kv_heads <= 0 ||
      a.num_heads % a.num_kv_heads != 0 || a.sliding_window < 0)
    throw std::invalid_argument("paged_attention: invalid sizes");
  const int threads = std::max(a.num_threads, 1);
  const int64_t tile =
      std::clamp(a.num_tokens * a.num_kv_heads / (kItemsPerThread * threads), int64_t{1}, kMaxQueryTile);
  const std::vector<WorkItem> items = plan_work(a, tile, kItemsPerThread * threads);
  const IsaVariant* variant = g_isa.current();
  const int dim_index = a.head_dim == kHeadDims[0] ? 0 : a.head_dim == kHeadDims[1] ? 1 : 2;
  const AttendFn attend = variant->kernels[a.dtype == DType::kFloat32 ? 0 : 1][dim_index];
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t work = static_cast<int64_t>(items.size());
  const int64_t rows = std::min(tile, a.num_tokens) * a.num_heads;
  int64_t multiply_adds = 0;
  for (const WorkItem& item : items) multiply_adds += item.cost * group * a.head_dim;
#pragma omp parallel num_threads(threads) if (work > 1 && multiply_adds >= kMinParallelWork)
  {
    const bool in_place = a.dtype == DType::kFloat32 && a.head_dim % attention::kPad == 0;
    Scratch scratch(rows, group, a.num_kv_heads, a.head_dim, attention::span_keys(!in_place, a.block_size));
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < work; ++i) attend(a, items[i], scratch);
#if defined(__x86_64__)
    if (variant == &kVariants[1]) amx_release();  // amx_bf16
#endif
  }
}

std::vector<std::string> supported_cpu_isas() { return g_isa.supported_names(); }

std::string cpu_isa() { return g_isa.current()->name; }

void set_cpu_isa(const std::string& isa) { g_isa.select(isa); }

}  // namespace llmaas
