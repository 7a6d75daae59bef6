// softmax / log-softmax over the last axis on the GPU (see cuda_kernels.h).
//
// version 0: naive, one thread per row, three passes (max, sum, write).
// version 1: one block per row; each thread keeps an online (max, sum) pair over its strided
//            columns, merged with warp shuffles and then across warps in shared memory.
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

__device__ inline void online_merge(float& m, float& s, float m2, float s2) {
  float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
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
  for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) {
    float v = xr[j] * scale;
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    online_merge(m, s, m2, s2);
  }
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) sh_m[warp] = m, sh_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sh_m[lane] : -INFINITY;
    s = lane < warps ? sh_s[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
      float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      online_merge(m, s, m2, s2);
    }
    if (lane == 0) sh_m[0] = m, sh_s[0] = s;
  }
  __syncthreads();
  m = sh_m[0];
  s = sh_s[0];
  float lse = m + logf(s), inv = 1.0f / s;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (j >= valid)
      yr[j] = log ? -INFINITY : 0.0f;
    else
      yr[j] = log ? xr[j] * scale - lse : expf(xr[j] * scale - m) * inv;
  }
}

void softmax(int version, const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
             float scale, bool causal, bool log, uintptr_t stream) {
  if (version == 0) {
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
