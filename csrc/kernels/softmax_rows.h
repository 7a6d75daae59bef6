// Row primitives shared by softmax.cpp and cross_entropy.cpp (include only from
// csrc/kernels/*.cpp: like simd.h it opens namespace kg::<level>).
//
//   online_row       one read of a row from memory gives its max M and
//                    sum_j exp(scale*x_j - M) (online softmax, chunk by chunk), optionally
//                    keeping the exps it computed
//   plan_rows        for a [rows, cols] call: whether to keep those exps for the second pass,
//                    and whether to write the outputs with streaming stores
//   write_from_kept  the second pass from the kept exps
// The exp is simd.h's exp_upto88 (its arguments are x - max(x) <= 0); the outputs are
// written with simd.h's store_range.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "common/simd.h"

KG_BEGIN_ISA_NAMESPACE
namespace softmax_rows {

using namespace simd;


// v with lanes [n, kWidth) replaced by `fill`.
inline vfloat fill_tail(vfloat v, int64_t n, float fill) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_mask_mov_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1), (__m512)v);
#else
  for (int64_t i = n; i < kWidth; ++i) v[i] = fill;
  return v;
#endif
}

// ---- the online pass --------------------------------------------------------------------
//
// Online softmax (Milakov & Gimelshein, 2018) keeps a running max m and a running sum
// s = sum exp(v - m) and rescales s by exp(m - m') whenever the max grows to m'. Here the
// unit of "online" is a chunk of 1024 values (4 KiB): its max is found first (reading it
// from memory), then its exps are computed against the running max (reading it again from
// L1, while the next chunk is prefetched), so that there is one exp per value and one
// rescale per chunk at most. The chunk sums
// (<= 16 terms per float lane) go into a double, which keeps the sum accurate to ~1e-7 for
// any row length.
//
// The running max starts at -FLT_MAX rather than -inf so that -inf entries (masks) give
// exp(-inf) = 0 instead of exp(-inf - -inf) = NaN. A NaN anywhere makes the sum NaN, and so
// does +inf (inf - inf), as in the reference.
//
// With `kept` (room for n floats) the exps are kept for the second pass, which then costs a
// multiply per value instead of an exp: kept[j] = exp(v_j - chunk_max[c]) for j in chunk c,
// where chunk_max[c] is the running max after chunk c (so exp(v_j - M) = kept[j] *
// exp(chunk_max[c] - M)). When that pays off: see plan_rows.
constexpr int64_t kChunk = 1024;
constexpr int64_t kMaxKeptChunks = 256;  // rows up to 256K values can keep their exps (1 MiB)

// The sum of the lanes of v, added in double.
inline double reduce_add_double(vfloat v) {
#if defined(__AVX512F__)
  __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256((__m512)v));
  __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1)));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
#else
  double sum = 0.0;
  for (int l = 0; l < kWidth; ++l) sum += v[l];
  return sum;
#endif
}

struct RowStats {
  float max;   // M = max_j scale * x_j   (-FLT_MAX when every entry is -inf)
  double sum;  // sum_j exp(scale * x_j - M)
};

// kept and chunk_max (room for (n + kChunk - 1) / kChunk <= kMaxKeptChunks floats) are
// both given or both null.
template <bool kScaled>
inline RowStats online_row_impl(const float* x, int64_t n, float scale, float* kept,
                                float* chunk_max) {
  const vfloat vs = broadcast(scale);
  auto scaled = [&](vfloat v) { return kScaled ? v * vs : v; };
  float m = -FLT_MAX;
  double total = 0.0;  // sum of exp(v - m) so far
  for (int64_t c0 = 0, c = 0; c0 < n; c0 += kChunk, ++c) {
    const int64_t len = n - c0 < kChunk ? n - c0 : kChunk;
    const float* xc = x + c0;
    // 1. the chunk's max
    vfloat m0 = broadcast(-FLT_MAX), m1 = m0;
    int64_t j = 0;
    for (; j + 2 * kWidth <= len; j += 2 * kWidth) {
      m0 = max(m0, scaled(load(xc + j)));
      m1 = max(m1, scaled(load(xc + j + kWidth)));
    }
    for (; j < len; j += kWidth) {
      int64_t k = len - j < kWidth ? len - j : kWidth;
      m0 = max(m0, fill_tail(scaled(load_upto(xc + j, k)), k, -FLT_MAX));
    }
    float chunk = reduce_max(max(m0, m1));
    if (chunk > m) {  // the running max grows: rescale the sum so far
      if (c > 0) total *= std::exp((double)m - (double)chunk);
      m = chunk;
    }
    // 2. the chunk's exps against the running max, summed in four float accumulators
    const vfloat vm = broadcast(m);
    vfloat s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
    j = 0;
    for (; j + 4 * kWidth <= len; j += 4 * kWidth) {
      vfloat e0 = exp_upto88(scaled(load(xc + j)) - vm);
      vfloat e1 = exp_upto88(scaled(load(xc + j + kWidth)) - vm);
      vfloat e2 = exp_upto88(scaled(load(xc + j + 2 * kWidth)) - vm);
      vfloat e3 = exp_upto88(scaled(load(xc + j + 3 * kWidth)) - vm);
      // Fetch the next chunk while this one computes (the hardware prefetcher alone leaves
      // memory idle here: +20-30% for rows streamed from memory, measured). Prefetching past
      // the end of the row (into the next row, or past the array) is harmless.
      const char* ahead = reinterpret_cast<const char*>(xc + kChunk + j);
#pragma GCC unroll 4
      for (int b = 0; b < 4 * kWidth * (int)sizeof(float); b += 64) __builtin_prefetch(ahead + b);
      if (kept) {
        store(kept + c0 + j, e0);
        store(kept + c0 + j + kWidth, e1);
        store(kept + c0 + j + 2 * kWidth, e2);
        store(kept + c0 + j + 3 * kWidth, e3);
      }
      s0 += e0;
      s1 += e1;
      s2 += e2;
      s3 += e3;
    }
    for (; j < len; j += kWidth) {  // padding lanes: exp(-inf) = 0
      int64_t k = len - j < kWidth ? len - j : kWidth;
      vfloat e = exp_upto88(fill_tail(scaled(load_upto(xc + j, k)), k, -INFINITY) - vm);
      if (kept) store_upto(kept + c0 + j, e, k);
      s0 += e;
    }
    total += reduce_add_double((s0 + s1) + (s2 + s3));
    if (chunk_max) chunk_max[c] = m;
  }
  return {m, total};
}

