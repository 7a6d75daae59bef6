// Q8_0 / Q4_1 quantized weights: dequantize and y = x @ W^T.  Formats and shapes in quant.h.
//
// Dequantize
//   version 1 (naive): block by block, weight by weight, one thread.
//   version 2 (fast): a block's 32 integers are widened to float vectors in registers
//     (AVX-512: two zmm; AVX2: four ymm), scaled with one FMA each; threads take row ranges.
// Matrix products, y[m, n] = sum_k x[m, k] * w[n, k]
//   version 1 (naive): dequantize one row of W into a float buffer, dot it with each row of
//     x, one thread. What every other version must agree with.
//   version 2 (fused): decode (M = 1, or a few sequences at once). Never materializes W:
//     each block is widened to floats in registers and multiplied with up to 4 rows of x
//     while in registers, so W is read from memory once per 4 rows of x. The scale is
//     factored out of the block: sum_j (d q_j + m) x_j = d * sum_j q_j x_j + m * sum_j x_j,
//     where the block sums of x are computed once per call. Threads take ranges of rows of W.
//   version 3 (tiled): prefill (M large). Dequantize a panel of W rows (up to 4 MiB of
//     float32) and run the blocked fp32 matmul (matmul.cpp) on it: the dequantization is
//     paid once per panel and amortized over all M rows of x, the multiply runs at the
//     microkernel's FMA rate instead of re-decoding W for every 4 rows.
//   version 4 (vnni): llama.cpp's scheme. x is quantized to int8 per block of 32
//     (dx = max|x| / 127, qx = round(x / dx)); then a block's contribution is the integer
//     dot sum_j q_j qx_j times dw * dx (+ m * dx * sum_j qx_j for Q4_1). With AVX512-VNNI
//     one vpdpbusd does 32 int8 multiply-adds of a whole block; on aarch64 two SDOT
//     (vdotq_s32, dotprod) do, or with i8mm four SMMLA (vmmlaq_s32) do 2 weight rows x 2 rows
//     of x; with AVX2 one VPMADDUBSW + VPMADDWD; elsewhere the same integer arithmetic runs
//     in plain loops (identical integers, so every ISA agrees up to the order of the float
//     sums). Costs ~1% relative error from quantizing x (measured in
//     tests/test_quant.py), so `auto` does not pick it; ask for it with backend="vnni".
//   auto: fused for M <= 16, tiled otherwise (measured here, one thread, SmolLM2's shapes:
//     fused wins up to M = 16 by 5-30%, tiled from M = 32 on by 1.1-1.6x).
#include "kernels/quant.h"

#if defined(__ARM_FEATURE_DOTPROD) || defined(__ARM_FEATURE_MATMUL_INT8)
#include <arm_neon.h>
#endif

#include <cmath>
#include <cstring>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#include "kernels/decoded_panels.h"
#include "kernels/fp16.h"
#include "kernels/quantize_x.h"
#include "kernels/matmul.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

inline int64_t row_bytes(QuantType t, int64_t k) { return k / kQuantBlock * quant_block_bytes(t); }

// ---- dequantize ----------------------------------------------------------------------------

// version 1: weight by weight.
void dequantize_naive(const DequantizeArgs& p) {
  const int64_t blocks = p.rows * (p.cols / kQuantBlock), bb = quant_block_bytes(p.type);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = p.raw + b * bb;
    float* out = p.out + b * kQuantBlock;
    float d = half_to_float(blk);
    if (p.type == QuantType::q8_0) {
      for (int j = 0; j < 32; ++j) out[j] = d * (float)(int8_t)blk[2 + j];
    } else {
      float m = half_to_float(blk + 2);
      for (int j = 0; j < 16; ++j) {
        out[j] = d * (float)(blk[4 + j] & 15) + m;
        out[j + 16] = d * (float)(blk[4 + j] >> 4) + m;
      }
    }
  }
}

constexpr int kV = 32 / kWidth;  // float vectors per block

