// The optimizer step: AdamW (PyTorch's torch.optim.AdamW, exactly), and the global gradient
// norm with clipping (torch.nn.utils.clip_grad_norm_).
//
// adamw, in place on param, m, v (all [n]; grad read-only), with bc1 = 1 - beta1^step and
// bc2 = 1 - beta2^step:
//     param *= 1 - lr * weight_decay
//     m = beta1 * m + (1 - beta1) * g
//     v = beta2 * v + (1 - beta2) * g^2
//     param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// sum_squares: sum of x^2 over several arrays (float64 accumulation).
// scale: x *= s over several arrays.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct AdamwArgs {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  int64_t step = 1;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// A list of arrays seen as one long vector: array k is data[k][0 : sizes[k]].
struct ArrayListArgs {
  float* const* data = nullptr;
  const int64_t* sizes = nullptr;
  int64_t count = 0;
};

struct AdamwKernels {
  void (*adamw_naive)(const AdamwArgs&);  // version 1: the formula per element, one thread
  void (*adamw_fast)(const AdamwArgs&);   // version 2: one fused SIMD pass, threads
  double (*sum_squares_naive)(const ArrayListArgs&);  // version 1: one float64 sum, one thread
  double (*sum_squares_fast)(const ArrayListArgs&);   // version 2: SIMD float64 partials, threads
  void (*scale_naive)(const ArrayListArgs&, float s);
  void (*scale_fast)(const ArrayListArgs&, float s);
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(AdamwKernels, adamw_kernels)
