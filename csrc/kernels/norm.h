// Normalization over the last axis, float32, row-major. x is [rows, cols] (any leading shape
// flattened into rows); weight and bias are [cols]; per-row statistics are [rows].
//
//   layernorm: y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
//              (var is the biased variance, mean((x - mean)^2), as in PyTorch)
//   rmsnorm:   y = x * rstd * weight,                  rstd = 1 / sqrt(mean(x^2) + eps)
//
// Backward (from the saved statistics, with xhat = (x - mean) * rstd for layernorm and
// xhat = x * rstd for rmsnorm, g = dy * weight):
//   layernorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//              dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy
//   rmsnorm:   dx = rstd * (g - xhat * mean(g * xhat)),  dweight = sum over rows of dy * xhat
//
// The sums over rows (dweight, dbias) need scratch memory: `partials` holds
// 2 * cols doubles + 2 * cols floats per thread for up to `max_threads` threads (the binding
// allocates it; the kernel uses at most max_threads threads).
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct LayerNormArgs {
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;  // null: no bias
  float* y = nullptr;
  float* mean = nullptr;  // null: not stored
  float* rstd = nullptr;  // null: not stored
  int64_t rows = 0, cols = 0;
  float eps = 1e-5f;
};

struct LayerNormBackwardArgs {
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* mean = nullptr;
  const float* rstd = nullptr;
  float* dx = nullptr;
  float* dweight = nullptr;
  float* dbias = nullptr;
  int64_t rows = 0, cols = 0;
  void* partials = nullptr;  // see the header comment
  int max_threads = 1;
};

struct RMSNormArgs {
  const float* x = nullptr;
  const float* weight = nullptr;
  float* y = nullptr;
  float* rstd = nullptr;  // null: not stored
  int64_t rows = 0, cols = 0;
  float eps = 1e-6f;
};

struct RMSNormBackwardArgs {
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* rstd = nullptr;
  float* dx = nullptr;
  float* dweight = nullptr;
  int64_t rows = 0, cols = 0;
  void* partials = nullptr;  // see the header comment
  int max_threads = 1;
};

// Bytes of `partials` the backward kernels need for `cols` columns and `threads` threads.
inline int64_t norm_partials_bytes(int64_t cols, int threads) {
  return (int64_t)threads * cols * 2 * (int64_t)(sizeof(double) + sizeof(float));
}

struct NormVersion {
  void (*layernorm)(const LayerNormArgs&);
  void (*layernorm_backward)(const LayerNormBackwardArgs&);
  void (*rmsnorm)(const RMSNormArgs&);
  void (*rmsnorm_backward)(const RMSNormBackwardArgs&);
};

struct NormKernels {
  NormVersion naive;  // version 1: plain loops, float64 sums, one thread
  NormVersion fast;   // version 2: one read of x for the stats, SIMD, threads over rows
  const char* fast_description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(NormKernels, norm_kernels)
