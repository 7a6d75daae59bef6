// AdamW step, global gradient norm and clipping on the GPU (formulas in ops.adamw_step).
//
// adamw version 1 "naive" (python/kernelgpt/kernels/adamw.py; the only one on the GPU: one read
//            and write of each of param, m, v): one thread per element in a grid-stride loop,
//            torch.optim.AdamW's arithmetic order.
// grad_norm: squares summed in float64 in two fixed-order stages (no atomics, so the same
//            gradients give the same bits every run): a fixed grid of blocks writes one
//            partial sum each (grid-stride loop, then a block reduction), and one block adds
//            the partials in order into the running total (arrays are added one by one).
// clip_scale reads the total on the device, so clipping needs no host round trip.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bc1, float bc2) {
  float step_size = lr / bc1, sqrt_bc2 = sqrtf(bc2);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float g = grad[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    float p = param[i] * (1.0f - lr * weight_decay);
    param[i] = p - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    m[i] = mi;
    v[i] = vi;
  }
}

void adamw(int, float* param, const float* grad, float* m, float* v, int64_t n, float lr,
           float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
           uintptr_t stream) {
  adamw_kernel<<<grid_for(n, 256), 256, 0, as_stream(stream)>>>(param, grad, m, v, n, lr, beta1,
                                                                  beta2, eps, weight_decay, bc1,
                                                                  bc2);
  check(cudaGetLastError(), "adamw (cuda) launch");
}

constexpr int kNormBlocks = 512, kNormThreads = 256;

int64_t grad_norm_partials() { return kNormBlocks; }

__global__ void sum_squares(const float* g, int64_t n, double* partials) {
  __shared__ double warps[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    s += (double)g[i] * g[i];
  s = block_sum(s, warps);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void add_partials(const double* partials, int count, double* total) {
  __shared__ double warps[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
  s = block_sum(s, warps);
  if (threadIdx.x == 0) *total += s;
}

void grad_norm_accumulate(const float* g, int64_t n, double* partials, double* total,
                          uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  sum_squares<<<kNormBlocks, kNormThreads, 0, s>>>(g, n, partials);
  check(cudaGetLastError(), "grad_norm (cuda) launch");
  add_partials<<<1, kNormThreads, 0, s>>>(partials, kNormBlocks, total);
  check(cudaGetLastError(), "grad_norm (cuda) launch");
}

__global__ void clip_kernel(float* g, int64_t n, const double* total, float max_norm,
                            float eps) {
  double norm = sqrt(*total);
  if (!isfinite(norm) || norm + eps <= 0.0) return;  // NaN / inf: leave the gradients alone
  float coef = (float)(max_norm / (norm + eps));
  if (coef >= 1.0f) return;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    g[i] *= coef;
}

void clip_scale(float* g, int64_t n, const double* total, float max_norm, float eps,
                uintptr_t stream) {
  clip_kernel<<<grid_for(n, 256), 256, 0, as_stream(stream)>>>(g, n, total, max_norm, eps);
  check(cudaGetLastError(), "clip_grad_norm (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
