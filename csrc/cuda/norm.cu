// layernorm and rmsnorm on the GPU, forward and backward (formulas in kernels/norm.h).
//
// Versions as in python/kernelgpt/kernels/norm.py:
// version 1 "naive": one thread per row, the CPU's naive loops with float64 sums.
// version 2 "fast": one warp per row: lanes stride over the columns (coalesced), sums meet in
//            warp shuffles; the layernorm variance is a second pass over (x - mean), which the
//            row's recent reads keep in L1/L2 (no sum(x^2) - mean^2 cancellation).
// Backward, both versions: dx row by row (as in the forward), then dweight / dbias with one
// thread per column summing the rows in order, in float64: deterministic, no atomics.
#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

// ---- version 1: one thread per row ----------------------------------------------------

__global__ void layernorm_naive(const float* x, const float* w, const float* b, float* y,
                                float* mean_out, float* rstd_out, int64_t rows, int64_t C,
                                float eps) {
  int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * C;
  double sum = 0.0;
  for (int64_t j = 0; j < C; ++j) sum += xr[j];
  double mean = sum / C, sq = 0.0;
  for (int64_t j = 0; j < C; ++j) sq += (xr[j] - mean) * (xr[j] - mean);
  double rstd = 1.0 / sqrt(sq / C + eps);
  for (int64_t j = 0; j < C; ++j)
    y[r * C + j] = (float)((xr[j] - mean) * rstd * w[j] + (b ? b[j] : 0.0f));
  if (mean_out) mean_out[r] = (float)mean;
  if (rstd_out) rstd_out[r] = (float)rstd;
}

__global__ void rmsnorm_naive(const float* x, const float* w, float* y, float* rstd_out,
                              int64_t rows, int64_t C, float eps) {
  int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * C;
  double sq = 0.0;
  for (int64_t j = 0; j < C; ++j) sq += (double)xr[j] * xr[j];
  double rstd = 1.0 / sqrt(sq / C + eps);
  for (int64_t j = 0; j < C; ++j) y[r * C + j] = (float)(xr[j] * rstd * w[j]);
  if (rstd_out) rstd_out[r] = (float)rstd;
}

// dx of one row for layernorm (mean given) or rmsnorm (mean == nullptr).
__global__ void norm_backward_dx_naive(const float* dy, const float* x, const float* w,
                                       const float* mean, const float* rstd, float* dx,
                                       int64_t rows, int64_t C) {
  int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* dyr = dy + r * C;
  const float* xr = x + r * C;
  double mu = mean ? mean[r] : 0.0, rs = rstd[r];
  double sum_g = 0.0, sum_gxhat = 0.0;
  for (int64_t j = 0; j < C; ++j) {
    double g = (double)dyr[j] * w[j];
    sum_g += g;
    sum_gxhat += g * (xr[j] - mu) * rs;
  }
  if (!mean) sum_g = 0.0;  // rmsnorm has no mean term
  for (int64_t j = 0; j < C; ++j) {
    double g = (double)dyr[j] * w[j];
    dx[r * C + j] = (float)(rs * (g - sum_g / C - (xr[j] - mu) * rs * sum_gxhat / C));
  }
}

// ---- version 2: one warp per row ------------------------------------------------------

constexpr int kWarpsPerBlock = 8;

__global__ void layernorm_warp(const float* x, const float* w, const float* b, float* y,
                               float* mean_out, float* rstd_out, int64_t rows, int64_t C,
                               float eps) {
  int64_t r = blockIdx.x * (int64_t)kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps leave together
  const float* xr = x + r * C;
  float sum = 0.0f;
  for (int64_t j = lane; j < C; j += 32) sum += xr[j];
  float mean = warp_sum(sum) / C;
  float sq = 0.0f;
  for (int64_t j = lane; j < C; j += 32) sq += (xr[j] - mean) * (xr[j] - mean);
  float rstd = rsqrtf(warp_sum(sq) / C + eps);
  for (int64_t j = lane; j < C; j += 32)
    y[r * C + j] = (xr[j] - mean) * rstd * w[j] + (b ? b[j] : 0.0f);
  if (lane == 0) {
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
  }
}

__global__ void rmsnorm_warp(const float* x, const float* w, float* y, float* rstd_out,
                             int64_t rows, int64_t C, float eps) {
  int64_t r = blockIdx.x * (int64_t)kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * C;
  float sq = 0.0f;
  for (int64_t j = lane; j < C; j += 32) sq += xr[j] * xr[j];
  float rstd = rsqrtf(warp_sum(sq) / C + eps);
  for (int64_t j = lane; j < C; j += 32) y[r * C + j] = xr[j] * rstd * w[j];
  if (lane == 0 && rstd_out) rstd_out[r] = rstd;
}

