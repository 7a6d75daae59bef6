// matmul on the GPU: C = op(A) @ op(B) (+ bias) (+ C), float32, row-major (see matmul.h).
// The classic SGEMM ladder, each rung named for its idea (pick one with backend=); the numbers
// are the versions of python/kernelgpt/kernels/matmul.py (C++ runs 1 and 5):
//
// version 1 "naive":      one thread per output, threadIdx.x walking down the rows of C: the
//                         32 threads of a warp read 32 different rows of A and write C with a
//                         stride of n floats (uncoalesced), the slowest way to do it.
// version 2 "coalesced":  the same with threadIdx.x walking along a row of C: a warp reads one
//                         value of A (a broadcast) and 32 consecutive values of B and C.
// version 3 "tiled":      shared-memory tiling: a 32x32 block stages 32x32 tiles of op(A) and
//                         op(B) in shared memory, so each global value is read once per tile.
// version 4 "blocked1d":  1-D register blocking: 512 threads compute a 64x64 tile of C, each
//                         thread 8 outputs down a column; per step of k one value of B from
//                         shared memory feeds 8 multiply-adds.
// version 5 "blocked":    2-D register blocking: a 16x16 block computes a 64x64 tile, each
//                         thread a 4x4 grid of outputs (rows ty + 16 r, columns tx + 16 c);
//                         per step of k, 4 + 4 shared-memory reads feed 16 multiply-adds.
// version 6 "vectorized": version 5 with float4 (16-byte) global loads of the tiles when both
//                         operands are untransposed and every row starts 16-byte aligned (k and
//                         n multiples of 4); otherwise the launcher runs version 5.
// version 7 "warptiled":  a 256-thread block computes a 128x128 tile; its 8 warps each own a
//                         64x32 piece, split in 2x2 sub-tiles of 32x16 in which lane
//                         (lane / 4, lane % 4) owns a 4x4 block: 64 accumulators per thread, fed
//                         by float4 shared-memory reads that the lanes of a warp share
//                         (broadcasts, no bank conflicts); float4 global loads when the layout
//                         allows (as version 6), scalar loads otherwise.
// bf16 on tensor cores: csrc/cuda/matmul_bf16.cu.
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

// C[i, j] (of batch bi) = sum (+ bias[j]) (+ the old C[i, j] when accumulating).
__device__ inline void store_c(const MatmulShape& p, int64_t bi, int64_t i, int64_t j,
                               float sum) {
  if (p.bias) sum += p.bias[j];
  float* c = p.c + bi * p.sc + i * p.n + j;
  *c = p.accumulate ? *c + sum : sum;
}

// C[i, j] of batch bi as one dot product straight from global memory (versions 1 and 2).
__device__ inline void dot_product(const MatmulShape& p, int64_t bi, int64_t i, int64_t j) {
  if (i >= p.m || j >= p.n) return;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float sum = 0.0f;
  for (int64_t kk = 0; kk < p.k; ++kk) sum += a_at(p, a, i, kk) * b_at(p, b, kk, j);
  store_c(p, bi, i, j, sum);
}

// The two differ only in which output threadIdx.x picks.
__global__ void matmul_naive(MatmulShape p) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // x walks down the rows
  int64_t j = blockIdx.y * (int64_t)blockDim.y + threadIdx.y;
  dot_product(p, blockIdx.z, i, j);
}

__global__ void matmul_coalesced(MatmulShape p) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // x walks along a row
  int64_t i = blockIdx.y * (int64_t)blockDim.y + threadIdx.y;
  dot_product(p, blockIdx.z, i, j);
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
  if (i < p.m && j < p.n) store_c(p, bi, i, j, sum);
}

// ---- staging tiles in shared memory (versions 4 to 7) -----------------------------------------
// The tiles of step k0: op(A) rows i0.. stored k-major (as[k][i]), op(B) columns j0.. (bs[k][j]);
// values past the matrix edges are 0. `threads` threads share the work; `tid` is this one.

// One value per load, any transposes.
template <int BM, int BN, int BK>
__device__ inline void stage_tiles(const MatmulShape& p, const float* a, const float* b,
                                   float (*as)[BM], float (*bs)[BN], int64_t i0, int64_t j0,
                                   int64_t k0, int tid, int threads) {
  for (int e = tid; e < BM * BK; e += threads) {
    int i = e / BK, kk = e % BK;
    as[kk][i] = (i0 + i < p.m && k0 + kk < p.k) ? a_at(p, a, i0 + i, k0 + kk) : 0.0f;
  }
  for (int e = tid; e < BK * BN; e += threads) {
    int kb = e / BN, j = e % BN;
    bs[kb][j] = (k0 + kb < p.k && j0 + j < p.n) ? b_at(p, b, k0 + kb, j0 + j) : 0.0f;
  }
}

