// bfloat16 weights: conversion and y = x @ W^T with W stored as bf16 (shapes in bf16.h).
//
// Conversion
//   to_bf16: round to nearest, ties to even, on the bit pattern: add 0x7fff plus the lowest
//     kept bit, keep the top 16 bits. Integer arithmetic, so denormals round like any other
//     number (vcvtneps2bf16 would flush them to zero) and every ISA gives the same bits.
//     NaN keeps its sign and top payload bits and is made quiet, so it cannot round to inf.
//   from_bf16: a 16-bit left shift; exact.
// Matrix products, y[m, n] = sum_k x[m, k] * w[n, k], float32 accumulation
//   version 1 (naive): widen one weight at a time, scalar dot, one thread. The oracle.
//   version 2 (widen): decode. Each row of W is read once per 4 rows of x. A bf16 shifted
//     left by 16 is its float32 value: 32 (AVX-512) or 16 (AVX2) weights are loaded as 32-bit
//     pairs, shifted (even weights) or masked (odd weights), and FMA'd in registers with x
//     split once per call into even and odd halves, so no shuffle is needed. Half the bytes
//     of fp32 weights for the same FMAs: a memory-bound matvec runs up to 2x faster.
//   version 3 (tiled): prefill. Widen a panel of W (up to 4 MiB of float32) and run the
//     blocked fp32 matmul (matmul.cpp) on it; the widening is amortized over all M rows.
//   version 4 (dpbf16): x is rounded to bf16 too, then AVX512-BF16's vdpbf16ps multiplies 16
//     pairs of bf16 and adds them into 16 float32 sums per instruction. This changes the
//     numerics: x loses 16 bits of mantissa (relative error up to 2^-9 per element), and the
//     instruction flushes denormals to zero. Other ISAs run the same arithmetic in scalar
//     (products of two bf16 are exact in float32), so they agree up to the order of the sums.
//     Not picked by auto; ask for it with backend="dpbf16". Oracle: reference.bf16_matmul
//     with x = from_bf16(to_bf16(x)).
//   auto: widen for M <= 32, tiled otherwise (measured, 2 threads, [M, 576] x [1536, 576]^T:
//     widen 2.2x faster at M = 4, 1.5x at 16, even at 32; tiled 1.15x faster at 64, 1.3x at 128).
#include "kernels/bf16.h"
#include "kernels/bf16_bits.h"

#include <cstring>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#include "kernels/decoded_panels.h"
#include "kernels/matmul.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

typedef uint32_t vuint __attribute__((vector_size(kWidth * 4)));

// kWidth bf16 -> kWidth floats.
inline vfloat widen(const uint16_t* p) {
#if defined(__AVX512F__)
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return (vfloat)_mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
#elif defined(__AVX2__)
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
  return (vfloat)_mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
#else
  vint v;
  for (int i = 0; i < kWidth; ++i) v[i] = (int32_t)((uint32_t)p[i] << 16);
  return (vfloat)v;
#endif
}

// The first n (< kWidth) bf16, the other lanes 0; never reads past p + n.
inline vfloat widen_partial(const uint16_t* p, int64_t n) {
  uint16_t t[kWidth] = {};
  std::memcpy(t, p, n * sizeof(uint16_t));
  return widen(t);
}

// Work per thread worth waking it for: ~64k weights.
int64_t min_rows_per_thread(int64_t k) {
  int64_t r = ((int64_t)1 << 16) / k;
  return r < 1 ? 1 : r;
}

// ---- conversion ------------------------------------------------------------------------------

void to_bf16(const Bf16ConvertArgs& p) {
  parallel_for(p.n, (int64_t)1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.bits[i] = round_to_bf16(p.x[i]);
  });
}

void widen_range(const uint16_t* bits, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) store(out + i, widen(bits + i));
  if (i < n) store_partial(out + i, widen_partial(bits + i, n - i), n - i);
}

void from_bf16(const Bf16WidenArgs& p) {
  parallel_for(p.n, (int64_t)1 << 16,
               [&](int64_t i0, int64_t i1) { widen_range(p.bits + i0, p.out + i0, i1 - i0); });
}

