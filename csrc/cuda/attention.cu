// Scaled dot-product attention forward on the GPU (causal or not, grouped-query heads, a KV
// cache read in place), float32. Formulas and masks as in ops.attention.
//
// Versions as in python/kernelgpt/kernels/attention.py:
// version 1 "naive": the score matrix [b, h, t, s] is materialized (one thread per score),
//            softmax'd in place (one thread per row) and multiplied by V (one thread per
//            output element). Three kernels, O(t * s) memory: the one to read first.
// version 2 "flash": a block of 4 warps takes 4 consecutive query rows of one head; tiles of
//            32 keys and values are staged in shared memory and shared by the 4 rows. Lane j
//            of a warp scores key j of the tile, the warp keeps an online softmax (running
//            max m, sum l, rescaled output accumulators, each lane owning columns lane,
//            lane + 32, ...): the scores never leave registers. dh <= 128.
// version 3 "decode" (few queries against a long cache): one block per query row; its 8 warps
//            split the keys (tiles of 32, round robin), each keeps the same online state as
//            version 2 straight from global memory, and the 8 states are merged at the end.
//            dh <= 128.
// version 4 "flash_tc": version 2's algorithm with both products on tensor cores (WMMA, bf16
//            inputs, float accumulation): csrc/cuda/attention_tc.cu.
// Query row i sees keys j <= i + (s - t) when causal (bottom-right aligned, as in a KV cache).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  float* lse;
  float* scores;
  int64_t b, h, hkv, t, s, cap, dh;
  float scale;
  bool causal;
  const int64_t* s_dev;  // decode: the number of keys, read on the device (or null: s)
};

constexpr int kMaxHead = 128, kPerLane = kMaxHead / 32;

// Start of the keys / values that query head `bh` (= batch * h + head) reads.
__device__ inline int64_t kv_offset(const AttentionArgs& p, int64_t bh) {
  int64_t bi = bh / p.h, head = bh % p.h;
  return (bi * p.hkv + head / (p.h / p.hkv)) * p.cap * p.dh;
}
// Number of keys query row i may see.
__device__ inline int64_t visible_keys(const AttentionArgs& p, int64_t i) {
  return p.causal ? i + p.s - p.t + 1 : p.s;
}

// ---- version 1: naive ---------------------------------------------------------------------

__global__ void attention_scores_naive(AttentionArgs p) {
  int64_t total = p.b * p.h * p.t * p.s;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = e % p.s, i = (e / p.s) % p.t, bh = e / (p.s * p.t);
    if (j >= visible_keys(p, i)) {
      p.scores[e] = -INFINITY;
      continue;
    }
    const float* q = p.q + (bh * p.t + i) * p.dh;
    const float* k = p.k + kv_offset(p, bh) + j * p.dh;
    float dot = 0.0f;
    for (int64_t d = 0; d < p.dh; ++d) dot += q[d] * k[d];
    p.scores[e] = dot * p.scale;
  }
}

__global__ void attention_softmax_naive(AttentionArgs p) {
  int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (row >= p.b * p.h * p.t) return;
  float* sr = p.scores + row * p.s;
  float mx = -INFINITY;
  for (int64_t j = 0; j < p.s; ++j) mx = fmaxf(mx, sr[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < p.s; ++j) sum += expf(sr[j] - mx);
  for (int64_t j = 0; j < p.s; ++j) sr[j] = expf(sr[j] - mx) / sum;  // masked: exp(-inf) = 0
  if (p.lse) p.lse[row] = mx + logf(sum);
}

__global__ void attention_values_naive(AttentionArgs p) {
  int64_t total = p.b * p.h * p.t * p.dh;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = e % p.dh, row = e / p.dh, bh = row / p.t;
    const float* pr = p.scores + row * p.s;
    const float* v = p.v + kv_offset(p, bh) + d;
    float sum = 0.0f;
    for (int64_t j = 0; j < p.s; ++j) sum += pr[j] * v[j * p.dh];
    p.out[e] = sum;
  }
}

// ---- the online-softmax state of one query row, held by one warp (versions 2 and 3) -------

struct RowState {
  float m, l, acc[kPerLane];  // running max, running sum, this lane's output columns
};

__device__ inline void row_start(RowState& st) {
  st.m = -INFINITY;
  st.l = 0.0f;
  for (int u = 0; u < kPerLane; ++u) st.acc[u] = 0.0f;
}

