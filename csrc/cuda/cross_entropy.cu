// Fused cross-entropy (loss and dlogits in one kernel) over large vocabularies on the GPU.
//
// Versions as in python/kernelgpt/kernels/cross_entropy.py:
// version 1 "naive": one thread per row: max, sum of exp, then the loss and the gradient.
// version 2 "online": one block per row: each thread keeps an online (max, sum) over its
//            strided columns (one read of the logits for both), merged with warp shuffles and
//            then across warps in shared memory; a second coalesced pass writes the gradient.
// Rows whose target equals ignore_index get loss 0 and gradient 0. A target outside [0, v)
// (the Python side rejects those first) gives loss NaN and never reads out of bounds.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

struct CrossEntropyArgs {
  const float* logits;
  const int64_t* targets;
  float* losses;
  float* dlogits;
  const float* row_weight;
  int64_t weight_stride, n, v, ignore_index;
};

// Writes the loss and gradient of row r from its max and sum of exp(logit - max).
__device__ inline void finish_row(const CrossEntropyArgs& p, int64_t r, float mx, float sum,
                                  int64_t j0, int64_t dj) {
  const float* x = p.logits + r * p.v;
  if (mx == INFINITY) sum = NAN;  // +inf - +inf: the row is NaN, as on the CPU
  int64_t target = p.targets[r];
  bool ignored = target == p.ignore_index;
  bool valid = !ignored && target >= 0 && target < p.v;
  if (p.losses && j0 == 0)
    p.losses[r] = ignored ? 0.0f : (valid ? mx + logf(sum) - x[target] : NAN);
  if (!p.dlogits) return;
  float w = ignored ? 0.0f : p.row_weight[r * p.weight_stride];
  float scale = w / sum;
  float* g = p.dlogits + r * p.v;
  for (int64_t j = j0; j < p.v; j += dj)
    g[j] = ignored ? 0.0f : expf(x[j] - mx) * scale - (j == target ? w : 0.0f);
}

__global__ void cross_entropy_naive(CrossEntropyArgs p) {
  int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= p.n) return;
  const float* x = p.logits + r * p.v;
  float mx = -INFINITY;
  for (int64_t j = 0; j < p.v; ++j) mx = fmaxf(mx, x[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < p.v; ++j) sum += expf(x[j] - mx);
  finish_row(p, r, mx, sum, 0, 1);
}

__global__ void cross_entropy_online(CrossEntropyArgs p) {
  __shared__ float sh_m[32];
  __shared__ float sh_s[32];
  int64_t r = blockIdx.x;
  const float* x = p.logits + r * p.v;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < p.v; j += blockDim.x) online_add(m, s, x[j]);
  block_online_merge(m, s, sh_m, sh_s);
  finish_row(p, r, m, s, threadIdx.x, blockDim.x);
}

void cross_entropy(int version, const float* logits, const int64_t* targets, float* losses,
                   float* dlogits, const float* row_weight, int64_t weight_stride, int64_t n,
                   int64_t v, int64_t ignore_index, uintptr_t stream) {
  CrossEntropyArgs p{logits, targets, losses, dlogits, row_weight, weight_stride, n, v,
                     ignore_index};
  if (version == 1) {
    cross_entropy_naive<<<(unsigned)((n + 127) / 128), 128, 0, as_stream(stream)>>>(p);
  } else {
    if (n > 0x7fffffff) throw std::runtime_error("cross_entropy (cuda): too many rows");
    int threads = v >= 4096 ? 1024 : (v >= 256 ? 256 : 64);
    cross_entropy_online<<<(unsigned)n, threads, 0, as_stream(stream)>>>(p);
  }
  check(cudaGetLastError(), "cross_entropy (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
