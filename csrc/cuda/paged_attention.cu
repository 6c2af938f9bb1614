// Paged-attention decode (one query token per sequence) in CUDA, bf16/fp16/fp32.
//
// Layout: query (num_seqs, num_heads, D) with token/head strides and unit last stride;
// k_cache/v_cache (num_blocks, block_size, num_kv_heads, D) contiguous; block_tables
// (num_seqs, max_blocks_per_seq) int32; context_lens (num_seqs,) int32, the query's own token
// included. Output (num_seqs, num_heads, D) contiguous, query's dtype.
//
// Design: one thread block of NWARPS warps per (sequence, chunk of up to MAX_G query heads that
// share one kv head, split of the context). The chunk's heads sit in registers (lane i holds
// elements i*VEC .. i*VEC+VEC-1 of each, D = 32 * VEC), so each K/V row is read from HBM once
// for the whole GQA group: warp w takes runs of kUnroll tokens, NWARPS * kUnroll apart, issuing
// all their K and V loads (one 4-16 byte load per lane and row) before using any; per token it
// reduces the G dot products across the warp and keeps a per-warp online softmax (running max m,
// sum l, unnormalised acc) per head. The warps then
// merge through shared memory, one head at a time. Long contexts split over blockIdx.z so a small
// batch still fills the SMs; each split stores (acc, m, l) in fp32 and merge_splits_kernel
// combines them: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s. Splits past a sequence's
// context store m = -inf, l = 0 and drop out, so the grid can come from a host-side bound.
// Sliding window W > 0 (local attention): the query sees only keys ctx - W .. ctx - 1, so the splits
// tile those min(ctx, W) keys from the first of them and no earlier block is read; the host plans
// the grid from min(max_context_len, W) (engine/kernels/cuda_kernels.py plan_splits).
// Reference: engine/kernels/reference.py paged_attention; test: tests/kernels/test_cuda_kernels.py.
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace llmaas_cuda {
namespace {

constexpr int kNumWarps = 8;
constexpr int kMaxGroup = 8;  // query heads per block; larger GQA groups take several blocks
constexpr int kUnroll = 4;    // tokens per warp per iteration

template <typename T, int VEC>
__global__ void __launch_bounds__(kNumWarps * 32)
    decode_kernel(T* __restrict__ out, float* __restrict__ partials, const T* __restrict__ query,
                  const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                  const int32_t* __restrict__ block_tables,
                  const int32_t* __restrict__ context_lens, int num_heads, int num_kv_heads, int heads_per_block,
                  int block_size, int max_blocks_per_seq, int64_t q_token_stride, int64_t q_head_stride,
                  int num_splits, int partition, int window, float scale) {
  constexpr int D = 32 * VEC;
  __shared__ float s_acc[kNumWarps][D];
  __shared__ float s_m[kNumWarps], s_l[kNumWarps];
  const int seq = blockIdx.x, split = blockIdx.z;
  const int head0 = blockIdx.y * heads_per_block;
  const int kv_head = head0 / (num_heads / num_kv_heads);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ctx = context_lens[seq];
  const int first = window > 0 ? max(ctx - window, 0) : 0;  // the first key the query sees
  const int start = first + split * partition;
  const int end = min(start + partition, ctx);

  float q[kMaxGroup][VEC];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    const T* qp = query + seq * q_token_stride + (head0 + g) * q_head_stride + lane * VEC;
#pragma unroll
    for (int i = 0; i < VEC; ++i) q[g][i] = g < heads_per_block ? to_float(qp[i]) * scale : 0.f;
  }
  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][VEC];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[g][i] = 0.f;
  }
  const int64_t slot_stride = static_cast<int64_t>(num_kv_heads) * D;
  const int32_t* table = block_tables + static_cast<int64_t>(seq) * max_blocks_per_seq;
  // Warp w takes tokens [t0, t0 + kUnroll) of every kNumWarps * kUnroll: all kUnroll K and V rows
  // are requested before any is used, so each warp keeps several loads in flight (HBM latency).
  for (int t0 = start + warp * kUnroll; t0 < end; t0 += kNumWarps * kUnroll) {
    Pack<T, VEC> k_raw[kUnroll], v_raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t0 + u;
      if (t < end) {
        const int64_t row =
            (static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size) * slot_stride +
            kv_head * D + lane * VEC;
        k_raw[u] = *reinterpret_cast<const Pack<T, VEC>*>(k_cache + row);
        v_raw[u] = *reinterpret_cast<const Pack<T, VEC>*>(v_cache + row);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (t0 + u >= end) break;
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= heads_per_block) break;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) s += q[g][i] * to_float(k_raw[u].v[i]);
        s = warp_sum(s);
        const float m_new = fmaxf(m[g], s);
        const float alpha = __expf(m[g] - m_new), p = __expf(s - m_new);
        l[g] = l[g] * alpha + p;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[g][i] = acc[g][i] * alpha + p * to_float(v_raw[u].v[i]);
        m[g] = m_new;
      }
    }
  }

  // Merge the warps, one head at a time.
  for (int g = 0; g < heads_per_block; ++g) {
    if (lane == 0) {
      s_m[warp] = m[g];
      s_l[warp] = l[g];
    }
    __syncthreads();
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kNumWarps; ++w) m_all = fmaxf(m_all, s_m[w]);
    const float mine = m[g] == -INFINITY ? 0.f : __expf(m[g] - m_all);