// ---- version 1: naive ------------------------------------------------------------------------

void matmul_naive(const Bf16MatmulArgs& p) {
  for (int64_t n = 0; n < p.n; ++n) {
    const uint16_t* w = p.w + n * p.k;
    for (int64_t i = 0; i < p.m; ++i) {
      const float* x = p.x + i * p.k;
      float s = 0.0f;
      for (int64_t j = 0; j < p.k; ++j) s += x[j] * bf16_to_float(w[j]);
      p.y[i * p.n + n] = s;
    }
  }
}

// ---- version 2: widen in registers + FMA -------------------------------------------------------

// x's rows with each full chunk of 2 * kWidth values split into its even-indexed values, then
// its odd ones: the order in which widen_rows takes the weights apart (below). The tail past
// the last full chunk is not copied (widen_rows reads it from x).
thread_local Workspace tl_xsplit;

void split_even_odd(const Bf16MatmulArgs& p, float* xs) {
  const int64_t full = p.k / (2 * kWidth) * (2 * kWidth);
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < full; j += 2 * kWidth)
      for (int v = 0; v < kWidth; ++v) {
        xs[i * p.k + j + v] = p.x[i * p.k + j + 2 * v];
        xs[i * p.k + j + kWidth + v] = p.x[i * p.k + j + 2 * v + 1];
      }
}

// y[0:R, n0:n1] for R (1..4) rows of x (xs: the same rows split by split_even_odd).
// 2 * kWidth bf16 are loaded as kWidth 32-bit pairs (w[2i] in the low half, w[2i+1] in the high
// half): a shift left by 16 gives the even weights as floats, clearing the low half the odd
// ones; no shuffle instruction, and each is FMA'd with the matching half of the split x.
template <int R>
void widen_rows(const Bf16MatmulArgs& p, const float* x, const float* xs, float* y, int64_t n0,
                int64_t n1) {
  const int64_t k = p.k;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * k;
    vfloat a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = zero(), a1[r] = zero();
    int64_t j = 0;
    for (; j + 2 * kWidth <= k; j += 2 * kWidth) {
      vuint pairs;
      std::memcpy(&pairs, w + j, sizeof(pairs));
      vfloat even = (vfloat)(pairs << 16), odd = (vfloat)(pairs & 0xffff0000u);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        a0[r] += even * load(xs + r * k + j);
        a1[r] += odd * load(xs + r * k + j + kWidth);
      }
    }
    if (j + kWidth <= k) {
      vfloat w0 = widen(w + j);
      for (int r = 0; r < R; ++r) a0[r] += w0 * load(x + r * k + j);
      j += kWidth;
    }
    if (j < k) {
      vfloat w0 = widen_partial(w + j, k - j);
      for (int r = 0; r < R; ++r) a1[r] += w0 * load_partial(x + r * k + j, k - j);
    }
    for (int r = 0; r < R; ++r) y[r * p.n + n] = reduce_add(a0[r] + a1[r]);
  }
}

void matmul_widen(const Bf16MatmulArgs& p) {
  float* xs = tl_xsplit.get(p.m * p.k);
  split_even_odd(p, xs);
  // Each thread keeps its rows of W for all groups of 4 rows of x (W stays in its cache).
  parallel_for(p.n, min_rows_per_thread(p.k * ((p.m + 3) / 4)), [&](int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < p.m; i += 4) {
      const float *x = p.x + i * p.k, *s = xs + i * p.k;
      float* y = p.y + i * p.n;
      switch (p.m - i < 4 ? (int)(p.m - i) : 4) {
        case 1: widen_rows<1>(p, x, s, y, n0, n1); break;
        case 2: widen_rows<2>(p, x, s, y, n0, n1); break;
        case 3: widen_rows<3>(p, x, s, y, n0, n1); break;
        default: widen_rows<4>(p, x, s, y, n0, n1); break;
      }
    }
  });
}

// ---- version 3: widened panels + the blocked fp32 matmul ---------------------------------------

