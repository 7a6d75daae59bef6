// softmax / log-softmax over the last axis, forward and backward, float32, row-major.
//
// forward:  y[r, :] = softmax(scale * x[r, :])      (log: log_softmax(scale * x[r, :]))
//   x, y: [rows, cols]. With `causal` the rows form matrices of t rows (t <= cols) and row i
//   of a matrix (i = r % t) keeps only the columns j <= i + (cols - t), bottom-right aligned
//   as with a KV cache; the other columns get exactly 0 (log: -inf).
// backward: given dy and the forward output y, both [rows, cols]
//   softmax:      dx = scale * y * (dy - sum_j dy_j y_j)
//   log-softmax:  dx = scale * (dy - exp(y) * sum_{j: y_j != -inf} dy_j), and dx = 0 where
//                 y = -inf (masked entries)
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct SoftmaxArgs {
  const float* x = nullptr;
  float* y = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t t = 1;  // rows per matrix for the causal mask (1 <= t <= cols)
  float scale = 1.0f;
  bool causal = false;
  bool log = false;  // log-softmax instead of softmax
};

struct SoftmaxBackwardArgs {
  const float* dy = nullptr;
  const float* y = nullptr;  // the forward output (softmax probabilities or log-probabilities)
  float* dx = nullptr;
  int64_t rows = 0, cols = 0;
  float scale = 1.0f;
  bool log = false;
};

using SoftmaxFn = void (*)(const SoftmaxArgs&);
using SoftmaxBackwardFn = void (*)(const SoftmaxBackwardArgs&);

struct SoftmaxKernels {
  SoftmaxFn naive;                    // version 1: three passes per row, one thread
  SoftmaxFn online;                   // version 2: online max+sum pass, then one write pass; SIMD, threads
  SoftmaxBackwardFn backward_naive;   // version 1: two passes per row, one thread
  SoftmaxBackwardFn backward_fused;   // version 2: SIMD dot product, then one write pass; threads
  const char* online_description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(SoftmaxKernels, softmax_kernels)