// The 32 integers of a block as kV float vectors (weights 0..31 in order).
inline void widen_q8_0(const uint8_t* qs, vfloat* q) {
#if defined(__AVX512F__)
  q[0] = (vfloat)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)qs)));
  q[1] = (vfloat)_mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qs + 16))));
#elif defined(__AVX2__)
  for (int v = 0; v < 4; ++v)
    q[v] = (vfloat)_mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qs + 8 * v))));
#else
  alignas(64) float t[32];
  for (int j = 0; j < 32; ++j) t[j] = (float)(int8_t)qs[j];
  for (int v = 0; v < kV; ++v) q[v] = load(t + v * kWidth);
#endif
}

inline void widen_q4_1(const uint8_t* nib, vfloat* q) {
#if defined(__AVX512F__)
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)nib));
  q[0] = (vfloat)_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
  q[1] = (vfloat)_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
#elif defined(__AVX2__)
  __m128i bytes = _mm_loadu_si128((const __m128i*)nib);
  __m256i v0 = _mm256_cvtepu8_epi32(bytes), v1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
  __m256i low = _mm256_set1_epi32(15);
  q[0] = (vfloat)_mm256_cvtepi32_ps(_mm256_and_si256(v0, low));
  q[1] = (vfloat)_mm256_cvtepi32_ps(_mm256_and_si256(v1, low));
  q[2] = (vfloat)_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4));
  q[3] = (vfloat)_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4));
#else
  alignas(64) float t[32];
  for (int j = 0; j < 16; ++j) {
    t[j] = (float)(nib[j] & 15);
    t[j + 16] = (float)(nib[j] >> 4);
  }
  for (int v = 0; v < kV; ++v) q[v] = load(t + v * kWidth);
#endif
}

// Rows [r0, r1) of a [rows, cols] matrix.
void dequantize_rows(const DequantizeArgs& p, int64_t r0, int64_t r1) {
  const int64_t nb = p.cols / kQuantBlock, bb = quant_block_bytes(p.type);
  for (int64_t b = r0 * nb; b < r1 * nb; ++b) {
    const uint8_t* blk = p.raw + b * bb;
    float* out = p.out + b * kQuantBlock;
    vfloat q[kV];
    vfloat d = broadcast(half_to_float(blk));
    if (p.type == QuantType::q8_0) {
      widen_q8_0(blk + 2, q);
      for (int v = 0; v < kV; ++v) store(out + v * kWidth, d * q[v]);
    } else {
      vfloat m = broadcast(half_to_float(blk + 2));
      widen_q4_1(blk + 4, q);
      for (int v = 0; v < kV; ++v) store(out + v * kWidth, d * q[v] + m);
    }
  }
}

// Work per thread worth waking it for: ~64k weights (a few microseconds).
#ifndef KG_QUANT_MIN_WEIGHTS_PER_THREAD
#define KG_QUANT_MIN_WEIGHTS_PER_THREAD 65536
#endif
int64_t min_rows_per_thread(int64_t k) {
  int64_t r = (int64_t)KG_QUANT_MIN_WEIGHTS_PER_THREAD / k;
  return r < 1 ? 1 : r;
}

void dequantize_fast(const DequantizeArgs& p) {
  parallel_for(p.rows, min_rows_per_thread(p.cols),
               [&](int64_t r0, int64_t r1) { dequantize_rows(p, r0, r1); });
}

// ---- version 1: naive matmul ---------------------------------------------------------------

thread_local Workspace tl_row, tl_xsum;

void matmul_naive(const QuantMatmulArgs& p) {
  float* w = tl_row.get(p.k);
  for (int64_t n = 0; n < p.n; ++n) {
    DequantizeArgs row;
    row.raw = p.w + n * row_bytes(p.type, p.k);
    row.out = w;
    row.rows = 1;
    row.cols = p.k;
    row.type = p.type;
    dequantize_naive(row);
    for (int64_t i = 0; i < p.m; ++i) {
      const float* x = p.x + i * p.k;
      float s = 0.0f;
      for (int64_t j = 0; j < p.k; ++j) s += x[j] * w[j];
      p.y[i * p.n + n] = s;
    }
  }
}

