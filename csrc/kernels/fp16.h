// fp16 -> fp32 for the quantized formats' scales. Include only from csrc/kernels/*.cpp (it
// opens namespace kg::<level>).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/isa.h"
#include "common/simd.h"

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

KG_END_ISA_NAMESPACE
