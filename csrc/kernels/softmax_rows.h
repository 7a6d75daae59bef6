// Row primitives shared by softmax.cpp and cross_entropy.cpp (include only from
// csrc/kernels/*.cpp: like simd.h it opens namespace kg::<level>).
//
//   online_max_sum  one read of a row gives its max M and sum_j exp(scale*x_j - M)
//   write_row       y[0:n] = f(vector j), with streaming (non-temporal) stores for outputs
//                   too large for the caches
#pragma once
#include <cfloat>
#include <cstdint>

#include "common/simd.h"

KG_BEGIN_ISA_NAMESPACE
namespace softmax_rows {

using namespace simd;

// Outputs at least this large bypass the caches (about the size of the L3 cache): nobody
// will find them there anyway, and a streaming store does not first read the line it writes.
constexpr int64_t kStreamingBytes = int64_t(32) << 20;

// v with lanes [n, kWidth) replaced by `fill`.
inline vfloat fill_tail(vfloat v, int64_t n, float fill) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_mask_mov_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1), (__m512)v);
#else
  for (int64_t i = n; i < kWidth; ++i) v[i] = fill;
  return v;
#endif
}

// The first n floats at p (n <= kWidth), zeros after; a full load when n == kWidth.
inline vfloat load_n(const float* p, int64_t n) { return n == kWidth ? load(p) : load_partial(p, n); }