void matmul_tiled(const Bf16MatmulArgs& p) {
  matmul_decoded_panels(p.x, p.y, p.m, p.n, p.k, [&](int64_t n0, int64_t nc, float* out) {
    Bf16WidenArgs d;
    d.bits = p.w + n0 * p.k;
    d.out = out;
    d.n = nc * p.k;
    from_bf16(d);
  });
}

// ---- version 4: x in bf16, pair dot products (AVX512-BF16) -------------------------------------

thread_local GrowBuffer<uint16_t> tl_xbf;

// y[0:R, n0:n1] for R rows of xb (x rounded to bf16, rows of kp >= k values, zero padded).
template <int R>
void dpbf16_rows(const Bf16MatmulArgs& p, const uint16_t* xb, int64_t kp, float* y, int64_t n0,
                 int64_t n1) {
  const int64_t k = p.k;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * k;
#if defined(__AVX512BF16__)
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j += 32) {
      __mmask32 mask = k - j >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (k - j)) - 1);
      __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j);  // never past the row
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(xb + r * kp + j), wv);
    }
    for (int r = 0; r < R; ++r) y[r * p.n + n] = _mm512_reduce_add_ps(acc[r]);
#else
    for (int r = 0; r < R; ++r) {
      float s = 0.0f;  // each product of two bf16 is exact in float32, as in vdpbf16ps
      for (int64_t j = 0; j < k; ++j) s += bf16_to_float(xb[r * kp + j]) * bf16_to_float(w[j]);
      y[r * p.n + n] = s;
    }
#endif
  }
}

void matmul_dpbf16(const Bf16MatmulArgs& p) {
  const int64_t kp = (p.k + 31) / 32 * 32;  // one 32-value load past the last pair stays inside
  uint16_t* xb = tl_xbf.get(p.m * kp);
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.k; ++j) xb[i * kp + j] = round_to_bf16(p.x[i * p.k + j]);
    for (int64_t j = p.k; j < kp; ++j) xb[i * kp + j] = 0;
  }
  parallel_for(p.n, min_rows_per_thread(p.k * ((p.m + 3) / 4)), [&](int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < p.m; i += 4) {
      const uint16_t* x = xb + i * kp;
      float* y = p.y + i * p.n;
      switch (p.m - i < 4 ? (int)(p.m - i) : 4) {
        case 1: dpbf16_rows<1>(p, x, kp, y, n0, n1); break;
        case 2: dpbf16_rows<2>(p, x, kp, y, n0, n1); break;
        case 3: dpbf16_rows<3>(p, x, kp, y, n0, n1); break;
        default: dpbf16_rows<4>(p, x, kp, y, n0, n1); break;
      }
    }
  });
}

// ---- auto: version 0 of the binding, the version chosen by shape -------------------------------

constexpr int64_t kWidenMaxRows = 32;

void matmul_auto(const Bf16MatmulArgs& p) {
  if (p.m <= kWidenMaxRows)
    matmul_widen(p);
  else
    matmul_tiled(p);
}

}  // namespace

#if defined(__AVX512BF16__)
#define KG_BF16_PATH "AVX-512 widen-by-shift + FMA decode, widened panels + 8x48 FMA matmul (dpbf16: VDPBF16PS)"
#elif defined(__AVX512F__)
#define KG_BF16_PATH "AVX-512 widen-by-shift + FMA decode, widened panels + 8x48 FMA matmul (dpbf16: scalar)"
#elif defined(__AVX2__)
#define KG_BF16_PATH "AVX2 widen-by-shift + FMA decode, widened panels + 6x16 FMA matmul (dpbf16: scalar)"
#else
#define KG_BF16_PATH "SSE widen + multiply-add decode, widened panels + 6x8 matmul (dpbf16: scalar)"
#endif

extern const Bf16Kernels bf16_kernels = {to_bf16,      from_bf16,     matmul_naive, matmul_widen,
                                         matmul_tiled, matmul_dpbf16, matmul_auto,  KG_BF16_PATH};

KG_END_ISA_NAMESPACE
