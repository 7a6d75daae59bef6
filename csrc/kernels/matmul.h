// matmul: C[b] = op(A[b]) @ op(B[b]) (+ bias) (+ C[b] if accumulate), float32, row-major.
//   op(A): [M, K], stored as A [M, K], or as A [K, M] when trans_a
//   op(B): [K, N], stored as B [K, N], or as B [N, K] when trans_b (nn.Linear's weight)
//   bias: [N] or null; batch strides in elements (0 broadcasts one matrix to every batch).
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct MatmulArgs {
  const float* a = nullptr;
  const float* b = nullptr;
  const float* bias = nullptr;
  float* c = nullptr;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  int64_t batch_stride_a = 0, batch_stride_b = 0, batch_stride_c = 0;
  bool trans_a = false, trans_b = false, accumulate = false;
};

using MatmulFn = void (*)(const MatmulArgs&);

// out = base + B @ A with a small inner dimension r: base, out [M, N], B [M, r], A [r, N]
// (LoRA's merged weight W + s B A, the scale folded into B). One pass over the big matrices:
// base read and out written once, each out[i, j] = base[i, j] + B[i, 0] A[0, j] + ... in that
// order; A stays in cache. Memory-bound, so one version; threads split the rows.
struct LowrankArgs {
  const float* base = nullptr;
  const float* b = nullptr;
  const float* a = nullptr;
  float* out = nullptr;
  int64_t m = 0, n = 0, r = 0;
};

struct MatmulKernels {
  MatmulFn naive;    // version 1: the textbook triple loop, one thread
  MatmulFn blocked;  // version 5: BLIS-style packing + register-blocked SIMD microkernel, threads
  const char* blocked_description;
  void (*lowrank_add)(const LowrankArgs&);
};

}  // namespace kg

KG_DECLARE_PER_ISA(MatmulKernels, matmul_kernels)
