// Attention forward on tensor cores (attention version 4, "flash_tc"): the flash algorithm of
// version 2 with both matrix products, S = Q K^T and O += P V, done by WMMA on bf16 tiles with
// float accumulation. Same arguments and masks as csrc/cuda/attention.cu (causal bottom-right,
// grouped-query heads, a KV cache read in place); q, k, v, out stay float32 in memory and are
// rounded to bf16 when staged, as are the probabilities P: expect ~3 significant digits.
//
// A block of 4 warps takes 64 query rows of one head, 16 per warp. The warp's Q rows are loaded
// once as WMMA fragments. For each tile of 64 keys the block stages K and V (bf16) in shared
// memory; each warp computes its 16x64 slice of S into shared memory, two lanes per row do the
// online softmax on it (running max m and sum l per row, the correction exp(m_old - m_new)
// applied to the row's output accumulator, P written as bf16), then O [16 x dh] += P V, with O
// kept in shared memory as float (WMMA fragments cannot be rescaled row by row: their layout
// is opaque). Needs dh a multiple of 16, <= 128, and up to ~96 KiB of shared memory (opted in
// with cudaFuncSetAttribute; sm_80 and sm_90 allow it).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

#ifndef KG_CUDA_EMU
#include <cuda_bf16.h>
#include <mma.h>
#endif