// exp(x) for the row kernels. On AVX-512: the range reduction of simd::exp (x = n ln2 + r,
// |r| <= ln2/2), a degree-6 minimax polynomial for exp(r) (relative error 2e-9 before
// rounding, ~1e-7 after) and vscalefps for the 2^n, which overflows to inf and underflows
// through the denormals to 0 by itself: 13 instructions instead of ~25, and exp is most of
// the work here. -inf -> 0, +inf -> inf, NaN -> NaN. Elsewhere simd::exp.
inline vfloat row_exp(vfloat x) {
#if defined(__AVX512F__)
  // MAXPS/MINPS return their second operand when either is NaN: x stays NaN.
  __m512 xc = _mm512_min_ps(_mm512_set1_ps(88.8f), _mm512_max_ps(_mm512_set1_ps(-104.0f), (__m512)x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.384365372e-03f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.374155499e-03f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166800156e-02f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666643173e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999999404e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return (vfloat)_mm512_scalef_ps(p, n);
#else
  return exp(x);
#endif
}

struct MaxSum {
  float max;   // M = max_j scale * x_j   (-FLT_MAX when every entry is -inf)
  double sum;  // sum_j row_exp(scale * x_j - M)
};

// True if any lane of a > b.
inline bool any_greater(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ) != 0;
#elif defined(__AVX2__)
  return _mm256_movemask_ps((__m256)(a > b)) != 0;
#elif defined(__SSE2__)
  return _mm_movemask_ps((__m128)(a > b)) != 0;
#else
  vint gt = a > b;
  for (int i = 0; i < kWidth; ++i)
    if (gt[i]) return true;
  return false;
#endif
}

// The online softmax normalizer (Milakov & Gimelshein, 2018) in one read of x[0:n]: every
// lane keeps a running max m and a sum s of exp(v - m). A block of 4 vectors that raises m
// to m' first rescales s by exp(m - m'); after the first few blocks of a row the max rarely
// grows, so most blocks skip that and cost one exp per value. Every 16 blocks (1024 values
// with AVX-512) the float sums are added into per-lane double sums, so no float sum grows
// past 16 terms per lane (the error stays ~1e-7 for any row length); lanes are merged in
// double at the end. The running max starts at -FLT_MAX rather than -inf so that -inf
// entries (masks) add exp(-inf) = 0 instead of exp(-inf - -inf) = NaN. A NaN anywhere makes
// the sum NaN; +inf makes it NaN too (inf - inf), as in the reference.
template <bool kScaled>
inline MaxSum online_max_sum_impl(const float* x, int64_t n, float scale) {
  constexpr int kBlocksPerFlush = 16;
  const vfloat vs = broadcast(scale);
  auto scaled = [&](vfloat v) { return kScaled ? v * vs : v; };
  vfloat m = broadcast(-FLT_MAX), m_flushed = m;
  vfloat s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
  double total[kWidth] = {};  // per lane, relative to m_flushed
  auto flush = [&] {
    vfloat s = (s0 + s1) + (s2 + s3), w = row_exp(m_flushed - m);
    for (int l = 0; l < kWidth; ++l) total[l] = total[l] * w[l] + s[l];
    s0 = s1 = s2 = s3 = zero();
    m_flushed = m;
  };
  int blocks = 0;
  int64_t j = 0;
  for (; j + 4 * kWidth <= n; j += 4 * kWidth) {
    vfloat v0 = scaled(load(x + j)), v1 = scaled(load(x + j + kWidth));
    vfloat v2 = scaled(load(x + j + 2 * kWidth)), v3 = scaled(load(x + j + 3 * kWidth));
    vfloat block_max = max(max(v0, v1), max(v2, v3));
    if (any_greater(block_max, m)) {  // the running max grows: rescale the sums
      vfloat m_new = max(m, block_max);
      vfloat c = row_exp(m - m_new);
      s0 *= c;
      s1 *= c;
      s2 *= c;
      s3 *= c;
      m = m_new;
    }
    s0 += row_exp(v0 - m);
    s1 += row_exp(v1 - m);
    s2 += row_exp(v2 - m);
    s3 += row_exp(v3 - m);
    if (++blocks == kBlocksPerFlush) {
      flush();
      blocks = 0;
    }
  }
  s0 = (s0 + s1) + (s2 + s3);  // they share m: one sum for the tail
  s1 = s2 = s3 = zero();
  for (; j < n; j += kWidth) {  // the last < 4 vectors, one at a time; padding lanes = -inf
    int64_t k = n - j < kWidth ? n - j : kWidth;
    vfloat v = fill_tail(scaled(load_n(x + j, k)), k, -INFINITY);
    vfloat m_new = max(m, v);
    s0 = s0 * row_exp(m - m_new) + row_exp(v - m_new);
    m = m_new;
  }
  flush();
  float mx = reduce_max(m);
  vfloat w = row_exp(m - mx);  // brings every lane's sum to the common max
  double sum = 0.0;
  for (int l = 0; l < kWidth; ++l) sum += total[l] * w[l];
  return {mx, sum};
}

inline MaxSum online_max_sum(const float* x, int64_t n, float scale) {
  return scale == 1.0f ? online_max_sum_impl<false>(x, n, scale)
                       : online_max_sum_impl<true>(x, n, scale);
}

// y[0:n] = f(j, k) for j = 0, kWidth, 2 kWidth, ..., where f returns the vector of outputs
// j .. j+k-1 (k = kWidth, or fewer at the ends: f must read only k elements then). With
// `stream`, full vectors go out with non-temporal stores once y is 64-byte aligned.
template <class F>
inline void write_row(float* y, int64_t n, bool stream, F&& f) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if (stream && ((uintptr_t)y & 3) == 0) {
    int64_t head = (int64_t)((64 - ((uintptr_t)y & 63)) & 63) / 4;
    if (head > n) head = n;
    if (head > 0) store_partial(y, f(0, head), head);
    for (j = head; j + kWidth <= n; j += kWidth) _mm512_stream_ps(y + j, (__m512)f(j, kWidth));
  }
#else
  (void)stream;
#endif
  for (; j + kWidth <= n; j += kWidth) store(y + j, f(j, kWidth));
  if (j < n) store_partial(y + j, f(j, n - j), n - j);
}

// Orders the streaming stores before whatever the caller does next (another thread may read y).
inline void end_streaming(bool stream) {
#if defined(__AVX512F__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// Rows per thread worth waking a thread for: about 32k elements.
inline int64_t min_rows_per_thread(int64_t cols) {
  int64_t r = (int64_t(1) << 15) / (cols > 0 ? cols : 1);
  return r < 1 ? 1 : r;
}

}  // namespace softmax_rows
KG_END_ISA_NAMESPACE
