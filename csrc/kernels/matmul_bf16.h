// matmul_bf16: C = op(A) @ op(B) (+ bias) (+ C) with A and B stored as bf16 bit patterns
// (uint16) and float32 bias, accumulation and C: the matrix products of mixed-precision
// training (forward, dX and dW of every linear layer). Shapes as matmul.h (one batch entry):
//   op(A): [M, K], stored as A [M, K], or as A [K, M] when trans_a
//   op(B): [K, N], stored as B [K, N], or as B [N, K] when trans_b (nn.Linear's weight)
#pragma once
#include <cstdint>

#include "common/isa.h"
#include "kernels/activation.h"

namespace kg {

struct MatmulBf16Args {
  // Each operand either as bf16 bits (a, b) or as float32 (a_f32, b_f32) that the packing
  // rounds to bf16 (nearest, ties to even: to_bf16's rounding) on the way: the same products
  // without a separate conversion pass. Exactly one of each pair is set.
  const uint16_t* a = nullptr;
  const uint16_t* b = nullptr;
  const float* a_f32 = nullptr;
  const float* b_f32 = nullptr;
  const float* bias = nullptr;
  float* c = nullptr;
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false, accumulate = false;
  // Activation epilogue on each finished tile of C (after bias and accumulate), while it is in
  // cache; at most one of:
  //   act_out [M, N]: act_out = f(C) too, C keeps the pre-activation (a linear layer + f)
  //   act_x [M, N]:   C = C * f'(act_x) (dX of the layer before f: the backward of the pair)
  Activation activation = Activation::relu;
  float* act_out = nullptr;
  const float* act_x = nullptr;
};

using MatmulBf16Fn = void (*)(const MatmulBf16Args&);

struct MatmulBf16Kernels {
  MatmulBf16Fn naive;   // version 1: widen each operand, scalar float32 dot, one thread
  MatmulBf16Fn packed;  // version 6: bf16 pairs packed BLIS-style, VDPBF16PS microkernel
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(MatmulBf16Kernels, matmul_bf16_kernels)
