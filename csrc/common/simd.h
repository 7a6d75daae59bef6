// A small SIMD vocabulary for the kernel files, written once and compiled per level.
//
// `vfloat` is a GCC/Clang vector of kWidth floats: 16 with AVX-512, 8 with AVX2, 4 on the
// baseline (SSE2, or plain scalar code on other CPUs). Arithmetic operators work on it
// directly (a * b + c becomes an FMA where the level has one); the helpers below add the
// pieces the operators lack: unaligned and partial loads, horizontal reductions, and
// vectorised exp / tanh / sigmoid accurate to a few ulp.
//
// Include only from csrc/kernels/*.cpp (it opens namespace kg::<level>).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/isa.h"
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

KG_BEGIN_ISA_NAMESPACE
namespace simd {

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif

typedef float vfloat __attribute__((vector_size(kWidth * 4)));
typedef int32_t vint __attribute__((vector_size(kWidth * 4)));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat broadcast(float x) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_set1_ps(x);
#elif defined(__AVX2__)
  return (vfloat)_mm256_set1_ps(x);
#elif defined(__SSE2__)
  return (vfloat)_mm_set1_ps(x);
#else
  return vfloat{x, x, x, x};
#endif
}
inline vfloat zero() { return vfloat{}; }

// Loads the first n (< kWidth) floats, the other lanes are 0; never reads past p + n.
inline vfloat load_partial(const float* p, int64_t n) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#else
  vfloat v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
// Stores the first n (< kWidth) lanes; never writes past p + n.
inline void store_partial(float* p, vfloat v, int64_t n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#else
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
#endif
}

inline float reduce_add(vfloat v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.0f;
  for (int i = 0; i < kWidth; ++i) s += v[i];
  return s;
#endif
}
inline float reduce_max(vfloat v) {
#if defined(__AVX512F__)
  return _mm512_reduce_max_ps((__m512)v);
#else
  float m = v[0];
  for (int i = 1; i < kWidth; ++i) m = v[i] > m ? v[i] : m;
  return m;
#endif
}

inline vfloat max(vfloat a, vfloat b) { return a > b ? a : b; }
inline vfloat min(vfloat a, vfloat b) { return a < b ? a : b; }
inline vfloat abs(vfloat a) {
  vint bits = (vint)a & 0x7fffffff;
  return (vfloat)bits;
}
inline vfloat copysign(vfloat magnitude, vfloat sign) {
  vint bits = ((vint)magnitude & 0x7fffffff) | ((vint)sign & (int32_t)0x80000000u);
  return (vfloat)bits;
}
inline vfloat sqrt(vfloat x) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX2__)
  return (vfloat)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (vfloat)_mm_sqrt_ps((__m128)x);
#else
  vfloat r;
  for (int i = 0; i < kWidth; ++i) r[i] = std::sqrt(x[i]);
  return r;
#endif
}

// Scalar twins, so loop tails give the same bits as the vector body would.
inline float scalar_exp(float x);
inline float scalar_tanh(float x);

// exp(r) for |r| <= ln2/2 by its Taylor series to r^7 (error below 2e-8 relative before
// rounding): the core of exp() below, shared by the kernels that do their own range reduction.
inline vfloat exp_taylor(vfloat r) {
  vfloat p = broadcast(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p;
}

// exp(x): x = n*ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^7 (error
// below 2e-8 relative before rounding), times 2^n applied in two steps of 2^(n/2) so that
// every n from -150 to 128 stays representable (denormal results come out right).
// exp(x < -104) = 0, exp(x > 88.7228) = inf, NaN stays NaN.
inline vfloat exp(vfloat x) {
  const vfloat kRound = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an int
  const float kMaxX = 88.72283935546875f, kMinX = -104.0f;
  vfloat xc = max(min(x, broadcast(kMaxX)), broadcast(kMinX));
  vfloat t = xc * 1.44269504088896341f + kRound;
  vfloat n = t - kRound;
  vfloat r = xc - n * 0.693145751953125f;  // ln2 split in a high part exact in float ...
  r = r - n * 1.428606765330187045e-06f;   // ... and the rest
  vfloat p = exp_taylor(r);
  vint ni = (vint)t - (vint)kRound;  // n as an integer
  vint half = ni >> 1;
  vfloat scale_a = (vfloat)((half + 127) << 23);
  vfloat scale_b = (vfloat)((ni - half + 127) << 23);
  vfloat result = p * scale_a * scale_b;
  result = x < kMinX ? vfloat{} : result;
  result = x > kMaxX ? broadcast(INFINITY) : result;
  return x == x ? result : x;  // NaN in, NaN out
}

inline vfloat sigmoid(vfloat x) { return 1.0f / (1.0f + exp(-x)); }

// tanh(x): odd Taylor series to x^15 for |x| < 0.5 (error < 1e-8 relative there), and
// 1 - 2 / (exp(2|x|) + 1) with the sign restored elsewhere (no cancellation for |x| >= 0.5).
inline vfloat tanh(vfloat x) {
  vfloat ax = abs(x);
  vfloat big = 1.0f - 2.0f / (exp(ax + ax) + 1.0f);
  vfloat x2 = x * x;
  vfloat p = broadcast(-929569.0f / 638512875.0f);
  p = p * x2 + 21844.0f / 6081075.0f;
  p = p * x2 + -1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 + -17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 + -1.0f / 3.0f;
  vfloat small = x + x * x2 * p;
  return ax < 0.5f ? small : copysign(big, x);
}

inline float scalar_exp(float x) { return exp(broadcast(x))[0]; }
inline float scalar_tanh(float x) { return tanh(broadcast(x))[0]; }
inline float scalar_sigmoid(float x) { return sigmoid(broadcast(x))[0]; }

}  // namespace simd
KG_END_ISA_NAMESPACE
