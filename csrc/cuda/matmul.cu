// matmul on the GPU: C = op(A) @ op(B) (+ bias) (+ C), float32, row-major (see matmul.h).
//
// version 0: naive, one thread per output element, operands read from global memory.
// version 1: shared-memory tiling: a 32x32 block of threads stages 32x32 tiles of op(A) and
//            op(B) in shared memory so that each global value is read once per tile.
// version 2: register blocking: a 16x16 block of threads computes a 64x64 tile of C, each
//            thread a 4x4 grid of outputs (rows ty + 16 r, columns tx + 16 c) kept in
//            registers; per step of k every value read from shared memory feeds 4
//            multiply-adds instead of 1.
// version 3: version 2 with float4 (16-byte) global loads of the tiles, one per thread per
//            operand, when both operands are untransposed and every row starts 16-byte
//            aligned (k and n multiples of 4); otherwise the launcher runs version 2.
// (Tensor cores: not yet.)
#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

struct MatmulShape {
  const float* a;
  const float* b;
  const float* bias;
  float* c;
  int64_t m, n, k, sa, sb, sc;
  bool trans_a, trans_b, accumulate;
};

__device__ inline float a_at(const MatmulShape& p, const float* a, int64_t i, int64_t kk) {
  return p.trans_a ? a[kk * p.m + i] : a[i * p.k + kk];
}
__device__ inline float b_at(const MatmulShape& p, const float* b, int64_t kk, int64_t j) {
  return p.trans_b ? b[j * p.k + kk] : b[kk * p.n + j];
}

__global__ void matmul_naive(MatmulShape p) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  int64_t i = blockIdx.y * (int64_t)blockDim.y + threadIdx.y;
  int64_t bi = blockIdx.z;
  if (i >= p.m || j >= p.n) return;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float sum = 0.0f;
  for (int64_t kk = 0; kk < p.k; ++kk) sum += a_at(p, a, i, kk) * b_at(p, b, kk, j);
  if (p.bias) sum += p.bias[j];
  float* c = p.c + bi * p.sc + i * p.n + j;
  *c = p.accumulate ? *c + sum : sum;
}

constexpr int kTile = 32;

__global__ void matmul_tiled(MatmulShape p) {
  __shared__ float as[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t j = blockIdx.x * (int64_t)kTile + tx;
  int64_t i = blockIdx.y * (int64_t)kTile + ty;
  int64_t bi = blockIdx.z;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float sum = 0.0f;
  for (int64_t k0 = 0; k0 < p.k; k0 += kTile) {
    int64_t ai = blockIdx.y * (int64_t)kTile + ty, ak = k0 + tx;
    as[ty][tx] = (ai < p.m && ak < p.k) ? a_at(p, a, ai, ak) : 0.0f;
    int64_t bk = k0 + ty, bj = j;
    bs[ty][tx] = (bk < p.k && bj < p.n) ? b_at(p, b, bk, bj) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) sum += as[ty][kk] * bs[kk][tx];
    __syncthreads();
  }
  if (i < p.m && j < p.n) {
    if (p.bias) sum += p.bias[j];
    float* c = p.c + bi * p.sc + i * p.n + j;
    *c = p.accumulate ? *c + sum : sum;
  }
}

constexpr int kBlockM = 64, kBlockN = 64, kBlockK = 16, kMicro = 4, kSide = 16;