// ---- version 2: fused decode-and-dot -------------------------------------------------------

// y[0:R, n0:n1] for R (1..4) rows of x; xsum [R, K/32]: block sums of x (Q4_1 only).
template <int R, QuantType T>
void fused_rows(const QuantMatmulArgs& p, const float* x, float* y, const float* xsum, int64_t n0,
                int64_t n1) {
  const int64_t nb = p.k / kQuantBlock, bb = quant_block_bytes(T), rb = nb * bb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* blk = p.w + n * rb;
    vfloat acc[R];
    float macc[R];
    for (int r = 0; r < R; ++r) acc[r] = zero(), macc[r] = 0.0f;
    for (int64_t b = 0; b < nb; ++b, blk += bb) {
      vfloat q[kV];
      vfloat d = broadcast(half_to_float(blk));
      if (T == QuantType::q8_0) {
        widen_q8_0(blk + 2, q);
      } else {
        widen_q4_1(blk + 4, q);
        float m = half_to_float(blk + 2);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) macc[r] += m * xsum[r * nb + b];
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const float* xb = x + r * p.k + b * kQuantBlock;
        vfloat t = q[0] * load(xb);
#pragma GCC unroll 8
        for (int v = 1; v < kV; ++v) t += q[v] * load(xb + v * kWidth);
        acc[r] += d * t;
      }
    }
    for (int r = 0; r < R; ++r) y[r * p.n + n] = reduce_add(acc[r]) + macc[r];
  }
}

template <QuantType T>
void fused_dispatch(int rows, const QuantMatmulArgs& p, const float* x, float* y,
                    const float* xsum, int64_t n0, int64_t n1) {
  switch (rows) {
    case 1: fused_rows<1, T>(p, x, y, xsum, n0, n1); break;
    case 2: fused_rows<2, T>(p, x, y, xsum, n0, n1); break;
    case 3: fused_rows<3, T>(p, x, y, xsum, n0, n1); break;
    default: fused_rows<4, T>(p, x, y, xsum, n0, n1); break;
  }
}

void matmul_fused(const QuantMatmulArgs& p) {
  const int64_t nb = p.k / kQuantBlock;
  float* xsum = nullptr;
  if (p.type == QuantType::q4_1) {  // block sums of x, once per call
    xsum = tl_xsum.get(p.m * nb);
    for (int64_t i = 0; i < p.m * nb; ++i) {
      vfloat s = zero();
      for (int v = 0; v < kV; ++v) s += load(p.x + i * kQuantBlock + v * kWidth);
      xsum[i] = reduce_add(s);
    }
  }
  // Each thread keeps its rows of W for all groups of 4 rows of x (W stays in its cache).
  parallel_for(p.n, min_rows_per_thread(p.k * ((p.m + 3) / 4)), [&](int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < p.m; i += 4) {
      int rows = p.m - i < 4 ? (int)(p.m - i) : 4;
      const float* x = p.x + i * p.k;
      float* y = p.y + i * p.n;
      const float* xs = xsum ? xsum + i * nb : nullptr;
      if (p.type == QuantType::q8_0)
        fused_dispatch<QuantType::q8_0>(rows, p, x, y, xs, n0, n1);
      else
        fused_dispatch<QuantType::q4_1>(rows, p, x, y, xs, n0, n1);
    }
  });
}

// ---- version 3: dequantized panels + the blocked fp32 matmul -------------------------------

void matmul_tiled(const QuantMatmulArgs& p) {
  const int64_t rb = row_bytes(p.type, p.k);
  matmul_decoded_panels(p.x, p.y, p.m, p.n, p.k, [&](int64_t n0, int64_t nc, float* out) {
    DequantizeArgs d;
    d.raw = p.w + n0 * rb;
    d.out = out;
    d.rows = nc;
    d.cols = p.k;
    d.type = p.type;
    dequantize_fast(d);
  });
}

// ---- version 4: int8 activations, integer block dots (VNNI) --------------------------------

thread_local GrowBuffer<int8_t> tl_qx;