inline RowStats online_row(const float* x, int64_t n, float scale, float* kept = nullptr,
                           float* chunk_max = nullptr) {
  return scale == 1.0f ? online_row_impl<false>(x, n, scale, kept, chunk_max)
                       : online_row_impl<true>(x, n, scale, kept, chunk_max);
}

// A grow-only, 64-byte aligned buffer per thread for the kept exps of one row of n values
// (null if n > kMaxKeptChunks * kChunk, or if it cannot be allocated).
struct KeptBuffer {
  float* data = nullptr;
  int64_t capacity = 0;
  ~KeptBuffer() { std::free(data); }
};
inline float* kept_buffer(int64_t n) {
  if (n > kMaxKeptChunks * kChunk) return nullptr;
  static thread_local KeptBuffer buffer;
  if (n > buffer.capacity) {
    std::free(buffer.data);
    buffer.data = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
    buffer.capacity = buffer.data ? n : 0;
  }
  return buffer.data;
}

// ---- the plan for a [rows, cols] call, measured on this Zen 4 machine with 2 threads ------
//
// stream: streaming (non-temporal) stores for outputs `out` of at least 32 MiB (about the L3
//   size: nobody will find them in the cache anyway) with rows of at least 1024 values, if
//   out is float aligned (store_range needs that; numpy's arrays are). They skip reading
//   each output line before overwriting it (1.2-1.3x for long rows); but with short rows,
//   where reads and writes alternate every few KiB, they were up to 2x SLOWER than plain
//   stores.
// keep: keep the exps of pass 1 for pass 2 for inputs up to 8 MiB, or rows of up to 1024
//   values: 1.3-1.4x while the inputs come from the caches. For larger inputs with longer
//   rows, keeping was measured SLOWER than recomputing the exps from x (still in L2) --
//   reading back the freshly written buffer seems to cost a trip past the L2.
struct RowPlan {
  bool stream, keep;
};
inline RowPlan plan_rows(int64_t rows, int64_t cols, const float* out) {
  const int64_t bytes = rows * cols * (int64_t)sizeof(float);
  RowPlan plan;
  plan.stream = bytes >= (int64_t(32) << 20) && cols >= 1024 &&
                reinterpret_cast<uintptr_t>(out) % sizeof(float) == 0;
  plan.keep = bytes <= (int64_t(8) << 20) || cols <= 1024;
  return plan;
}

// The second pass from kept exps (see online_row): y[j] = patch(j, k, kept[j] * f_c) with
// f_c = w * exp(chunk_max[c] - M) / sum for the chunk c of j, one chunk at a time.
template <class Patch>
inline void write_from_kept(float* y, int64_t n, const float* kept, const float* chunk_max,
                            RowStats st, double w, bool stream, Patch&& patch) {
  for (int64_t c0 = 0, c = 0; c0 < n; c0 += kChunk, ++c) {
    const int64_t len = n - c0 < kChunk ? n - c0 : kChunk;
    const double rescale = chunk_max[c] == st.max ? 1.0 : std::exp((double)chunk_max[c] - st.max);
    const vfloat f = broadcast((float)(w * rescale / st.sum));
    store_range(y + c0, 0, len, stream, [&](int64_t j, int64_t k) {
      return patch(c0 + j, k, load_upto(kept + c0 + j, k) * f);
    });
  }
}

// Rows per thread worth waking a thread for: about 32k elements.
inline int64_t min_rows_per_thread(int64_t cols) {
  int64_t r = (int64_t(1) << 15) / (cols > 0 ? cols : 1);
  return r < 1 ? 1 : r;
}

}  // namespace softmax_rows
KG_END_ISA_NAMESPACE
