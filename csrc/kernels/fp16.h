// fp16 <-> fp32: the quantized formats' scales, and the half-precision KV cache (its K and V
// are stored as fp16 and widened to fp32 before any arithmetic). Include only from
// csrc/kernels/*.cpp (it opens namespace kg::<level>).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/isa.h"
#include "common/simd.h"
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

KG_BEGIN_ISA_NAMESPACE

// fp16 -> fp32 (exact: every half is a float). F16C where the level has it.
inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
  } else {
    float f = (float)man * 5.9604644775390625e-08f;  // zero or subnormal: man * 2^-24
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

inline float half_to_float(uint16_t h) { return half_to_float(reinterpret_cast<const uint8_t*>(&h)); }

// fp32 -> fp16, rounded to nearest even (as numpy's astype(np.float16) and F16C's vcvtps2ph):
// above the largest half (65504, from 65520 on) it is inf, below 2^-14 a subnormal or 0.
inline uint16_t float_to_half(float f) {
#if defined(__F16C__)
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= (143u << 23))                      // >= 2^16: inf (NaN stays a quiet NaN)
    return static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (x < (113u << 23)) {                     // < 2^-14: subnormal or zero. Adding 0.5 puts
    const uint32_t magic_bits = 126u << 23;   // the half's last bit (2^-24) at the float's
    float a, magic;                           // last bit, and the FPU rounds to nearest even
    std::memcpy(&a, &x, 4);
    std::memcpy(&magic, &magic_bits, 4);
    a += magic;
    std::memcpy(&x, &a, 4);
    return static_cast<uint16_t>(sign | (x - magic_bits));
  }
  const uint32_t odd = (x >> 13) & 1u;        // round to nearest even on the 13 dropped bits
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;  // (a carry may reach inf)
  return static_cast<uint16_t>(sign | (x >> 13));
#endif
}

// n halves -> floats / n floats -> halves (vectorized where the level has F16C).
inline void halves_to_floats(const uint16_t* h, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
#endif
  for (; i < n; ++i) out[i] = half_to_float(h[i]);
}

inline void floats_to_halves(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

KG_END_ISA_NAMESPACE