// Adds the first `visible` (0..32, the same for the whole warp) keys of a tile: key j at
// k[j * kstride], value j at v[j * vstride]. q: the row's query (dh floats).
__device__ inline void row_attend(RowState& st, const float* q, const float* k, int64_t kstride,
                                  const float* v, int64_t vstride, int visible, int dh,
                                  float scale) {
  if (visible <= 0) return;
  int lane = threadIdx.x % 32;
  float sc = -INFINITY;
  if (lane < visible) {
    float dot = 0.0f;
    for (int d = 0; d < dh; ++d) dot += q[d] * k[lane * kstride + d];
    sc = dot * scale;
  }
  float m_new = fmaxf(st.m, warp_max(sc));
  float correction = expf(st.m - m_new);  // 0 on the first tile (m = -inf)
  float prob = lane < visible ? expf(sc - m_new) : 0.0f;
  st.l = st.l * correction + warp_sum(prob);
  for (int u = 0; u < kPerLane; ++u) st.acc[u] *= correction;
  for (int j = 0; j < visible; ++j) {
    float pj = __shfl_sync(0xffffffffu, prob, j);
    for (int u = 0; u < kPerLane; ++u) {
      int d = lane + 32 * u;
      if (d < dh) st.acc[u] += pj * v[j * vstride + d];
    }
  }
  st.m = m_new;
}

__device__ inline void row_finish(const RowState& st, const AttentionArgs& p, int64_t row) {
  int lane = threadIdx.x % 32;
  float inv = 1.0f / st.l;
  for (int u = 0; u < kPerLane; ++u) {
    int d = lane + 32 * u;
    if (d < p.dh) p.out[row * p.dh + d] = st.acc[u] * inv;
  }
  if (lane == 0 && p.lse) p.lse[row] = st.m + logf(st.l);
}

// ---- version 2: flash ---------------------------------------------------------------------

constexpr int kFlashRows = 4, kKeyTile = 32;

__global__ void attention_flash(AttentionArgs p) {
  extern __shared__ float smem[];
  const int dh = (int)p.dh;
  float* ks = smem;                           // [32][dh + 1] (+1: lanes hit distinct banks)
  float* vs = ks + kKeyTile * (dh + 1);       // [32][dh]
  float* qs = vs + kKeyTile * dh;             // [4][dh]
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t bh = blockIdx.y;
  int64_t i = blockIdx.x * (int64_t)kFlashRows + warp;  // this warp's query row
  bool active = i < p.t;
  const float* kbase = p.k + kv_offset(p, bh);
  const float* vbase = p.v + kv_offset(p, bh);
  if (active)
    for (int d = lane; d < dh; d += 32) qs[warp * dh + d] = p.q[(bh * p.t + i) * dh + d];
  // keys any row of this block sees
  int64_t last_row = min(p.t - 1, blockIdx.x * (int64_t)kFlashRows + kFlashRows - 1);
  int64_t limit = min(p.s, visible_keys(p, last_row));
  int64_t mine = active ? min(p.s, visible_keys(p, i)) : 0;
  RowState st;
  row_start(st);
  for (int64_t j0 = 0; j0 < limit; j0 += kKeyTile) {
    __syncthreads();  // the previous tile is used up
    for (int e = threadIdx.x; e < kKeyTile * dh; e += blockDim.x) {
      int j = e / dh, d = e % dh;
      bool in = j0 + j < p.s;
      ks[j * (dh + 1) + d] = in ? kbase[(j0 + j) * dh + d] : 0.0f;
      vs[j * dh + d] = in ? vbase[(j0 + j) * dh + d] : 0.0f;
    }
    __syncthreads();
    int visible = (int)max((int64_t)0, min((int64_t)kKeyTile, mine - j0));
    row_attend(st, qs + warp * dh, ks, dh + 1, vs, dh, visible, dh, p.scale);
  }
  if (active) row_finish(st, p, bh * p.t + i);
}

// ---- version 3: decode --------------------------------------------------------------------

constexpr int kDecodeWarps = 8;

__global__ void kv_write_kernel(float* cache, const float* src, const int64_t* pos, int64_t hkv,
                                int64_t cap, int64_t dh) {
  int64_t at = *pos;
  if (at < 0 || at >= cap) return;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < hkv * dh;
       e += (int64_t)gridDim.x * blockDim.x)
    cache[((e / dh) * cap + at) * dh + e % dh] = src[e];
}