#pragma unroll
    for (int i = 0; i < VEC; ++i) s_acc[warp][lane * VEC + i] = acc[g][i] * mine;
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float sum = 0.f, l_all = 0.f;
#pragma unroll
      for (int w = 0; w < kNumWarps; ++w) {
        sum += s_acc[w][d];
        l_all += s_m[w] == -INFINITY ? 0.f : s_l[w] * __expf(s_m[w] - m_all);
      }
      const int64_t head_row = static_cast<int64_t>(seq) * num_heads + head0 + g;
      if (num_splits == 1) {
        out[head_row * D + d] = from_float<T>(sum / l_all);
      } else {
        float* part = partials + (head_row * num_splits + split) * (D + 2);
        part[d] = sum;
        if (d == 0) {
          part[D] = m_all;  // -inf for an empty split
          part[D + 1] = l_all;
        }
      }
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void merge_splits_kernel(T* __restrict__ out, const float* __restrict__ partials, int head_dim,
                                    int num_splits) {
  const int64_t head_row = blockIdx.x;
  const float* parts = partials + head_row * num_splits * (head_dim + 2);
  float m_all = -INFINITY;
  for (int s = 0; s < num_splits; ++s) m_all = fmaxf(m_all, parts[s * (head_dim + 2) + head_dim]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.f, l_all = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float* part = parts + s * (head_dim + 2);
      const float m = part[head_dim];
      if (m == -INFINITY) continue;
      const float w = __expf(m - m_all);
      sum += part[d] * w;
      l_all += part[head_dim + 1] * w;
    }
    out[head_row * head_dim + d] = from_float<T>(sum / l_all);
  }
}

template <typename T, int VEC>
std::string launch(const DecodeAttentionArgs& a, int heads_per_block) {
  const auto stream = reinterpret_cast<cudaStream_t>(a.stream);
  const dim3 grid(static_cast<unsigned>(a.num_seqs), static_cast<unsigned>(a.num_heads / heads_per_block),
                  static_cast<unsigned>(a.num_splits));
  decode_kernel<T, VEC><<<grid, kNumWarps * 32, 0, stream>>>(
      static_cast<T*>(a.out), a.partials, static_cast<const T*>(a.query), static_cast<const T*>(a.k_cache),
      static_cast<const T*>(a.v_cache), a.block_tables, a.context_lens, static_cast<int>(a.num_heads),
      static_cast<int>(a.num_kv_heads), heads_per_block, static_cast<int>(a.block_size),
      static_cast<int>(a.max_blocks_per_seq), a.q_token_stride, a.q_head_stride, static_cast<int>(a.num_splits),
      static_cast<int>(a.partition), static_cast<int>(a.sliding_window), a.scale);
  std::string err = launch_error("decode_kernel");
  if (!err.empty() || a.num_splits == 1) return err;
  merge_splits_kernel<T><<<static_cast<unsigned>(a.num_seqs * a.num_heads), 128, 0, stream>>>(
      static_cast<T*>(a.out), a.partials, static_cast<int>(a.head_dim), static_cast<int>(a.num_splits));
  return launch_error("merge_splits_kernel");
}

template <typename T>
std::string dispatch_head_dim(const DecodeAttentionArgs& a, int heads_per_block) {
  switch (a.head_dim) {
    case 64: return launch<T, 2>(a, heads_per_block);
    case 128: return launch<T, 4>(a, heads_per_block);
    case 256: return launch<T, 8>(a, heads_per_block);
    default: return "decode_attention: head_dim must be 64, 128 or 256, got " + std::to_string(a.head_dim);
  }
}

}  // namespace

std::string decode_attention(const DecodeAttentionArgs& a) {
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0) return "decode_attention: num_heads % num_kv_heads";
  if (a.num_splits < 1 || a.partition < 1 || (a.num_splits > 1 && a.partials == nullptr))
    return "decode_attention: num_splits >= 1, partition >= 1 and partials for num_splits > 1";
  if (a.sliding_window < 0 || a.sliding_window > INT32_MAX) return "decode_attention: 0 <= sliding_window < 2^31";
  if (a.num_seqs == 0) return {};
  // The largest divisor of the GQA group that fits the registers: blocks never straddle kv heads.
  const int group = static_cast<int>(a.num_heads / a.num_kv_heads);
  int heads_per_block = 1;
  for (int h = 1; h <= kMaxGroup; ++h)
    if (group % h == 0) heads_per_block = h;
  switch (a.dtype) {
    case DType::kFloat32: return dispatch_head_dim<float>(a, heads_per_block);
    case DType::kFloat16: return dispatch_head_dim<__half>(a, heads_per_block);
    case DType::kBFloat16: return dispatch_head_dim<__nv_bfloat16>(a, heads_per_block);
  }
  return "decode_attention: unknown dtype";
}

}  // namespace llmaas_cuda