// sum_j q_j * qx_j over one block: exact in int32 (|sum| <= 32 * 128 * 127).
inline int32_t block_dot(const uint8_t* blk, QuantType t, const int8_t* qx) {
#if defined(__ARM_FEATURE_DOTPROD)
  // aarch64 dotprod: SDOT adds 4 int8 x int8 products into each of 4 int32 lanes; Q4_1's
  // nibbles (0..15) are signed bytes as they are
  int8x16_t x0 = vld1q_s8(qx), x1 = vld1q_s8(qx + 16), w0, w1;
  if (t == QuantType::q8_0) {
    w0 = vld1q_s8((const int8_t*)blk + 2), w1 = vld1q_s8((const int8_t*)blk + 18);
  } else {
    uint8x16_t nib = vld1q_u8(blk + 4);
    w0 = vreinterpretq_s8_u8(vandq_u8(nib, vdupq_n_u8(15)));
    w1 = vreinterpretq_s8_u8(vshrq_n_u8(nib, 4));
  }
  return vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1));
#elif defined(__AVX2__)
  // AVX2: VPMADDUBSW (unsigned x signed bytes, pairs into int16) then VPMADDWD by ones. Q4_1's
  // nibbles are unsigned as they are (a pair <= 2 x 15 x 127); Q8_0's signed weights go in as
  // |q| with x's sign flipped where q < 0 (a pair <= 2 x 128 x 127: no saturation either way).
  const __m256i xv = _mm256_loadu_si256((const __m256i*)qx);
  __m256i p;
  if (t == QuantType::q8_0) {
    const __m256i q = _mm256_loadu_si256((const __m256i*)(blk + 2));
    p = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(xv, q));
  } else {
    const __m128i nib = _mm_loadu_si128((const __m128i*)(blk + 4));
    const __m128i lo = _mm_and_si128(nib, _mm_set1_epi8(15));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(nib, 4), _mm_set1_epi8(15));
    p = _mm256_maddubs_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1), xv);
  }
  return reduce_add_epi32(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
  int32_t s = 0;
  if (t == QuantType::q8_0) {
    for (int j = 0; j < 32; ++j) s += (int32_t)(int8_t)blk[2 + j] * qx[j];
  } else {
    for (int j = 0; j < 16; ++j)
      s += (int32_t)(blk[4 + j] & 15) * qx[j] + (int32_t)(blk[4 + j] >> 4) * qx[j + 16];
  }
  return s;
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
// One block's integer dot as 8 int32 partial sums (added into acc): vpdpbusd multiplies
// unsigned bytes by signed bytes, so Q4_1's nibbles go in as they are and Q8_0's signed
// weights go in as |q| with qx's sign flipped where q < 0.
template <QuantType T>
inline __m256i block_dot_vnni(const uint8_t* blk, const int8_t* qx) {
  __m256i xv = _mm256_loadu_si256((const __m256i*)qx);
  __m256i wv;
  if (T == QuantType::q8_0) {
    __m256i q = _mm256_loadu_si256((const __m256i*)(blk + 2));
    __mmask32 neg = _mm256_movepi8_mask(q);
    xv = _mm256_mask_sub_epi8(xv, neg, _mm256_setzero_si256(), xv);
    wv = _mm256_abs_epi8(q);
  } else {
    __m128i nib = _mm_loadu_si128((const __m128i*)(blk + 4));
    __m128i lo = _mm_and_si128(nib, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(nib, 4), _mm_set1_epi8(15));
    wv = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
  }
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, xv);
}
#endif

// y[0:R, n0:n1] for R rows of quantized x.
template <int R, QuantType T>
void vnni_rows(const QuantMatmulArgs& p, const int8_t* qx, const float* dx, const float* sx,
               float* y, int64_t n0, int64_t n1) {
  const int64_t nb = p.k / kQuantBlock, bb = quant_block_bytes(T), rb = nb * bb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * rb;
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
#else
    float acc[R];
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
#endif
    float macc[R];
    for (int r = 0; r < R; ++r) macc[r] = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bb;
      float d = half_to_float(blk);
      float m = T == QuantType::q4_1 ? half_to_float(blk + 2) : 0.0f;
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        int64_t xb = r * nb + b;  // block index into qx / dx / sx
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        __m256 dot = _mm256_cvtepi32_ps(block_dot_vnni<T>(blk, qx + xb * kQuantBlock));
        acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d * dx[xb]), acc[r]);