__global__ void norm_backward_dx_warp(const float* dy, const float* x, const float* w,
                                      const float* mean, const float* rstd, float* dx,
                                      int64_t rows, int64_t C) {
  int64_t r = blockIdx.x * (int64_t)kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* dyr = dy + r * C;
  const float* xr = x + r * C;
  float mu = mean ? mean[r] : 0.0f, rs = rstd[r];
  float sum_g = 0.0f, sum_gxhat = 0.0f;
  for (int64_t j = lane; j < C; j += 32) {
    float g = dyr[j] * w[j];
    sum_g += g;
    sum_gxhat += g * (xr[j] - mu) * rs;
  }
  float mean_g = mean ? warp_sum(sum_g) / C : 0.0f;
  float mean_gxhat = warp_sum(sum_gxhat) / C;
  for (int64_t j = lane; j < C; j += 32) {
    float g = dyr[j] * w[j];
    dx[r * C + j] = rs * (g - mean_g - (xr[j] - mu) * rs * mean_gxhat);
  }
}

// ---- parameter gradients (both versions): one thread per column -------------------------

__global__ void norm_backward_params(const float* dy, const float* x, const float* mean,
                                     const float* rstd, float* dweight, float* dbias,
                                     int64_t rows, int64_t C) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= C) return;
  double dw = 0.0, db = 0.0;
  for (int64_t r = 0; r < rows; ++r) {  // neighbouring threads read neighbouring columns
    float d = dy[r * C + j];
    dw += (double)d * ((x[r * C + j] - (mean ? mean[r] : 0.0f)) * rstd[r]);
    db += d;
  }
  dweight[j] = (float)dw;
  if (dbias) dbias[j] = (float)db;
}

// ---- launchers ----------------------------------------------------------------------------

static unsigned row_blocks(int version, int64_t rows) {
  int64_t per = version == 1 ? 128 : kWarpsPerBlock;
  int64_t blocks = (rows + per - 1) / per;
  if (blocks > 0x7fffffff) throw std::runtime_error("norm (cuda): too many rows");
  return (unsigned)blocks;
}
static int row_threads(int version) { return version == 1 ? 128 : 32 * kWarpsPerBlock; }

void layernorm(int version, const float* x, const float* weight, const float* bias, float* y,
               float* mean, float* rstd, int64_t rows, int64_t cols, float eps,
               uintptr_t stream) {
  auto launch = version == 1 ? layernorm_naive : layernorm_warp;
  launch<<<row_blocks(version, rows), row_threads(version), 0, as_stream(stream)>>>(
      x, weight, bias, y, mean, rstd, rows, cols, eps);
  check(cudaGetLastError(), "layernorm (cuda) launch");
}

void rmsnorm(int version, const float* x, const float* weight, float* y, float* rstd,
             int64_t rows, int64_t cols, float eps, uintptr_t stream) {
  auto launch = version == 1 ? rmsnorm_naive : rmsnorm_warp;
  launch<<<row_blocks(version, rows), row_threads(version), 0, as_stream(stream)>>>(
      x, weight, y, rstd, rows, cols, eps);
  check(cudaGetLastError(), "rmsnorm (cuda) launch");
}

static void norm_backward(int version, const float* dy, const float* x, const float* weight,
                          const float* mean, const float* rstd, float* dx, float* dweight,
                          float* dbias, int64_t rows, int64_t cols, uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  auto launch = version == 1 ? norm_backward_dx_naive : norm_backward_dx_warp;
  launch<<<row_blocks(version, rows), row_threads(version), 0, s>>>(dy, x, weight, mean, rstd,
                                                                     dx, rows, cols);
  check(cudaGetLastError(), "norm backward (cuda) launch");
  norm_backward_params<<<(unsigned)((cols + 127) / 128), 128, 0, s>>>(dy, x, mean, rstd, dweight,
                                                                       dbias, rows, cols);
  check(cudaGetLastError(), "norm backward (cuda) launch");
}

void layernorm_backward(int version, const float* dy, const float* x, const float* weight,
                        const float* mean, const float* rstd, float* dx, float* dweight,
                        float* dbias, int64_t rows, int64_t cols, uintptr_t stream) {
  norm_backward(version, dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, stream);
}

void rmsnorm_backward(int version, const float* dy, const float* x, const float* weight,
                      const float* rstd, float* dx, float* dweight, int64_t rows, int64_t cols,
                      uintptr_t stream) {
  norm_backward(version, dy, x, weight, nullptr, rstd, dx, dweight, nullptr, rows, cols, stream);
}

}  // namespace cuda
}  // namespace kg