template <bool kVectorLoads>
__global__ void matmul_register_blocked(MatmulShape p) {
  __shared__ float as[kBlockK][kBlockM];  // op(A) tile, stored k-major
  __shared__ __align__(16) float bs[kBlockK][kBlockN];
  int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kSide + tx;
  int64_t i0 = blockIdx.y * (int64_t)kBlockM, j0 = blockIdx.x * (int64_t)kBlockN;
  int64_t bi = blockIdx.z;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float acc[kMicro][kMicro] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kBlockK) {
    if (kVectorLoads) {  // 256 threads, 256 float4 per tile: A along k, B along n
      int i = tid / 4, ka = (tid % 4) * 4, kb = tid / 16, j = (tid % 16) * 4;
      float4 va = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vb = va;
      if (i0 + i < p.m && k0 + ka + 3 < p.k)
        va = *reinterpret_cast<const float4*>(a + (i0 + i) * p.k + k0 + ka);
      else  // the ragged edge: element by element
        for (int q = 0; q < 4; ++q) {
          bool in = i0 + i < p.m && k0 + ka + q < p.k;
          (&va.x)[q] = in ? a[(i0 + i) * p.k + k0 + ka + q] : 0.0f;
        }
      if (k0 + kb < p.k && j0 + j + 3 < p.n)
        vb = *reinterpret_cast<const float4*>(b + (k0 + kb) * p.n + j0 + j);
      else
        for (int q = 0; q < 4; ++q) {
          bool in = k0 + kb < p.k && j0 + j + q < p.n;
          (&vb.x)[q] = in ? b[(k0 + kb) * p.n + j0 + j + q] : 0.0f;
        }
      as[ka][i] = va.x, as[ka + 1][i] = va.y, as[ka + 2][i] = va.z, as[ka + 3][i] = va.w;
      *reinterpret_cast<float4*>(&bs[kb][j]) = vb;
    } else {
      for (int e = tid; e < kBlockM * kBlockK; e += kSide * kSide) {
        int i = e / kBlockK, kk = e % kBlockK;
        as[kk][i] = (i0 + i < p.m && k0 + kk < p.k) ? a_at(p, a, i0 + i, k0 + kk) : 0.0f;
        int kb = e / kBlockN, j = e % kBlockN;
        bs[kb][j] = (k0 + kb < p.k && j0 + j < p.n) ? b_at(p, b, k0 + kb, j0 + j) : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBlockK; ++kk) {
      float ar[kMicro], br[kMicro];
#pragma unroll
      for (int r = 0; r < kMicro; ++r) ar[r] = as[kk][ty + kSide * r];
#pragma unroll
      for (int c = 0; c < kMicro; ++c) br[c] = bs[kk][tx + kSide * c];
#pragma unroll
      for (int r = 0; r < kMicro; ++r)
#pragma unroll
        for (int c = 0; c < kMicro; ++c) acc[r][c] += ar[r] * br[c];
    }
    __syncthreads();
  }
  for (int r = 0; r < kMicro; ++r) {
    int64_t i = i0 + ty + kSide * r;
    for (int c = 0; c < kMicro; ++c) {
      int64_t j = j0 + tx + kSide * c;
      if (i >= p.m || j >= p.n) continue;
      float sum = acc[r][c] + (p.bias ? p.bias[j] : 0.0f);
      float* out = p.c + bi * p.sc + i * p.n + j;
      *out = p.accumulate ? *out + sum : sum;
    }
  }
}

void matmul(int version, const float* a, const float* b, const float* bias, float* c,
            int64_t batch, int64_t m, int64_t n, int64_t k, int64_t batch_stride_a,
            int64_t batch_stride_b, int64_t batch_stride_c, bool trans_a, bool trans_b,
            bool accumulate, uintptr_t stream) {
  MatmulShape p{a, b, bias, c, m, n, k, batch_stride_a, batch_stride_b, batch_stride_c,
                trans_a, trans_b, accumulate};
  if (batch > 65535) throw std::runtime_error("matmul (cuda): batch larger than 65535");
  dim3 block(kTile, kTile);
  dim3 grid((unsigned)((n + kTile - 1) / kTile), (unsigned)((m + kTile - 1) / kTile),
            (unsigned)batch);
  if (version == 0) {
    matmul_naive<<<grid, block, 0, as_stream(stream)>>>(p);
  } else if (version == 1) {
    matmul_tiled<<<grid, block, 0, as_stream(stream)>>>(p);
  } else {
    dim3 grid2((unsigned)((n + kBlockN - 1) / kBlockN), (unsigned)((m + kBlockM - 1) / kBlockM),
               (unsigned)batch);
    auto aligned = [](const void* ptr, int64_t stride) {
      return (uintptr_t)ptr % 16 == 0 && stride % 4 == 0;
    };
    bool vec = version == 3 && !trans_a && !trans_b && k % 4 == 0 && n % 4 == 0 &&
               aligned(a, batch_stride_a) && aligned(b, batch_stride_b);
    if (vec)
      matmul_register_blocked<true><<<grid2, dim3(kSide, kSide), 0, as_stream(stream)>>>(p);
    else
      matmul_register_blocked<false><<<grid2, dim3(kSide, kSide), 0, as_stream(stream)>>>(p);
  }
  check(cudaGetLastError(), "matmul (cuda) launch");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace kg
