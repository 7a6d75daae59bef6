#pragma once
#ifdef KG_CUDA_EMU
#include "cuda_emu/emu.h"  // the CPU emulator (kernelgpt._cuda_emu)
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace kg {
namespace cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32) in a fixed order: warp shuffles, then
// the warps' sums, held in `partial` (32 values of shared memory), by warp 0. Every thread gets
// the result.
template <typename T>
__device__ inline T block_sum(T v, T* partial) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(lane < warps ? partial[lane] : T(0));
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

// Online softmax statistics: the running max m and the sum s of exp(v - m) over the values
// seen. online_add takes one value (NaN falls in the else branch and makes s NaN, as it
// should), online_merge another thread's pair.
__device__ inline void online_add(float& m, float& s, float v) {
  if (v > m) {
    s = s * expf(m - v) + 1.0f;
    m = v;
  } else {
    s += expf(v - m);
  }
}
__device__ inline void online_merge(float& m, float& s, float m2, float s2) {
  float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;  // both empty
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}
// Merges every thread's (m, s) over the block (blockDim.x a multiple of 32): warp shuffles,
// then the warps' pairs (in sh_m, sh_s: 32 values of shared memory each) by warp 0. Every
// thread gets the block's pair.
__device__ inline void block_online_merge(float& m, float& s, float* sh_m, float* sh_s) {
  for (int o = 16; o > 0; o >>= 1)
    online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) sh_m[warp] = m, sh_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sh_m[lane] : -INFINITY;
    s = lane < warps ? sh_s[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
      online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) sh_m[0] = m, sh_s[0] = s;
  }
  __syncthreads();
  m = sh_m[0];
  s = sh_s[0];
}

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never above the
// grid limit (the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;
  return (unsigned)(blocks < 1 ? 1 : blocks);
}

}  // namespace cuda
}  // namespace kg