// row[col .. col + 3] as one 16-byte load when all four are inside (row_in, col + 3 < cols);
// element by element at the ragged edge.
__device__ inline float4 load4(const float* row, int64_t col, int64_t cols, bool row_in) {
  if (row_in && col + 3 < cols) return *reinterpret_cast<const float4*>(row + col);
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int q = 0; q < 4; ++q) (&v.x)[q] = (row_in && col + q < cols) ? row[col + q] : 0.0f;
  return v;
}

// float4 global loads: A along k, B along n (untransposed operands, k and n multiples of 4,
// rows 16-byte aligned: the launcher checks).
template <int BM, int BN, int BK>
__device__ inline void stage_tiles_vec4(const MatmulShape& p, const float* a, const float* b,
                                        float (*as)[BM], float (*bs)[BN], int64_t i0,
                                        int64_t j0, int64_t k0, int tid, int threads) {
  for (int e = tid; e < BM * BK / 4; e += threads) {
    int i = e / (BK / 4), kq = (e % (BK / 4)) * 4;
    float4 v = load4(a + (i0 + i) * p.k, k0 + kq, p.k, i0 + i < p.m);
    as[kq][i] = v.x, as[kq + 1][i] = v.y, as[kq + 2][i] = v.z, as[kq + 3][i] = v.w;
  }
  for (int e = tid; e < BK * BN / 4; e += threads) {
    int kb = e / (BN / 4), jq = (e % (BN / 4)) * 4;
    *reinterpret_cast<float4*>(&bs[kb][jq]) = load4(b + (k0 + kb) * p.n, j0 + jq, p.n,
                                                    k0 + kb < p.k);
  }
}

// ---- version 4: 1-D register blocking ------------------------------------------------------

constexpr int k1BM = 64, k1BN = 64, k1BK = 8, k1TM = 8, k1Threads = k1BM * k1BN / k1TM;

__global__ void matmul_blocked1d(MatmulShape p) {
  __shared__ float as[k1BK][k1BM];  // op(A) tile, k-major
  __shared__ float bs[k1BK][k1BN];
  int tid = threadIdx.x, col = tid % k1BN, rows = (tid / k1BN) * k1TM;
  int64_t i0 = blockIdx.y * (int64_t)k1BM, j0 = blockIdx.x * (int64_t)k1BN, bi = blockIdx.z;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float acc[k1TM] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += k1BK) {
    // 512 threads, 512 values per tile: one each
    stage_tiles<k1BM, k1BN, k1BK>(p, a, b, as, bs, i0, j0, k0, tid, k1Threads);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < k1BK; ++kk) {
      float bv = bs[kk][col];
#pragma unroll
      for (int r = 0; r < k1TM; ++r) acc[r] += as[kk][rows + r] * bv;
    }
    __syncthreads();
  }
  for (int r = 0; r < k1TM; ++r)
    if (i0 + rows + r < p.m && j0 + col < p.n) store_c(p, bi, i0 + rows + r, j0 + col, acc[r]);
}

// ---- versions 5 and 6: 2-D register blocking (6: float4 global loads) ------------------------

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
    if (kVectorLoads)  // 256 threads, 256 float4 per tile: one each
      stage_tiles_vec4<kBlockM, kBlockN, kBlockK>(p, a, b, as, bs, i0, j0, k0, tid, kSide * kSide);
    else
      stage_tiles<kBlockM, kBlockN, kBlockK>(p, a, b, as, bs, i0, j0, k0, tid, kSide * kSide);
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
      if (i < p.m && j < p.n) store_c(p, bi, i, j, acc[r][c]);
    }
  }
}

// ---- version 7: warp tiling -------------------------------------------------------------------

constexpr int kWBM = 128, kWBN = 128, kWBK = 16, kWThreads = 256;
constexpr int kWarpM = 64, kWarpN = 32, kSubM = 32, kSubN = 16, kLaneM = 4, kLaneN = 4;