__global__ void attention_decode(AttentionArgs p) {
  __shared__ float qs[kMaxHead];
  __shared__ float part_m[kDecodeWarps];
  __shared__ float part_l[kDecodeWarps];
  __shared__ float part_acc[kDecodeWarps][kMaxHead];
  const int dh = (int)p.dh;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t row = blockIdx.x, bh = row / p.t, i = row % p.t;
  for (int d = threadIdx.x; d < dh; d += blockDim.x) qs[d] = p.q[row * dh + d];
  __syncthreads();
  const float* kbase = p.k + kv_offset(p, bh);
  const float* vbase = p.v + kv_offset(p, bh);
  int64_t s = p.s_dev ? min(max(*p.s_dev, (int64_t)1), p.cap) : p.s;
  int64_t mine = min(s, p.causal ? i + s - p.t + 1 : s);
  RowState st;
  row_start(st);
  for (int64_t j0 = warp * (int64_t)kKeyTile; j0 < mine; j0 += kDecodeWarps * kKeyTile) {
    int visible = (int)min((int64_t)kKeyTile, mine - j0);
    row_attend(st, qs, kbase + j0 * dh, dh, vbase + j0 * dh, dh, visible, dh, p.scale);
  }
  // merge the warps' states: rescale each to the common max
  if (lane == 0) part_m[warp] = st.m, part_l[warp] = st.l;
  for (int u = 0; u < kPerLane; ++u)
    if (lane + 32 * u < dh) part_acc[warp][lane + 32 * u] = st.acc[u];
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, part_m[w]);
  float l = 0.0f;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (part_m[w] != -INFINITY) l += part_l[w] * expf(part_m[w] - m);  // idle warps add 0
  for (int d = threadIdx.x; d < dh; d += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w)
      if (part_m[w] != -INFINITY) sum += part_acc[w][d] * expf(part_m[w] - m);
    p.out[row * dh + d] = sum / l;
  }
  if (threadIdx.x == 0 && p.lse) p.lse[row] = m + logf(l);
}

// ---- launchers ------------------------------------------------------------------------------

void kv_write(float* cache, const float* src, const int64_t* pos, int64_t hkv, int64_t cap,
              int64_t dh, uintptr_t stream) {
  kv_write_kernel<<<grid_for(hkv * dh, 256), 256, 0, as_stream(stream)>>>(cache, src, pos, hkv,
                                                                          cap, dh);
  check(cudaGetLastError(), "kv_write (cuda) launch");
}

void attention(int version, const float* q, const float* k, const float* v, float* out,
               float* lse, float* scores, int64_t b, int64_t h, int64_t hkv, int64_t t,
               int64_t s, int64_t kv_capacity, int64_t dh, float scale, bool causal,
               const int64_t* s_dev, uintptr_t stream) {
  AttentionArgs p{q, k, v, out, lse, scores, b, h, hkv, t, s, kv_capacity, dh, scale, causal,
                  s_dev};
  if (s_dev && version != 3)
    throw std::runtime_error("attention (cuda): a device-side key count needs the decode "
                             "version");
  cudaStream_t st = as_stream(stream);
  if (hkv <= 0 || h % hkv != 0) throw std::runtime_error("attention (cuda): h % hkv != 0");
  if (causal && s < t) throw std::runtime_error("attention (cuda): causal needs s >= t");
  if (s > kv_capacity) throw std::runtime_error("attention (cuda): s > kv capacity");
  if (version == 4) {
    attention_tensor_cores(q, k, v, out, lse, b, h, hkv, t, s, kv_capacity, dh, scale, causal,
                           stream);
    return;
  }
  if (version == 1) {
    if (!scores) throw std::runtime_error("attention (cuda): the naive version needs scores");
    int64_t rows = b * h * t;
    attention_scores_naive<<<grid_for(rows * s, 256), 256, 0, st>>>(p);
    attention_softmax_naive<<<(unsigned)((rows + 127) / 128), 128, 0, st>>>(p);
    attention_values_naive<<<grid_for(rows * dh, 256), 256, 0, st>>>(p);
  } else {
    if (dh > kMaxHead)
      throw std::runtime_error("attention (cuda): the flash and decode versions need head "
                               "size <= 128 (use the naive version)");
    if (b * h > 65535 || b * h * t > 0x7fffffff)
      throw std::runtime_error("attention (cuda): too many heads or rows");
    if (version == 2) {
      dim3 grid((unsigned)((t + kFlashRows - 1) / kFlashRows), (unsigned)(b * h));
      size_t shared = sizeof(float) * (kKeyTile * (dh + 1) + kKeyTile * dh + kFlashRows * dh);
      attention_flash<<<grid, 32 * kFlashRows, shared, st>>>(p);
    } else {
      attention_decode<<<(unsigned)(b * h * t), 32 * kDecodeWarps, 0, st>>>(p);
    }
  }
  check(cudaGetLastError(), "attention (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
