// Attention backward on the GPU (causal or not, grouped-query heads), float32. Formulas as in
// reference.attention_backward, with P recomputed from the forward's lse:
//
//     P = exp(scale * q k^T - lse)      delta_i = sum_d dout_id * out_id
//     dv = P^T dout                     dS = P * (dout v^T - delta) * scale
//     dq = dS k                         dk = dS^T q
//
// dk and dv sum over the query heads of a group; every sum runs in a fixed order (no atomics),
// so results are the same from run to run.
//
// Versions as in python/kernelgpt/kernels/attention.py (backward):
// version 1 "naive": P materialized in `scores` [b, h, t, s] (one thread per entry), then dv
//            (one thread per output, over the group's heads and queries), P turned into dS in
//            place, then dq and dk (one thread per output). Six small kernels to read first.
// version 2 "flash" (FlashAttention-2 style, no [t, s] matrix): two kernels.
//            dq: a block of 4 warps takes 4 query rows; tiles of 32 keys and values sit in
//            shared memory; lane j recomputes p_ij and ds_ij for key j of the tile, and the
//            warp adds ds_ij * k_j into the row's dq (each lane owning columns lane, lane + 32,
//            ...), broadcasting ds_ij with a shuffle. It also writes delta.
//            dk, dv: a block of 4 warps takes 4 key rows of one kv head; tiles of 32 query
//            rows (q, dout, lse, delta) of each head of the group sit in shared memory; lane i
//            recomputes p_ij and ds_ij, and the warp accumulates p_ij * dout_i into dv_j and
//            ds_ij * q_i into dk_j. Causal blocks start at the first query that sees them.
// Query row i sees keys j <= i + (s - t) when causal (bottom-right aligned, s >= t).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

struct AttnBwdArgs {
  const float *dout, *q, *k, *v, *out, *lse;
  float *dq, *dk, *dv, *delta, *scores;
  int64_t b, h, hkv, t, s, dh;
  float scale;
  bool causal;
};

constexpr int kBwdMaxHead = 128, kBwdPerLane = kBwdMaxHead / 32, kBwdRows = 4, kBwdTile = 32;

// Offset of the key / value rows read by query head bh (= batch * h + head).
__device__ inline int64_t kv_rows_of(const AttnBwdArgs& p, int64_t bh) {
  int64_t bi = bh / p.h, head = bh % p.h;
  return (bi * p.hkv + head / (p.h / p.hkv)) * p.s;
}
__device__ inline bool sees(const AttnBwdArgs& p, int64_t i, int64_t j) {
  return !p.causal || j <= i + p.s - p.t;
}

// ---- version 1: naive ---------------------------------------------------------------------

__global__ void bwd_delta_naive(AttnBwdArgs p) {
  int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (row >= p.b * p.h * p.t) return;
  float sum = 0.0f;
  for (int64_t d = 0; d < p.dh; ++d) sum += p.dout[row * p.dh + d] * p.out[row * p.dh + d];
  p.delta[row] = sum;
}

__global__ void bwd_probs_naive(AttnBwdArgs p) {
  int64_t total = p.b * p.h * p.t * p.s;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = e % p.s, row = e / p.s, i = row % p.t, bh = row / p.t;
    float prob = 0.0f;
    if (sees(p, i, j)) {
      const float* q = p.q + row * p.dh;
      const float* k = p.k + (kv_rows_of(p, bh) + j) * p.dh;
      float dot = 0.0f;
      for (int64_t d = 0; d < p.dh; ++d) dot += q[d] * k[d];
      prob = expf(dot * p.scale - p.lse[row]);
    }
    p.scores[e] = prob;
  }
}

// dv (probs in scores) or dk (dS in scores): out[bkv, j, d] = sum over the group's heads and
// queries of scores[bh, i, j] * rows[bh, i, d], rows = dout or q.
__global__ void bwd_key_side_naive(AttnBwdArgs p, const float* rows, float* out) {
  int64_t total = p.b * p.hkv * p.s * p.dh, group = p.h / p.hkv;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = e % p.dh, j = (e / p.dh) % p.s, bkv = e / (p.dh * p.s);
    int64_t bi = bkv / p.hkv, kvh = bkv % p.hkv;
    float sum = 0.0f;
    for (int64_t g = 0; g < group; ++g) {
      int64_t bh = bi * p.h + kvh * group + g;
      for (int64_t i = 0; i < p.t; ++i)
        sum += p.scores[(bh * p.t + i) * p.s + j] * rows[(bh * p.t + i) * p.dh + d];
    }
    out[e] = sum;
  }
}

__global__ void bwd_ds_naive(AttnBwdArgs p) {
  int64_t total = p.b * p.h * p.t * p.s;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = e % p.s, row = e / p.s, bh = row / p.t;
    const float* dout = p.dout + row * p.dh;
    const float* v = p.v + (kv_rows_of(p, bh) + j) * p.dh;
    float dp = 0.0f;
    for (int64_t d = 0; d < p.dh; ++d) dp += dout[d] * v[d];
    p.scores[e] = p.scores[e] * (dp - p.delta[row]) * p.scale;
  }
}

