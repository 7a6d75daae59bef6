// bf16 matmul on the GPU with float32 accumulation: C [m, n] = op(A) @ op(B) (+ bias) (+ C),
// A and B bf16 (uint16 bit patterns): A [m, k] or, with trans_a, [k, m]; B [k, n] or, with
// trans_b, [n, k] (nn.Linear's weight layout); bias float32 [n] or null; C float32. The three
// products of a linear layer's training step (forward, dX, dW) are all of this form, which is
// how GPT.to(device, precision="bf16") trains with fp32 master weights.
//
// Versions as in python/kernelgpt/kernels/bf16.py (2 to 4 are C++ only):
// version 1 "naive": one thread per output, bf16 widened to float, float multiply-adds.
// version 5 "wmma":  tensor cores through WMMA: a block of 4 warps computes a 64x64 tile of C,
//                    each warp a 32x32 piece as 2x2 fragments of 16x16 (mma_sync on 16x16x16
//                    bf16 tiles, float accumulators). Per step of 16 along k the block stages
//                    the A and B tiles in shared memory (transposed on the way in where
//                    trans_a / trans_b say so, so the fragments are always row-major; rows
//                    padded by 8 values so that ldm stays a multiple of 16 bytes and rows
//                    start on different banks). The accumulators go through shared memory
//                    to C (edges masked; bias and accumulate= applied there).
//                    Next rungs, not written: cp.async double buffering, ldmatrix/mma.sync,
//                    wgmma on sm_90.
// to_bf16: float -> bf16 bits, round to nearest even, NaN made quiet (as reference.to_bf16).
#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

#ifndef KG_CUDA_EMU
#include <cuda_bf16.h>
#include <mma.h>
#endif

namespace kg {
namespace cuda {

using bf16 = __nv_bfloat16;

struct Bf16Shape {
  const bf16* a;
  const bf16* b;
  const float* bias;
  float* c;
  int64_t m, n, k;
  bool trans_a, trans_b, accumulate;
};

__device__ inline bf16 a_value(const Bf16Shape& p, int64_t i, int64_t kk) {
  return p.trans_a ? p.a[kk * p.m + i] : p.a[i * p.k + kk];
}
__device__ inline bf16 b_value(const Bf16Shape& p, int64_t kk, int64_t j) {
  return p.trans_b ? p.b[j * p.k + kk] : p.b[kk * p.n + j];
}
__device__ inline void store_value(const Bf16Shape& p, int64_t i, int64_t j, float sum) {
  if (p.bias) sum += p.bias[j];
  float* c = p.c + i * p.n + j;
  *c = p.accumulate ? *c + sum : sum;
}

__global__ void matmul_bf16_naive(Bf16Shape p) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  int64_t i = blockIdx.y * (int64_t)blockDim.y + threadIdx.y;
  if (i >= p.m || j >= p.n) return;
  float sum = 0.0f;
  for (int64_t kk = 0; kk < p.k; ++kk)
    sum += __bfloat162float(a_value(p, i, kk)) * __bfloat162float(b_value(p, kk, j));
  store_value(p, i, j, sum);
}

constexpr int kTC = 64, kTK = 16, kPad = 8, kFrag = 16, kTcThreads = 128;

__global__ void matmul_bf16_wmma(Bf16Shape p) {
  using namespace nvcuda;
  __shared__ __align__(32) bf16 as[kTC][kTK + kPad];
  __shared__ __align__(32) bf16 bs[kTK][kTC + kPad];
  __shared__ __align__(32) float cs[kTC][kTC + 4];
  int tid = threadIdx.x, warp = tid / 32;
  int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  int64_t i0 = blockIdx.y * (int64_t)kTC, j0 = blockIdx.x * (int64_t)kTC;
  const bf16 zero = __float2bfloat16(0.0f);
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[2][2];
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 2; ++ni) wmma::fill_fragment(acc[mi][ni], 0.0f);
  for (int64_t k0 = 0; k0 < p.k; k0 += kTK) {
    for (int e = tid; e < kTC * kTK; e += kTcThreads) {
      int i = e / kTK, kk = e % kTK;
      as[i][kk] = (i0 + i < p.m && k0 + kk < p.k) ? a_value(p, i0 + i, k0 + kk) : zero;
      int kb = e / kTC, j = e % kTC;
      bs[kb][j] = (k0 + kb < p.k && j0 + j < p.n) ? b_value(p, k0 + kb, j0 + j) : zero;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major> fa[2];
    wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major> fb[2];
    for (int mi = 0; mi < 2; ++mi)
      wmma::load_matrix_sync(fa[mi], &as[wm + kFrag * mi][0], kTK + kPad);
    for (int ni = 0; ni < 2; ++ni)
      wmma::load_matrix_sync(fb[ni], &bs[0][wn + kFrag * ni], kTC + kPad);
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < 2; ++ni) wmma::mma_sync(acc[mi][ni], fa[mi], fb[ni], acc[mi][ni]);
    __syncthreads();
  }
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 2; ++ni)
      wmma::store_matrix_sync(&cs[wm + kFrag * mi][wn + kFrag * ni], acc[mi][ni], kTC + 4,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < kTC * kTC; e += kTcThreads) {
    int i = e / kTC, j = e % kTC;
    if (i0 + i < p.m && j0 + j < p.n) store_value(p, i0 + i, j0 + j, cs[i][j]);
  }
}

__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    unsigned bits = __float_as_uint(x[e]);
    bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    y[e] = (uint16_t)(nan ? (bits >> 16) | 0x40u : (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

void matmul_bf16(int version, const uint16_t* a, const uint16_t* b, const float* bias, float* c,
                 int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, bool accumulate,
                 uintptr_t stream) {
  Bf16Shape p{reinterpret_cast<const bf16*>(a), reinterpret_cast<const bf16*>(b), bias, c, m, n,
              k, trans_a, trans_b, accumulate};
  cudaStream_t st = as_stream(stream);
  if (version == 1) {
    dim3 grid((unsigned)((n + 31) / 32), (unsigned)((m + 31) / 32));
    matmul_bf16_naive<<<grid, dim3(32, 32), 0, st>>>(p);
  } else {
    dim3 grid((unsigned)((n + kTC - 1) / kTC), (unsigned)((m + kTC - 1) / kTC));
    matmul_bf16_wmma<<<grid, kTcThreads, 0, st>>>(p);
  }
  check(cudaGetLastError(), "matmul_bf16 (cuda) launch");
}

void to_bf16(const float* x, uint16_t* y, int64_t n, uintptr_t stream) {
  to_bf16_kernel<<<grid_for(n, 256), 256, 0, as_stream(stream)>>>(x, y, n);
  check(cudaGetLastError(), "to_bf16 (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
