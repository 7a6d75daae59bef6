// cross-entropy: loss_i = -log softmax(logits[i, :])[targets[i]] = logsumexp(logits[i]) - logits[i, t_i]
// and its gradient d loss / d logits[i, :] = w_i * (softmax(logits[i, :]) - onehot(t_i)).
//   logits: [n, v] float32; targets: [n] int64, each in [0, v) or == ignore_index (validated by
//   the binding). Rows whose target is ignore_index get loss 0 and an all-zero gradient.
//   The gradient weight is w_i = grad_scale * grad_scale_rows[i] (or just grad_scale when
//   grad_scale_rows is null): 1/count for a mean, 1 for a sum, times the incoming dloss.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct CrossEntropyArgs {
  const float* logits = nullptr;
  const int64_t* targets = nullptr;
  int64_t n = 0, v = 0;
  int64_t ignore_index = -100;
  float* losses = nullptr;   // [n] per-row losses (0 for ignored rows), or null: not wanted
  float* dlogits = nullptr;  // [n, v] gradient, or null: not wanted
  float grad_scale = 1.0f;
  const float* grad_scale_rows = nullptr;  // [n] or null
};

using CrossEntropyFn = void (*)(const CrossEntropyArgs&);

struct CrossEntropyKernels {
  CrossEntropyFn naive;   // version 1: three passes per row (max, sum, gradient), one thread
  CrossEntropyFn online;  // version 2: one online max+sum pass, one gradient pass; SIMD, threads
  const char* online_description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(CrossEntropyKernels, cross_entropy_kernels)