template <bool kVectorLoads>
__global__ void matmul_warptiled(MatmulShape p) {
  __shared__ __align__(16) float as[kWBK][kWBM];  // op(A) tile, k-major
  __shared__ __align__(16) float bs[kWBK][kWBN];
  int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  int wm = (warp / (kWBN / kWarpN)) * kWarpM, wn = (warp % (kWBN / kWarpN)) * kWarpN;
  int lm = (lane / (kSubN / kLaneN)) * kLaneM, ln = (lane % (kSubN / kLaneN)) * kLaneN;
  int64_t i0 = blockIdx.y * (int64_t)kWBM, j0 = blockIdx.x * (int64_t)kWBN, bi = blockIdx.z;
  const float* a = p.a + bi * p.sa;
  const float* b = p.b + bi * p.sb;
  float acc[2][2][kLaneM][kLaneN] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kWBK) {
    if (kVectorLoads)  // 2 x 256 float4 per operand tile
      stage_tiles_vec4<kWBM, kWBN, kWBK>(p, a, b, as, bs, i0, j0, k0, tid, kWThreads);
    else
      stage_tiles<kWBM, kWBN, kWBK>(p, a, b, as, bs, i0, j0, k0, tid, kWThreads);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kWBK; ++kk) {
      float4 ar[2], br[2];
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        ar[s] = *reinterpret_cast<const float4*>(&as[kk][wm + s * kSubM + lm]);
        br[s] = *reinterpret_cast<const float4*>(&bs[kk][wn + s * kSubN + ln]);
      }
#pragma unroll
      for (int sm = 0; sm < 2; ++sm)
#pragma unroll
        for (int sn = 0; sn < 2; ++sn)
#pragma unroll
          for (int r = 0; r < kLaneM; ++r)
#pragma unroll
            for (int c = 0; c < kLaneN; ++c)
              acc[sm][sn][r][c] += (&ar[sm].x)[r] * (&br[sn].x)[c];
    }
    __syncthreads();
  }
  for (int sm = 0; sm < 2; ++sm)
    for (int sn = 0; sn < 2; ++sn)
      for (int r = 0; r < kLaneM; ++r)
        for (int c = 0; c < kLaneN; ++c) {
          int64_t i = i0 + wm + sm * kSubM + lm + r, j = j0 + wn + sn * kSubN + ln + c;
          if (i < p.m && j < p.n) store_c(p, bi, i, j, acc[sm][sn][r][c]);
        }
}

void matmul(int version, const float* a, const float* b, const float* bias, float* c,
            int64_t batch, int64_t m, int64_t n, int64_t k, int64_t batch_stride_a,
            int64_t batch_stride_b, int64_t batch_stride_c, bool trans_a, bool trans_b,
            bool accumulate, uintptr_t stream) {
  MatmulShape p{a, b, bias, c, m, n, k, batch_stride_a, batch_stride_b, batch_stride_c,
                trans_a, trans_b, accumulate};
  if (batch > 65535) throw std::runtime_error("matmul (cuda): batch larger than 65535");
  cudaStream_t st = as_stream(stream);
  auto blocks = [](int64_t x, int tile) { return (unsigned)((x + tile - 1) / tile); };
  auto aligned = [](const void* ptr, int64_t stride) {
    return (uintptr_t)ptr % 16 == 0 && stride % 4 == 0;
  };
  bool vec = !trans_a && !trans_b && k % 4 == 0 && n % 4 == 0 && aligned(a, batch_stride_a) &&
             aligned(b, batch_stride_b);
  dim3 square(kTile, kTile);
  switch (version) {
    case 1:
      matmul_naive<<<dim3(blocks(m, kTile), blocks(n, kTile), (unsigned)batch), square, 0,
                     st>>>(p);
      break;
    case 2:
      matmul_coalesced<<<dim3(blocks(n, kTile), blocks(m, kTile), (unsigned)batch), square, 0,
                         st>>>(p);
      break;
    case 3:
      matmul_tiled<<<dim3(blocks(n, kTile), blocks(m, kTile), (unsigned)batch), square, 0,
                     st>>>(p);
      break;
    case 4:
      matmul_blocked1d<<<dim3(blocks(n, k1BN), blocks(m, k1BM), (unsigned)batch), k1Threads, 0,
                         st>>>(p);
      break;
    case 5:
    case 6: {
      dim3 grid(blocks(n, kBlockN), blocks(m, kBlockM), (unsigned)batch);
      if (version == 6 && vec)
        matmul_register_blocked<true><<<grid, dim3(kSide, kSide), 0, st>>>(p);
      else
        matmul_register_blocked<false><<<grid, dim3(kSide, kSide), 0, st>>>(p);
      break;
    }
    case 7: {
      dim3 grid(blocks(n, kWBN), blocks(m, kWBM), (unsigned)batch);
      if (vec)
        matmul_warptiled<true><<<grid, kWThreads, 0, st>>>(p);
      else
        matmul_warptiled<false><<<grid, kWThreads, 0, st>>>(p);
      break;
    }
    default:
      throw std::runtime_error("matmul (cuda): unknown version " + std::to_string(version));
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