__global__ void bwd_dq_naive(AttnBwdArgs p) {
  int64_t total = p.b * p.h * p.t * p.dh;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = e % p.dh, row = e / p.dh, bh = row / p.t;
    const float* k = p.k + kv_rows_of(p, bh) * p.dh + d;
    float sum = 0.0f;
    for (int64_t j = 0; j < p.s; ++j) sum += p.scores[row * p.s + j] * k[j * p.dh];
    p.dq[e] = sum;
  }
}

// ---- version 2: flash -----------------------------------------------------------------------

__device__ inline float dot_smem(const float* a, const float* b, int dh) {
  float sum = 0.0f;
  for (int d = 0; d < dh; ++d) sum += a[d] * b[d];
  return sum;
}

__global__ void bwd_flash_dq(AttnBwdArgs p) {
  extern __shared__ float smem[];
  const int dh = (int)p.dh, stride = dh + 1;
  float* ks = smem;                          // [32][dh + 1]
  float* vs = ks + kBwdTile * stride;        // [32][dh + 1]
  float* qs = vs + kBwdTile * stride;        // [4][dh]
  float* dos = qs + kBwdRows * dh;           // [4][dh]
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t bh = blockIdx.y, i = blockIdx.x * (int64_t)kBwdRows + warp, row = bh * p.t + i;
  bool active = i < p.t;
  float delta = 0.0f;
  for (int d = lane; d < dh; d += 32) {
    float q = active ? p.q[row * dh + d] : 0.0f, g = active ? p.dout[row * dh + d] : 0.0f;
    qs[warp * dh + d] = q;
    dos[warp * dh + d] = g;
    delta += g * (active ? p.out[row * dh + d] : 0.0f);
  }
  delta = warp_sum(delta);
  if (active && lane == 0) p.delta[row] = delta;
  float lse = active ? p.lse[row] : 0.0f;
  const float* kbase = p.k + kv_rows_of(p, bh) * dh;
  const float* vbase = p.v + kv_rows_of(p, bh) * dh;
  int64_t last = min(p.t - 1, blockIdx.x * (int64_t)kBwdRows + kBwdRows - 1);
  int64_t limit = p.causal ? min(p.s, last + p.s - p.t + 1) : p.s;
  int64_t mine = !active ? 0 : (p.causal ? min(p.s, i + p.s - p.t + 1) : p.s);
  float acc[kBwdPerLane] = {};
  for (int64_t j0 = 0; j0 < limit; j0 += kBwdTile) {
    __syncthreads();  // the previous tile is used up (and, the first time, qs / dos are written)
    for (int e = threadIdx.x; e < kBwdTile * dh; e += blockDim.x) {
      int j = e / dh, d = e % dh;
      bool in = j0 + j < p.s;
      ks[j * stride + d] = in ? kbase[(j0 + j) * dh + d] : 0.0f;
      vs[j * stride + d] = in ? vbase[(j0 + j) * dh + d] : 0.0f;
    }
    __syncthreads();
    int visible = (int)max((int64_t)0, min((int64_t)kBwdTile, mine - j0));
    float ds = 0.0f;
    if (lane < visible) {
      float prob = expf(dot_smem(qs + warp * dh, ks + lane * stride, dh) * p.scale - lse);
      float dp = dot_smem(dos + warp * dh, vs + lane * stride, dh);
      ds = prob * (dp - delta) * p.scale;
    }
    for (int j = 0; j < visible; ++j) {
      float dsj = __shfl_sync(0xffffffffu, ds, j);
      for (int u = 0; u < kBwdPerLane; ++u) {
        int d = lane + 32 * u;
        if (d < dh) acc[u] += dsj * ks[j * stride + d];
      }
    }
  }
  if (active)
    for (int u = 0; u < kBwdPerLane; ++u) {
      int d = lane + 32 * u;
      if (d < dh) p.dq[row * dh + d] = acc[u];
    }
}