#else
        acc[r] += d * dx[xb] * (float)block_dot(blk, T, qx + xb * kQuantBlock);
#endif
        if (T == QuantType::q4_1) macc[r] += m * sx[xb];
      }
    }
    for (int r = 0; r < R; ++r) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      y[r * p.n + n] = _mm_cvtss_f32(h) + macc[r];
#else
      y[r * p.n + n] = acc[r] + macc[r];
#endif
    }
  }
}

#if defined(__ARM_FEATURE_MATMUL_INT8)
// aarch64 i8mm: SMMLA multiplies a 2x8 int8 matrix by an 8x2 one into a 2x2 int32 tile, so one
// instruction covers 8 weights of 2 rows of W against 2 rows of x. The 8 weights k = 8 part ..
// 8 part + 7 of a block as SMMLA takes them (Q4_1: low nibbles are k 0-15, high ones 16-31).
template <QuantType T>
inline int8x8_t block_part(const uint8_t* blk, int part) {
  if (T == QuantType::q8_0) return vld1_s8((const int8_t*)blk + 2 + 8 * part);
  uint8x8_t nib = vld1_u8(blk + 4 + 8 * (part & 1));
  return vreinterpret_s8_u8(part < 2 ? vand_u8(nib, vdup_n_u8(15)) : vshr_n_u8(nib, 4));
}

// {x0.w0, x0.w1, x1.w0, x1.w1} over one block, exact in int32: four SMMLA.
template <QuantType T>
inline int32x4_t block_dot_2x2(const uint8_t* w0, const uint8_t* w1, const int8_t* x0,
                               const int8_t* x1) {
  int32x4_t acc = vdupq_n_s32(0);
#pragma GCC unroll 4
  for (int part = 0; part < 4; ++part) {
    int8x16_t a = vcombine_s8(vld1_s8(x0 + 8 * part), vld1_s8(x1 + 8 * part));
    int8x16_t b = vcombine_s8(block_part<T>(w0, part), block_part<T>(w1, part));
    acc = vmmlaq_s32(acc, a, b);
  }
  return acc;
}

// y[0:2, n0:n1] for 2 rows of quantized x, W rows in pairs; the same float arithmetic as
// vnni_rows (its integers are the same), so every level gives the same y.
template <QuantType T>
void smmla_rows(const QuantMatmulArgs& p, const int8_t* qx, const float* dx, const float* sx,
                float* y, int64_t n0, int64_t n1) {
  const int64_t nb = p.k / kQuantBlock, bb = quant_block_bytes(T), rb = nb * bb;
  int64_t n = n0;
  for (; n + 1 < n1; n += 2) {
    const uint8_t* row0 = p.w + n * rb;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, macc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t *w0 = row0 + b * bb, *w1 = w0 + rb;
      int32x4_t dot = block_dot_2x2<T>(w0, w1, qx + b * kQuantBlock, qx + (nb + b) * kQuantBlock);
      float d0 = half_to_float(w0), d1 = half_to_float(w1), x0 = dx[b], x1 = dx[nb + b];
      acc[0] += d0 * x0 * (float)vgetq_lane_s32(dot, 0);
      acc[1] += d1 * x0 * (float)vgetq_lane_s32(dot, 1);
      acc[2] += d0 * x1 * (float)vgetq_lane_s32(dot, 2);
      acc[3] += d1 * x1 * (float)vgetq_lane_s32(dot, 3);
      if (T == QuantType::q4_1) {
        float m0 = half_to_float(w0 + 2), m1 = half_to_float(w1 + 2);
        macc[0] += m0 * sx[b], macc[1] += m1 * sx[b];
        macc[2] += m0 * sx[nb + b], macc[3] += m1 * sx[nb + b];
      }
    }
    y[n] = acc[0] + macc[0], y[n + 1] = acc[1] + macc[1];
    y[p.n + n] = acc[2] + macc[2], y[p.n + n + 1] = acc[3] + macc[3];
  }
  if (n < n1) vnni_rows<2, T>(p, qx, dx, sx, y, n, n1);
}
#endif

