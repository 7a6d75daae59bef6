// x quantized to int8 per block of 32, as llama.cpp's Q8_0 activations (one pass) or in two
// passes (the remainder on a 256 times finer step): the activations of quant.cpp's version 4
// (vnni) and of the packed int8 path (quant_packed.cpp). Include only from csrc/kernels/*.cpp
// (it opens namespace kg::<level>).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/isa.h"
#include "common/simd.h"
#include "kernels/quant.h"

KG_BEGIN_ISA_NAMESPACE

// Blocks [b0, b1) of x (32 floats each) -> per block: q1 int8 [32] (then q2 int8 [32] when
// Passes == 2), dx, and sx = dx * sum(qx) with qx = q1 (one pass) or 256 q1 + q2 (two).
// The same arithmetic as reference.quantize_activations_q8 / _q8x2, bit for bit.
// qsum, if given, gets the integer sum(qx) of each block (the AVX2 packed path needs it).
template <int Passes>
inline void quantize_x_blocks(const float* x, int64_t b0, int64_t b1, int8_t* qx, float* dx,
                              float* sx, int32_t* qsum = nullptr) {
  for (int64_t bi = b0; bi < b1; ++bi) {
    const float* xb = x + bi * kQuantBlock;
    int8_t* q = qx + bi * kQuantBlock * Passes;
    if (qsum) qsum[bi] = 0;
#if defined(__AVX512F__)
    const __m512 sign = _mm512_set1_ps(-0.0f), half = _mm512_set1_ps(0.5f);
    const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
    __m512 a0 = _mm512_andnot_ps(sign, v0), a1 = _mm512_andnot_ps(sign, v1);
    // inf or NaN anywhere: |x| not < inf (unordered compares true)
    const __m512 inf = _mm512_set1_ps(INFINITY);
    bool finite = !(_mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ));
    if (finite) {
      // roundf: half away from zero. t = trunc(v); v - t is exact; step away where |.| >= 1/2
      auto roundf16 = [&](__m512 v) {
        __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m512 frac = _mm512_andnot_ps(sign, _mm512_sub_ps(v, t));
        __mmask16 up = _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ);
        __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(sign, v));  // +-1 as v
        return _mm512_mask_add_ps(t, up, t, one);
      };
      float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
      float d = amax / 127.0f;
      float inv = d != 0.0f ? 1.0f / d : 0.0f;
      const __m512 iv = _mm512_set1_ps(inv), dv = _mm512_set1_ps(d);
      const __m512 iv2 = _mm512_set1_ps(inv * 256.0f), lim = _mm512_set1_ps(127.0f);
      __m512i sum = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m512 x = h ? v1 : v0;
        const __m512 t = roundf16(_mm512_mul_ps(x, iv));
        __m512i qi = _mm512_cvttps_epi32(t);
        _mm_storeu_si128((__m128i*)(q + 16 * h), _mm512_cvtepi32_epi8(qi));
        if (Passes == 2) {
          const __m512 r = _mm512_fnmadd_ps(t, dv, x);  // x - t d, one rounding
          __m512 t2 = roundf16(_mm512_mul_ps(r, iv2));
          t2 = _mm512_max_ps(_mm512_min_ps(t2, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
          const __m512i q2 = _mm512_cvttps_epi32(t2);
          _mm_storeu_si128((__m128i*)(q + 32 + 16 * h), _mm512_cvtepi32_epi8(q2));
          qi = _mm512_add_epi32(_mm512_slli_epi32(qi, 8), q2);
        }
        sum = _mm512_add_epi32(sum, qi);
      }
      const float dxv = Passes == 2 ? d / 256.0f : d;
      const int32_t total = _mm512_reduce_add_epi32(sum);
      dx[bi] = dxv;
      sx[bi] = dxv * (float)total;
      if (qsum) qsum[bi] = total;
      continue;
    }
#elif defined(__AVX2__)
    // the AVX-512 copy's arithmetic on four ymm: roundf as trunc, then a step away from zero
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 v[4], amax8 = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      const __m256 a = _mm256_andnot_ps(sign, v[i]);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // inf or NaN
      amax8 = _mm256_max_ps(amax8, a);
    }
    if (!_mm256_movemask_ps(bad)) {
      auto roundf8 = [&](__m256 w) {
        __m256 t = _mm256_round_ps(w, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(w, t));
        __m256 up = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
        __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, w));  // +-1 as w
        return _mm256_add_ps(t, _mm256_and_ps(up, one));
      };
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      float d = amax / 127.0f;
      float inv = d != 0.0f ? 1.0f / d : 0.0f;
      const __m256 iv = _mm256_set1_ps(inv), dv = _mm256_set1_ps(d);
      const __m256 iv2 = _mm256_set1_ps(inv * 256.0f), lim = _mm256_set1_ps(127.0f);
      __m256i q1[4], q2[4], sum = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        const __m256 t = roundf8(_mm256_mul_ps(v[i], iv));
        q1[i] = _mm256_cvttps_epi32(t);
        __m256i qi = q1[i];
        if (Passes == 2) {
          const __m256 r = _mm256_fnmadd_ps(t, dv, v[i]);  // x - t d, one rounding
          __m256 t2 = roundf8(_mm256_mul_ps(r, iv2));
          t2 = _mm256_max_ps(_mm256_min_ps(t2, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
          q2[i] = _mm256_cvttps_epi32(t2);
          qi = _mm256_add_epi32(_mm256_slli_epi32(qi, 8), q2[i]);
        }
        sum = _mm256_add_epi32(sum, qi);
      }
      // 32 int32 in [-127, 127] -> 32 int8 in order (the packs interleave 128-bit lanes)
      auto narrow = [](const __m256i* w) {
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(w[0], w[1]), _mm256_packs_epi32(w[2], w[3]));
        return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      };
      _mm256_storeu_si256((__m256i*)q, narrow(q1));
      if (Passes == 2) _mm256_storeu_si256((__m256i*)(q + 32), narrow(q2));
      const int32_t total = simd::reduce_add_epi32(sum);
      const float dxv = Passes == 2 ? d / 256.0f : d;
      dx[bi] = dxv;
      sx[bi] = dxv * (float)total;
      if (qsum) qsum[bi] = total;
      continue;
    }
#else
    bool finite = true;
    for (int j = 0; j < 32; ++j) finite &= std::isfinite(xb[j]);
    if (finite) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::fabs(xb[j]) > amax ? std::fabs(xb[j]) : amax;
      float d = amax / 127.0f;
      float inv = d != 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      for (int j = 0; j < 32; ++j) {
        float t = std::roundf(xb[j] * inv);
        int v = (int)t;
        q[j] = (int8_t)v;
        if (Passes == 2) {
          float r = std::fma(-t, d, xb[j]);  // x - t d, one rounding (as the AVX-512 copy)
          float t2 = std::roundf(r * (inv * 256.0f));
          t2 = t2 > 127.0f ? 127.0f : t2 < -127.0f ? -127.0f : t2;
          q[32 + j] = (int8_t)(int)t2;
          v = v * 256 + (int)t2;
        }
        sum += v;
      }
      const float dxv = Passes == 2 ? d / 256.0f : d;
      dx[bi] = dxv;
      sx[bi] = dxv * (float)sum;
      if (qsum) qsum[bi] = sum;
      continue;
    }
#endif
    std::memset(q, 0, kQuantBlock * Passes);  // NaN / inf: scale NaN, every product NaN
    dx[bi] = NAN;
    sx[bi] = NAN;
  }
}

KG_END_ISA_NAMESPACE
