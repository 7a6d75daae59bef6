// softmax / log-softmax over the last axis on the GPU (see cuda_kernels.h).
//
// Versions as in python/kernelgpt/kernels/softmax.py:
// version 1 "naive": one thread per row, three passes (max, sum, write).
// version 2 "online": one block per row; each thread keeps an online (max, sum) pair over its
//            strided columns, merged with warp shuffles and then across warps in shared memory.
//
// softmax_backward (dx from dy and the forward output y; see ops.softmax_backward):
//   softmax:     dx = scale * y * (dy - sum_j dy_j y_j)
//   log-softmax: dx = scale * (dy - exp(y) * sum_j dy_j), over the entries with y != -inf
//                (masked entries get 0 and their dy is left out of the sum)
// version 1 "naive": one thread per row, two passes. version 2 "fused": one block per row, the
//            row sum in a block reduction (warp shuffles, then the warps' partial sums in
//            shared memory).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

__device__ inline int64_t valid_cols(int64_t row, int64_t cols, int64_t t, bool causal) {
  if (!causal) return cols;
  int64_t i = row % t;
  int64_t last = i + cols - t;  // keep j <= last
  return last + 1 < 0 ? 0 : (last + 1 > cols ? cols : last + 1);
}

__global__ void softmax_naive(const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
                              float scale, bool causal, bool log) {
  int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  int64_t valid = valid_cols(row, cols, t, causal);
  float mx = -INFINITY;
  for (int64_t j = 0; j < valid; ++j) mx = fmaxf(mx, xr[j] * scale);
  float sum = 0.0f;
  for (int64_t j = 0; j < valid; ++j) sum += expf(xr[j] * scale - mx);
  float lse = mx + logf(sum);
  for (int64_t j = 0; j < cols; ++j) {
    if (j >= valid)
      yr[j] = log ? -INFINITY : 0.0f;
    else
      yr[j] = log ? xr[j] * scale - lse : expf(xr[j] * scale - mx) / sum;
  }
}

__global__ void softmax_online(const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
                               float scale, bool causal, bool log) {
  __shared__ float sh_m[32];
  __shared__ float sh_s[32];
  int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  int64_t valid = valid_cols(row, cols, t, causal);
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) online_add(m, s, xr[j] * scale);
  block_online_merge(m, s, sh_m, sh_s);
  float lse = m + logf(s), inv = 1.0f / s;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (j >= valid)
      yr[j] = log ? -INFINITY : 0.0f;
    else
      yr[j] = log ? xr[j] * scale - lse : expf(xr[j] * scale - m) * inv;
  }
}

// The sum each row needs: sum dy * y (softmax) or sum dy over unmasked entries (log-softmax).
__device__ inline float backward_term(float dy, float y, bool log) {
  return log ? (y == -INFINITY ? 0.0f : dy) : dy * y;
}
__device__ inline float backward_dx(float dy, float y, float total, float scale, bool log) {
  if (log) return y == -INFINITY ? 0.0f : scale * (dy - expf(y) * total);
  return scale * y * (dy - total);
}

__global__ void softmax_backward_naive(const float* dy, const float* y, float* dx, int64_t rows,
                                       int64_t cols, float scale, bool log) {
  int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const float *dyr = dy + row * cols, *yr = y + row * cols;
  float total = 0.0f;
  for (int64_t j = 0; j < cols; ++j) total += backward_term(dyr[j], yr[j], log);
  for (int64_t j = 0; j < cols; ++j)
    dx[row * cols + j] = backward_dx(dyr[j], yr[j], total, scale, log);
}

__global__ void softmax_backward_block(const float* dy, const float* y, float* dx, int64_t rows,
                                       int64_t cols, float scale, bool log) {
  __shared__ float partial[32];
  int64_t row = blockIdx.x;
  const float *dyr = dy + row * cols, *yr = y + row * cols;
  float total = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    total += backward_term(dyr[j], yr[j], log);
  total = block_sum(total, partial);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    dx[row * cols + j] = backward_dx(dyr[j], yr[j], total, scale, log);
}

void softmax_backward(int version, const float* dy, const float* y, float* dx, int64_t rows,
                      int64_t cols, float scale, bool log, uintptr_t stream) {
  if (version == 1) {
    softmax_backward_naive<<<(unsigned)((rows + 127) / 128), 128, 0, as_stream(stream)>>>(
        dy, y, dx, rows, cols, scale, log);
  } else {
    if (rows > 0x7fffffff) throw std::runtime_error("softmax_backward (cuda): too many rows");
    int threads = cols >= 1024 ? 1024 : (cols >= 256 ? 256 : 64);
    softmax_backward_block<<<(unsigned)rows, threads, 0, as_stream(stream)>>>(dy, y, dx, rows,
                                                                               cols, scale, log);
  }
  check(cudaGetLastError(), "softmax_backward (cuda) launch");
}

void softmax(int version, const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
             float scale, bool causal, bool log, uintptr_t stream) {
  if (version == 1) {
    int threads = 128;
    unsigned blocks = (unsigned)((rows + threads - 1) / threads);
    softmax_naive<<<blocks, threads, 0, as_stream(stream)>>>(x, y, rows, cols, t, scale, causal,
                                                             log);
  } else {
    if (rows > 0x7fffffff) throw std::runtime_error("softmax (cuda): too many rows");
    int threads = cols >= 1024 ? 1024 : (cols >= 256 ? 256 : 64);
    softmax_online<<<(unsigned)rows, threads, 0, as_stream(stream)>>>(x, y, rows, cols, t, scale,
                                                                       causal, log);
  }
  check(cudaGetLastError(), "softmax (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