template <QuantType T>
void vnni_dispatch(int rows, const QuantMatmulArgs& p, const int8_t* qx, const float* dx,
                   const float* sx, float* y, int64_t n0, int64_t n1) {
#if defined(__ARM_FEATURE_MATMUL_INT8)
  if (rows >= 2) {  // pairs of x rows on SMMLA, a third one on its own
    const int64_t nb = p.k / kQuantBlock;
    smmla_rows<T>(p, qx, dx, sx, y, n0, n1);
    if (rows == 3)
      vnni_rows<1, T>(p, qx + 2 * p.k, dx + 2 * nb, sx + 2 * nb, y + 2 * p.n, n0, n1);
    else if (rows >= 4)
      smmla_rows<T>(p, qx + 2 * p.k, dx + 2 * nb, sx + 2 * nb, y + 2 * p.n, n0, n1);
    return;
  }
#endif
  switch (rows) {
    case 1: vnni_rows<1, T>(p, qx, dx, sx, y, n0, n1); break;
    case 2: vnni_rows<2, T>(p, qx, dx, sx, y, n0, n1); break;
    case 3: vnni_rows<3, T>(p, qx, dx, sx, y, n0, n1); break;
    default: vnni_rows<4, T>(p, qx, dx, sx, y, n0, n1); break;
  }
}

void matmul_vnni(const QuantMatmulArgs& p) {
  const int64_t nb = p.k / kQuantBlock;
  int8_t* qx = tl_qx.get(p.m * p.k);
  float* scales = tl_xsum.get(2 * p.m * nb);
  float *dx = scales, *sx = scales + p.m * nb;
  quantize_x_blocks<1>(p.x, 0, p.m * nb, qx, dx, sx);  // kernels/quantize_x.h
  parallel_for(p.n, min_rows_per_thread(p.k * ((p.m + 3) / 4)), [&](int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < p.m; i += 4) {
      int rows = p.m - i < 4 ? (int)(p.m - i) : 4;
      const int8_t* q = qx + i * p.k;
      const float *d = dx + i * nb, *s = sx + i * nb;
      float* y = p.y + i * p.n;
      if (p.type == QuantType::q8_0)
        vnni_dispatch<QuantType::q8_0>(rows, p, q, d, s, y, n0, n1);
      else
        vnni_dispatch<QuantType::q4_1>(rows, p, q, d, s, y, n0, n1);
    }
  });
}

// ---- auto: version 0 of the binding, the version chosen by shape -----------------------------

constexpr int64_t kFusedMaxRows = 16;

void matmul_auto(const QuantMatmulArgs& p) {
  if (p.m <= kFusedMaxRows)
    matmul_fused(p);
  else
    matmul_tiled(p);
}

}  // namespace

#if defined(__AVX512VNNI__)
#define KG_QUANT_PATH "AVX-512 fused decode (vnni: VPDPBUSD), dequantized panels + 8x48 FMA matmul"
#elif defined(__AVX512F__)
#define KG_QUANT_PATH "AVX-512 fused decode (vnni: VPMADDUBSW), dequantized panels + 8x48 FMA matmul"
#elif defined(__AVX2__)
#define KG_QUANT_PATH "AVX2 fused decode (vnni: VPMADDUBSW), dequantized panels + 6x16 FMA matmul"
#else
#define KG_QUANT_PATH "SSE fused decode (vnni: scalar int8), dequantized panels + 6x8 matmul"
#endif

extern const QuantKernels quant_kernels = {dequantize_naive, dequantize_fast, matmul_naive,
                                           matmul_fused,     matmul_tiled,    matmul_vnni,
                                           matmul_auto,      KG_QUANT_PATH};

KG_END_ISA_NAMESPACE