__global__ void bwd_flash_dkdv(AttnBwdArgs p) {
  extern __shared__ float smem[];
  const int dh = (int)p.dh, stride = dh + 1;
  float* qs = smem;                          // [32][dh + 1]
  float* dos = qs + kBwdTile * stride;       // [32][dh + 1]
  float* ls = dos + kBwdTile * stride;       // [32] lse
  float* deltas = ls + kBwdTile;             // [32] delta
  float* kr = deltas + kBwdTile;             // [4][dh]
  float* vr = kr + kBwdRows * dh;            // [4][dh]
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t bkv = blockIdx.y, bi = bkv / p.hkv, kvh = bkv % p.hkv, group = p.h / p.hkv;
  int64_t j0 = blockIdx.x * (int64_t)kBwdRows, j = j0 + warp;
  bool active = j < p.s;
  for (int d = lane; d < dh; d += 32) {
    kr[warp * dh + d] = active ? p.k[(bkv * p.s + j) * dh + d] : 0.0f;
    vr[warp * dh + d] = active ? p.v[(bkv * p.s + j) * dh + d] : 0.0f;
  }
  // the first query row that sees key j0 (and so any key of the block)
  int64_t first = p.causal ? max((int64_t)0, j0 - (p.s - p.t)) : 0;
  float dk[kBwdPerLane] = {}, dv[kBwdPerLane] = {};
  for (int64_t g = 0; g < group; ++g) {
    int64_t bh = bi * p.h + kvh * group + g;
    for (int64_t i0 = first; i0 < p.t; i0 += kBwdTile) {
      __syncthreads();  // the previous tile is used up (the first time: kr / vr are written)
      for (int e = threadIdx.x; e < kBwdTile * dh; e += blockDim.x) {
        int ii = e / dh, d = e % dh;
        bool in = i0 + ii < p.t;
        int64_t at = (bh * p.t + i0 + ii) * dh + d;
        qs[ii * stride + d] = in ? p.q[at] : 0.0f;
        dos[ii * stride + d] = in ? p.dout[at] : 0.0f;
      }
      if (threadIdx.x < kBwdTile) {
        bool in = i0 + threadIdx.x < p.t;
        ls[threadIdx.x] = in ? p.lse[bh * p.t + i0 + threadIdx.x] : 0.0f;
        deltas[threadIdx.x] = in ? p.delta[bh * p.t + i0 + threadIdx.x] : 0.0f;
      }
      __syncthreads();
      int64_t i = i0 + lane;
      float prob = 0.0f, ds = 0.0f;
      if (active && i < p.t && sees(p, i, j)) {
        prob = expf(dot_smem(qs + lane * stride, kr + warp * dh, dh) * p.scale - ls[lane]);
        float dp = dot_smem(dos + lane * stride, vr + warp * dh, dh);
        ds = prob * (dp - deltas[lane]) * p.scale;
      }
      int n = (int)min((int64_t)kBwdTile, p.t - i0);
      for (int ii = 0; ii < n; ++ii) {
        float pi = __shfl_sync(0xffffffffu, prob, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        for (int u = 0; u < kBwdPerLane; ++u) {
          int d = lane + 32 * u;
          if (d < dh) {
            dv[u] += pi * dos[ii * stride + d];
            dk[u] += dsi * qs[ii * stride + d];
          }
        }
      }
    }
  }
  if (active)
    for (int u = 0; u < kBwdPerLane; ++u) {
      int d = lane + 32 * u;
      if (d < dh) {
        p.dk[(bkv * p.s + j) * dh + d] = dk[u];
        p.dv[(bkv * p.s + j) * dh + d] = dv[u];
      }
    }
}

// ---- launcher -------------------------------------------------------------------------------

void attention_backward(int version, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, float* dq, float* dk,
                        float* dv, float* delta, float* scores, int64_t b, int64_t h, int64_t hkv,
                        int64_t t, int64_t s, int64_t dh, float scale, bool causal,
                        uintptr_t stream) {
  AttnBwdArgs p{dout, q, k, v, out, lse, dq, dk, dv, delta, scores, b, h, hkv, t, s, dh,
                scale, causal};
  cudaStream_t st = as_stream(stream);
  if (hkv <= 0 || h % hkv != 0)
    throw std::runtime_error("attention_backward (cuda): h % hkv != 0");
  if (causal && s < t) throw std::runtime_error("attention_backward (cuda): causal needs s >= t");
  int64_t rows = b * h * t;
  if (version == 1) {
    if (!scores)
      throw std::runtime_error("attention_backward (cuda): the naive version needs scores");
    bwd_delta_naive<<<(unsigned)((rows + 127) / 128), 128, 0, st>>>(p);
    bwd_probs_naive<<<grid_for(rows * s, 256), 256, 0, st>>>(p);
    bwd_key_side_naive<<<grid_for(b * hkv * s * dh, 256), 256, 0, st>>>(p, dout, dv);
    bwd_ds_naive<<<grid_for(rows * s, 256), 256, 0, st>>>(p);
    bwd_dq_naive<<<grid_for(rows * dh, 256), 256, 0, st>>>(p);
    bwd_key_side_naive<<<grid_for(b * hkv * s * dh, 256), 256, 0, st>>>(p, q, dk);
  } else {
    if (dh > kBwdMaxHead)
      throw std::runtime_error("attention_backward (cuda): the flash version needs head size "
                               "<= 128 (use the naive version)");
    if (b * h > 65535 || b * hkv > 65535)
      throw std::runtime_error("attention_backward (cuda): too many heads");
    size_t tiles = sizeof(float) * (2 * kBwdTile * (dh + 1) + 2 * kBwdRows * dh);
    dim3 grid_q((unsigned)((t + kBwdRows - 1) / kBwdRows), (unsigned)(b * h));
    bwd_flash_dq<<<grid_q, 32 * kBwdRows, tiles, st>>>(p);
    dim3 grid_k((unsigned)((s + kBwdRows - 1) / kBwdRows), (unsigned)(b * hkv));
    bwd_flash_dkdv<<<grid_k, 32 * kBwdRows, tiles + sizeof(float) * 2 * kBwdTile, st>>>(p);
  }
  check(cudaGetLastError(), "attention_backward (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
