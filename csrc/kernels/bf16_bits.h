// One bf16 value <-> float32, on the bit pattern (bf16 is float32's top 16 bits). Shared by the
// kernels that convert (bf16.cpp) and those that round while packing (matmul_bf16.cpp), so
// both round identically. Inside the per-ISA namespace: include from csrc/kernels only.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/isa.h"

KG_BEGIN_ISA_NAMESPACE

// Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, keep the top 16 bits.
// NaN keeps its sign and top payload bits and is made quiet, so it cannot round to inf.
inline uint16_t round_to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);  // quiet NaN
  return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline float bf16_to_float(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

KG_END_ISA_NAMESPACE