namespace kg {
namespace cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kRows = 64, kKeys = 64, kWarps = 4, kF = 16, kPadH = 8, kPadS = 4;

struct TcArgs {
  const float *q, *k, *v;
  float *out, *lse;
  int64_t b, h, hkv, t, s, cap, dh;
  float scale;
  bool causal;
};

// The shared-memory layout, in bytes from the start, for head size dh.
struct TcLayout {
  int ldh, lds, ldp, ldo;  // row strides (elements) of the bf16 K/V/Q, float S, bf16 P, float O
  size_t ks, vs, ss, ps, os, ml, total;
  __host__ __device__ explicit TcLayout(int dh) {
    ldh = dh + kPadH, lds = kKeys + kPadS, ldp = kKeys + kPadH, ldo = dh + kPadS;
    ks = 0;
    vs = ks + sizeof(bf16) * kKeys * ldh;
    ss = vs + sizeof(bf16) * kKeys * ldh;
    ps = ss + sizeof(float) * kRows * lds;
    os = ps + sizeof(bf16) * kRows * ldp;
    ml = os + sizeof(float) * kRows * ldo;
    total = ml + sizeof(float) * kRows * 2;
  }
};

__global__ void attention_flash_tc(TcArgs p) {
  using namespace nvcuda;
  extern __shared__ __align__(128) uint8_t smem[];
  const int dh = (int)p.dh, dblocks = dh / kF;
  TcLayout L(dh);
  bf16* ks = reinterpret_cast<bf16*>(smem + L.ks);     // [64][ldh]; first it stages Q
  bf16* vs = reinterpret_cast<bf16*>(smem + L.vs);     // [64][ldh]
  float* ss = reinterpret_cast<float*>(smem + L.ss);   // [64][lds] scores
  bf16* ps = reinterpret_cast<bf16*>(smem + L.ps);     // [64][ldp] probabilities
  float* os = reinterpret_cast<float*>(smem + L.os);   // [64][ldo] output accumulators
  float* ms = reinterpret_cast<float*>(smem + L.ml);   // [64] running max (scaled scores)
  float* ls = ms + kRows;                              // [64] running sum
  int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  int64_t bh = blockIdx.y, bi = bh / p.h, head = bh % p.h;
  int64_t i0 = blockIdx.x * (int64_t)kRows;
  int64_t kv = (bi * p.hkv + head / (p.h / p.hkv)) * p.cap * p.dh;
  const bf16 zero = __float2bfloat16(0.0f);

  // Q rows of the block (bf16, zero past t) staged in ks, each warp keeps its 16 as fragments
  for (int e = tid; e < kRows * dh; e += blockDim.x) {
    int r = e / dh, d = e % dh;
    ks[r * L.ldh + d] = i0 + r < p.t ? __float2bfloat16(p.q[(bh * p.t + i0 + r) * dh + d]) : zero;
  }
  for (int e = tid; e < kRows * dh; e += blockDim.x) os[(e / dh) * L.ldo + e % dh] = 0.0f;
  if (tid < kRows) ms[tid] = -INFINITY, ls[tid] = 0.0f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, kF, kF, kF, bf16, wmma::row_major> qf[128 / kF];
  for (int kd = 0; kd < dblocks; ++kd)
    wmma::load_matrix_sync(qf[kd], ks + (warp * kF) * L.ldh + kd * kF, L.ldh);

  // keys any row of the block sees
  int64_t last_row = min(p.t - 1, i0 + kRows - 1);
  int64_t limit = p.causal ? min(p.s, last_row + p.s - p.t + 1) : p.s;
  for (int64_t j0 = 0; j0 < limit; j0 += kKeys) {
    __syncthreads();  // ks (Q, then the previous tile) and vs are used up
    for (int e = tid; e < kKeys * dh; e += blockDim.x) {
      int j = e / dh, d = e % dh;
      bool in = j0 + j < p.s;
      ks[j * L.ldh + d] = in ? __float2bfloat16(p.k[kv + (j0 + j) * dh + d]) : zero;
      vs[j * L.ldh + d] = in ? __float2bfloat16(p.v[kv + (j0 + j) * dh + d]) : zero;
    }
    __syncthreads();
    // S [16 x 64] of this warp = Q_w K^T (K row-major [key][d] is K^T column-major)
    for (int n = 0; n < kKeys / kF; ++n) {
      wmma::fragment<wmma::accumulator, kF, kF, kF, float> sf;
      wmma::fill_fragment(sf, 0.0f);
      for (int kd = 0; kd < dblocks; ++kd) {
        wmma::fragment<wmma::matrix_b, kF, kF, kF, bf16, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, ks + (n * kF) * L.ldh + kd * kF, L.ldh);
        wmma::mma_sync(sf, qf[kd], kf, sf);
      }
      wmma::store_matrix_sync(ss + (warp * kF) * L.lds + n * kF, sf, L.lds, wmma::mem_row_major);
    }
    __syncwarp();
    // online softmax: lanes 2r and 2r + 1 share row r of the warp, 32 columns each
    {
      int r = warp * kF + lane / 2, half = lane % 2;
      int64_t i = i0 + r;
      int64_t visible = i >= p.t ? 0 : (p.causal ? i + p.s - p.t + 1 : p.s);
      float* srow = ss + r * L.lds;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c)
        if (j0 + c < visible) mx = fmaxf(mx, srow[c] * p.scale);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      float m_old = ms[r], m_new = fmaxf(m_old, mx);
      float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);  // m_old = -inf: 0
      float sum = 0.0f;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        float pr = (j0 + c < visible) ? expf(srow[c] * p.scale - m_new) : 0.0f;
        sum += pr;
        ps[r * L.ldp + c] = __float2bfloat16(pr);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      for (int d = half * (dh / 2); d < (half + 1) * (dh / 2); ++d) os[r * L.ldo + d] *= corr;
      __syncwarp();  // both lanes have read ms[r] before it changes
      if (half == 0) ms[r] = m_new, ls[r] = ls[r] * corr + sum;
    }
    __syncwarp();
    // O_w [16 x dh] += P_w [16 x 64] V [64 x dh]
    for (int db = 0; db < dblocks; ++db) {
      wmma::fragment<wmma::accumulator, kF, kF, kF, float> of;
      float* o = os + (warp * kF) * L.ldo + db * kF;
      wmma::load_matrix_sync(of, o, L.ldo, wmma::mem_row_major);
      for (int kk = 0; kk < kKeys / kF; ++kk) {
        wmma::fragment<wmma::matrix_a, kF, kF, kF, bf16, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, kF, kF, kF, bf16, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, ps + (warp * kF) * L.ldp + kk * kF, L.ldp);
        wmma::load_matrix_sync(vf, vs + (kk * kF) * L.ldh + db * kF, L.ldh);
        wmma::mma_sync(of, pf, vf, of);
      }
      wmma::store_matrix_sync(o, of, L.ldo, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = tid; e < kRows * dh; e += blockDim.x) {
    int r = e / dh, d = e % dh;
    if (i0 + r < p.t) p.out[(bh * p.t + i0 + r) * dh + d] = os[r * L.ldo + d] / ls[r];
  }
  if (p.lse && tid < kRows && i0 + tid < p.t)
    p.lse[bh * p.t + i0 + tid] = ms[tid] + logf(ls[tid]);
}

}  // namespace

void attention_tensor_cores(const float* q, const float* k, const float* v, float* out,
                            float* lse, int64_t b, int64_t h, int64_t hkv, int64_t t, int64_t s,
                            int64_t kv_capacity, int64_t dh, float scale, bool causal,
                            uintptr_t stream) {
  if (dh % kF != 0 || dh > 128)
    throw std::runtime_error("attention (cuda): the flash_tc version needs a head size that is "
                             "a multiple of 16 and <= 128");
  if (b * h > 65535) throw std::runtime_error("attention (cuda): too many heads");
  TcArgs p{q, k, v, out, lse, b, h, hkv, t, s, kv_capacity, dh, scale, causal};
  TcLayout layout((int)dh);
  check(cudaFuncSetAttribute(attention_flash_tc, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)layout.total),
        "attention (cuda): shared memory opt-in");
  dim3 grid((unsigned)((t + kRows - 1) / kRows), (unsigned)(b * h));
  attention_flash_tc<<<grid, 32 * kWarps, layout.total, as_stream(stream)>>>(p);
  check(cudaGetLastError(), "attention flash_tc (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
