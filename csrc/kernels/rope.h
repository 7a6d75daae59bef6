// Positions: the sinusoidal table of "Attention Is All You Need" and rotary embeddings (RoPE).
//
// sinusoidal: pe [T, C], position p = offset + t, frequency w_i = base^(-2i/C):
//     pe[t, 2i] = sin(p * w_i),  pe[t, 2i+1] = cos(p * w_i)   (odd C: the last column is a sin)
// rope: x, out [N, T, D] (N = the leading dims, e.g. batch * heads), positions p_t [T],
//   rd = rotary_dim (even, <= D), w_i = base^(-2i/rd) for i < rd/2, angle a = p_t * w_i
//   (negated when inverse), and each pair (x1, x2) of the first rd columns rotates:
//     y1 = x1 cos a - x2 sin a,   y2 = x2 cos a + x1 sin a
//   layout half:        pairs (i, i + rd/2)   (HF / GPT-NeoX rotate_half)
//   layout interleaved: pairs (2i, 2i + 1)    (GPT-J / llama.cpp / Meta's Llama)
//   columns rd..D-1 are copied unchanged. inverse=True is the backward (R(-a) = R(a)^T).
// Angles are formed in float64 (p * w_i) and their sin / cos rounded to float32 only at the
// end, so large positions (1e6) stay accurate.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct SinusoidalArgs {
  float* out = nullptr;  // [T, C]
  int64_t t = 0, c = 0, offset = 0;
  double base = 10000.0;
  double* freq = nullptr;  // the fast version's workspace: (C + 1) / 2 doubles
};

struct RopeArgs {
  const float* x = nullptr;          // [N, T, D]
  float* out = nullptr;              // [N, T, D]
  const int64_t* positions = nullptr;  // [T], or null: offset + t
  int64_t n = 0, t = 0, d = 0, rotary_dim = 0, offset = 0;
  double base = 10000.0;
  bool interleaved = false, inverse = false;
  // The fast version's cos / sin table, allocated by the binding: rope_table_floats(args)
  // floats (per position: cos then (signed) sin, rd floats each for interleaved, rd/2 for half).
  float* table = nullptr;
  double* freq = nullptr;  // and rotary_dim / 2 doubles for the frequencies
};

inline int64_t rope_table_floats(const RopeArgs& a) {
  return a.t * (a.interleaved ? 2 * a.rotary_dim : a.rotary_dim);
}

struct RopeKernels {
  void (*sinusoidal_naive)(const SinusoidalArgs&);  // version 1: std::sin / std::cos per value
  void (*sinusoidal_fast)(const SinusoidalArgs&);   // version 2: SIMD float64 sincos, threads
  void (*rope_naive)(const RopeArgs&);  // version 1: angle and std::cos / std::sin per pair
  void (*rope_fast)(const RopeArgs&);   // version 2: cos / sin table once per call, SIMD, threads
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(RopeKernels, rope_kernels)
