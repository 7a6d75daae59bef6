// attention: out = softmax(scale * q k^T + causal mask) v, forward and backward.
// Shapes and the causal convention in attention.h.
//
// version 1 (naive): per (batch, head) the whole T x S score matrix, a softmax per row, then
//   P @ V. The backward walks the query rows through the textbook gradient. One thread.
// version 2 (flash): flash attention. Queries in blocks of BQ, keys in blocks of BK; a block of
//   scores never leaves L1 and the T x S matrix never exists. Each query keeps a running max m,
//   a running sum l and an unnormalised output accumulator; a new key block with a larger max
//   rescales them by exp(m_old - m_new) ("online softmax"). The two products per tile (Q K^T and
//   P V) are register-blocked SIMD micro-GEMMs (`tile` of microkernel.h, matmul's microkernel,
//   here reading A in place: rows or columns with a stride). The forward puts queries in the
//   vector lanes, so the softmax statistics are plain vectors and K, V are read in place;
//   causal key blocks entirely above the diagonal are skipped, the diagonal ones masked.
//   Threads take (batch, head, query block) items in contiguous, cost-balanced ranges (later
//   query blocks see more keys).
//   The backward (flash-attention-2) recomputes P = exp(S - lse) tile by tile with the keys in
//   the lanes: a key block accumulates its dK, dV over every query (of every query head that
//   shares its kv head) in L1 and adds its share of dQ to a per-thread partial. Threads take
//   whole (batch, kv head) groups when there are enough to go round evenly; otherwise they
//   split each group's key blocks and sum their dQ partials in thread order (deterministic).
// version 3 (decode): few queries (T == 1: the next token) against a long KV cache. The query
//   heads that share a kv head are processed together so K and V are read once; scores are
//   dot products (keys in the lanes after a transpose-reduce); when there are few (batch,
//   kv head) pairs the keys are split (split-K) and the partial (max, sum, output) triples are
//   merged in a fixed order. The split depends on the shapes only, never on the thread count
//   or schedule, so the result does not either. Correct for any T, fast for small.
//
// NaN/inf: finite input never gives NaN or inf (hidden keys get exp(-inf) = 0 and every query
// sees key 0, so no running max stays -inf). A NaN in q or k makes NaN the query rows whose
// visible scores it reaches; an inf does too (inf - inf) unless its score is -inf (weight 0).
// A NaN or inf in v reaches the rows that weight it, and possibly rows of the same tile that
// mask it (0 * NaN = NaN), as in the naive version and the numpy reference.
#include "kernels/attention.h"

#include <cmath>
#include <cstdlib>
#include <new>

#include "common/simd.h"
#include "common/workspace.h"
#include "common/threading.h"
#include "kernels/fp16.h"
#include "kernels/microkernel.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

thread_local Workspace tl_workspace;
thread_local Workspace tl_widened_kv;

// A half-precision KV cache (p.k16, p.v16) for the naive and flash versions: the filled rows
// widened once into a float32 copy [B, Hkv, S, D], and args that read it. (The decode version
// widens a chunk of keys at a time instead, in L2.)
AttentionArgs widened_kv(const AttentionArgs& p) {
  const int64_t rows = p.s * p.d, groups = p.batch * p.kv_heads, stride = p.kv_rows() * p.d;
  float* buf = tl_widened_kv.get(2 * groups * rows);
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      halves_to_floats(p.k16 + g * stride, buf + g * rows, rows);
      halves_to_floats(p.v16 + g * stride, buf + (groups + g) * rows, rows);
    }
  });
  AttentionArgs a = p;
  a.k = buf;
  a.v = buf + groups * rows;
  a.k16 = a.v16 = nullptr;
  a.kv_capacity = p.s;
  return a;
}

void to_half(const float* x, uint16_t* out, int64_t n) { floats_to_halves(x, out, n); }

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- version 1: naive --------------------------------------------------------------------
void attention_naive(const AttentionArgs& p) {
  if (p.k16) return attention_naive(widened_kv(p));
  const int64_t T = p.t, S = p.s, D = p.d, group = p.heads / p.kv_heads;
  const int64_t offset = S - T;  // causal: query i sees keys j <= i + offset
  float* scores = tl_workspace.get(T * S);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const float* q = p.q + (b * p.heads + h) * T * D;
      const float* k = p.k + (b * p.kv_heads + h / group) * p.kv_rows() * D;
      const float* v = p.v + (b * p.kv_heads + h / group) * p.kv_rows() * D;
      float* out = p.out + (b * p.heads + h) * T * D;
      // 1. scores[i][j] = scale * q_i . k_j, or -inf where the causal mask hides key j
      for (int64_t i = 0; i < T; ++i) {
        for (int64_t j = 0; j < S; ++j) {
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) dot += q[i * D + d] * k[j * D + d];
          bool hidden = p.causal && j > i + offset;
          scores[i * S + j] = hidden ? -INFINITY : dot * p.scale;
        }
      }
      // 2. softmax of each row (minus its max, so exp never overflows); keep logsumexp
      for (int64_t i = 0; i < T; ++i) {
        float* row = scores + i * S;
        float mx = -INFINITY;
        for (int64_t j = 0; j < S; ++j) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        for (int64_t j = 0; j < S; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        for (int64_t j = 0; j < S; ++j) row[j] /= sum;
        if (p.lse) p.lse[(b * p.heads + h) * T + i] = mx + std::log(sum);
      }
      // 3. out = P @ V
      for (int64_t i = 0; i < T; ++i) {
        for (int64_t d = 0; d < D; ++d) {
          float acc = 0.0f;
          for (int64_t j = 0; j < S; ++j) acc += scores[i * S + j] * v[j * D + d];
          out[i * D + d] = acc;
        }
      }
    }
  }
}

// Backward of out = softmax(scale * q k^T) v, one query row at a time:
//   p_ij  = exp(scale * q_i . k_j - lse_i)          (the forward's probabilities, recomputed)
//   dv_j += p_ij * dout_i
//   dp_ij = dout_i . v_j
//   ds_ij = p_ij * (dp_ij - delta_i),  delta_i = dout_i . out_i  (= sum_j p_ij dp_ij)
//   dq_i  = scale * sum_j ds_ij k_j,   dk_j += scale * ds_ij q_i
void attention_naive_backward(const AttentionBackwardArgs& p) {
  const int64_t T = p.t, S = p.s, D = p.d, group = p.heads / p.kv_heads;
  const int64_t offset = S - T;
  for (int64_t i = 0; i < p.batch * p.kv_heads * S * D; ++i) p.dk[i] = p.dv[i] = 0.0f;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t qh = (b * p.heads + h) * T, kh = (b * p.kv_heads + h / group) * S;
      const float* k = p.k + kh * D;
      const float* v = p.v + kh * D;
      float* dk = p.dk + kh * D;
      float* dv = p.dv + kh * D;
      for (int64_t i = 0; i < T; ++i) {
        const float* q = p.q + (qh + i) * D;
        const float* dout = p.dout + (qh + i) * D;
        const float* out = p.out + (qh + i) * D;
        float* dq = p.dq + (qh + i) * D;
        float delta = 0.0f;
        for (int64_t d = 0; d < D; ++d) delta += dout[d] * out[d];
        for (int64_t d = 0; d < D; ++d) dq[d] = 0.0f;
        for (int64_t j = 0; j < S; ++j) {
          if (p.causal && j > i + offset) break;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) dot += q[d] * k[j * D + d];
          float prob = std::exp(dot * p.scale - p.lse[qh + i]);
          float dp = 0.0f;
          for (int64_t d = 0; d < D; ++d) dp += dout[d] * v[j * D + d];
          float ds = prob * (dp - delta) * p.scale;
          for (int64_t d = 0; d < D; ++d) {
            dv[j * D + d] += prob * dout[d];
            dq[d] += ds * k[j * D + d];
            dk[j * D + d] += ds * q[d];
          }
        }
      }
    }
  }
}

// ---- the micro-GEMM shared by versions 2 and 3 -------------------------------------------
using microkernel::Init;
using microkernel::tile;
constexpr int MR = microkernel::kRows;  // rows of a tile (broadcast operand)
constexpr int NV = microkernel::kVecs;  // vectors per tile row (8 x 48 with AVX-512)
#if defined(__AVX512F__)
constexpr int MR_DQ = 6;  // the backward's dQ tile: 6 rows x 4 vectors of head dimension
constexpr int NV_DQ = 4;
#else
constexpr int MR_DQ = 6;
constexpr int NV_DQ = 2;
#endif
constexpr int kMaxRows = MR > MR_DQ ? MR : MR_DQ;
constexpr int kMaxVecs = NV > NV_DQ ? NV : NV_DQ;

// tile<R, NVT> for R and NVT known only at run time (edges of blocks).
template <int R, bool kACols>
void tile_v(int nvt, int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb,
            float* c, int64_t ldc, Init init, const float* c_scale) {
  switch (nvt) {
    case 1: return tile<R, 1, kACols>(kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 2: return tile<R, 2, kACols>(kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 3:
      if constexpr (kMaxVecs >= 3) return tile<R, 3, kACols>(kc, a, lda, b, ldb, c, ldc, init, c_scale);
      break;
    case 4:
      if constexpr (kMaxVecs >= 4) return tile<R, 4, kACols>(kc, a, lda, b, ldb, c, ldc, init, c_scale);
      break;
  }
}

template <bool kACols>
void tile_rv(int rows, int nvt, int64_t kc, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc, Init init, const float* c_scale = nullptr) {
  switch (rows) {
    case 1: return tile_v<1, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 2: return tile_v<2, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 3: return tile_v<3, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 4: return tile_v<4, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 5: return tile_v<5, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 6: return tile_v<6, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
    case 7:
      if constexpr (kMaxRows >= 7) return tile_v<7, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
      break;
    case 8:
      if constexpr (kMaxRows >= 8) return tile_v<8, kACols>(nvt, kc, a, lda, b, ldb, c, ldc, init, c_scale);
      break;
  }
}

// The rows [0, rows) of C = init + A B for any `rows`, in full-height tiles of MR rows of NV
// vectors; kACols as in `tile`.
template <bool kACols>
void gemm_rows(int64_t rows, int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb,
               float* c, int64_t ldc, Init init, const float* c_scale = nullptr) {
  for (int64_t r = 0; r < rows; r += MR) {
    int R = static_cast<int>(min64(MR, rows - r));
    const float* ar = kACols ? a + r : a + r * lda;
    if (R == MR)
      tile<MR, NV, kACols>(kc, ar, lda, b, ldb, c + r * ldc, ldc, init, c_scale);
    else
      tile_rv<kACols>(R, NV, kc, ar, lda, b, ldb, c + r * ldc, ldc, init, c_scale);
  }
}

// Vectors of lane indices 0, 1, ..., NV * kWidth - 1 (as floats), for masks.
struct LaneIndex {
  vfloat v[kMaxVecs];
  LaneIndex() {
    for (int i = 0; i < kMaxVecs; ++i)
      for (int l = 0; l < kWidth; ++l) v[i][l] = static_cast<float>(i * kWidth + l);
  }
};

// Splits `n` items with costs cost(i) into `count` contiguous ranges of about equal total cost;
// calls f(i) for the items of range `t`. Every thread computes the same split (static).
template <class Cost, class F>
void for_my_share(int64_t n, int t, int count, Cost cost, F f) {
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += cost(i);
  int64_t before = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t c = cost(i);
    int64_t owner = total > 0 ? (before + c / 2) * count / total : 0;
    before += c;
    if (owner == t) f(i);
  }
}

constexpr int64_t kMinFlopsPerThread = int64_t(1) << 21;

// ---- version 2: flash forward ------------------------------------------------------------
constexpr int64_t BQ = NV * kWidth;  // queries per block: the lanes of one tile row
#ifndef KG_ATT_BK
#define KG_ATT_BK (8 * MR)  // (measured: 32, 64, 96 and 128 are within noise of each other)
#endif
constexpr int64_t BK = KG_ATT_BK;    // keys per block (64 with AVX-512)

// One block of `rows` <= BQ queries of head (b, h), starting at query i0. Scratch: Qt and Ot
// [D][BQ], St [BK][BQ] (queries in the lanes everywhere).
void flash_forward_block(const AttentionArgs& p, int64_t b, int64_t h, int64_t i0,
                         float* scratch) {
  const int64_t T = p.t, S = p.s, D = p.d, group = p.heads / p.kv_heads;
  const int64_t offset = S - T, rows = min64(BQ, T - i0);
  const float* q = p.q + ((b * p.heads + h) * T + i0) * D;
  const float* k = p.k + (b * p.kv_heads + h / group) * p.kv_rows() * D;
  const float* v = p.v + (b * p.kv_heads + h / group) * p.kv_rows() * D;
  float* qt = scratch;       // Qt[d][i] = scale * q[i][d]  (0 for the lanes past `rows`)
  float* ot = qt + D * BQ;   // Ot[d][i]: unnormalised output
  float* st = ot + D * BQ;   // St[j][i]: scores, then probabilities, of one key block
  for (int64_t i = 0; i < BQ; ++i)
    for (int64_t d = 0; d < D; ++d) qt[d * BQ + i] = i < rows ? q[i * D + d] * p.scale : 0.0f;

  static const LaneIndex lane;
  vfloat m[NV], l[NV];  // running max and sum of each query (lane)
  for (int u = 0; u < NV; ++u) {
    m[u] = broadcast(-INFINITY);
    l[u] = zero();
  }
  // The last query of the block sees keys < key_end; the first key block holds key 0, which
  // every query sees, so after it every running max is finite.
  const int64_t key_end = p.causal ? min64(S, i0 + rows + offset) : S;
  for (int64_t j0 = 0; j0 < key_end; j0 += BK) {
    const int64_t kb = min64(BK, key_end - j0);
    // 1. St = K[j0:j0+kb] Qt  (scores of kb keys x BQ queries)
    gemm_rows<false>(kb, D, k + j0 * D, D, qt, BQ, st, BQ, Init::kZero);
    // 2. causal: key j is hidden from the lanes i < j - offset - i0
    if (p.causal && j0 + kb - 1 > i0 + offset) {
      for (int64_t jj = max64(0, i0 + offset + 1 - j0); jj < kb; ++jj) {
        vfloat first_seen = broadcast(static_cast<float>(j0 + jj - offset - i0));
        for (int u = 0; u < NV; ++u) {
          vfloat s = load(st + jj * BQ + u * kWidth);
          store(st + jj * BQ + u * kWidth, lane.v[u] < first_seen ? broadcast(-INFINITY) : s);
        }
      }
    }
    // 3. online softmax: new max, rescale factor, probabilities, running sum
    vfloat m_new[NV], sum[NV];
    alignas(64) float alpha[BQ];  // as floats: the micro-GEMM loads its factors from memory
    for (int u = 0; u < NV; ++u) m_new[u] = m[u];
    for (int64_t jj = 0; jj < kb; ++jj)
      for (int u = 0; u < NV; ++u) m_new[u] = max(m_new[u], load(st + jj * BQ + u * kWidth));
    for (int u = 0; u < NV; ++u) {
      store(alpha + u * kWidth, exp_upto88(m[u] - m_new[u]));  // exp(-inf) = 0 on block 0
      m[u] = m_new[u];
      sum[u] = zero();
    }
    for (int64_t jj = 0; jj < kb; ++jj)
      for (int u = 0; u < NV; ++u) {
        vfloat e = exp_upto88(load(st + jj * BQ + u * kWidth) - m[u]);
        store(st + jj * BQ + u * kWidth, e);
        sum[u] += e;
      }
    for (int u = 0; u < NV; ++u) l[u] = l[u] * load(alpha + u * kWidth) + sum[u];
    // 4. Ot = Ot * alpha + V[j0:j0+kb]^T Pt  (rows of Ot are head dimensions)
    gemm_rows<true>(D, kb, v + j0 * D, D, st, BQ, ot, BQ,
                    j0 == 0 ? Init::kZero : Init::kScaleAdd, alpha);
  }
  // out = Ot^T / l, lse = m + log(l)
  alignas(64) float inv_l[BQ], lse[BQ];
  for (int u = 0; u < NV; ++u) {
    store(inv_l + u * kWidth, 1.0f / l[u]);
    for (int x = 0; x < kWidth; ++x) lse[u * kWidth + x] = m[u][x] + std::log(l[u][x]);
  }
  float* out = p.out + ((b * p.heads + h) * T + i0) * D;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < D; ++d) out[i * D + d] = ot[d * BQ + i] * inv_l[i];
  if (p.lse) {
    float* lse_out = p.lse + (b * p.heads + h) * T + i0;
    for (int64_t i = 0; i < rows; ++i) lse_out[i] = lse[i];
  }
}

void attention_flash(const AttentionArgs& p) {
  if (p.k16) return attention_flash(widened_kv(p));
  const int64_t T = p.t, S = p.s, D = p.d, offset = S - T;
  const int64_t q_blocks = (T + BQ - 1) / BQ, items = p.batch * p.heads * q_blocks;
  // Cost of an item: the keys its block visits, plus a fixed cost for packing and output.
  auto cost = [&](int64_t item) {
    int64_t i0 = (item % q_blocks) * BQ, rows = min64(BQ, T - i0);
    int64_t keys = p.causal ? min64(S, i0 + rows + offset) : S;
    return keys + 16;
  };
  int64_t total = 0;
  for (int64_t qb = 0; qb < q_blocks; ++qb) total += cost(qb);
  const int64_t flops = 4 * D * BQ * total * p.batch * p.heads;
  const int nt = threads_for(min64(flops / kMinFlopsPerThread, items), 1);
  const int64_t per_thread = round_up((2 * D + BK) * BQ, 16);
  float* scratch = tl_workspace.get(per_thread * nt);
  parallel_region(nt, [&](int t, int count) {
    for_my_share(items, t, count, cost, [&](int64_t item) {
      int64_t bh = item / q_blocks;
      flash_forward_block(p, bh / p.heads, bh % p.heads, (item % q_blocks) * BQ,
                          scratch + t * per_thread);
    });
  });
}

// ---- version 2: flash backward -----------------------------------------------------------
// Keys in the lanes: a key block is one tile row wide.
constexpr int64_t BKB = NV * kWidth;  // keys per block (48 with AVX-512)
#ifndef KG_ATT_BQB
#define KG_ATT_BQB 64
#endif
constexpr int64_t BQB = KG_ATT_BQB;   // queries per step inside a key block

struct BackwardScratch {
  float *kt, *vt, *kp, *dkt, *dvt, *prob, *dsc;
  static int64_t floats(int64_t D, int64_t Dp) {
    return round_up(4 * D * BKB + BKB * Dp + 2 * BQB * BKB, 16);
  }
  BackwardScratch(float* w, int64_t D, int64_t Dp) {
    kt = w;                  // Kt[d][j] = scale * k[j][d]
    vt = kt + D * BKB;       // Vt[d][j] = v[j][d]
    dkt = vt + D * BKB;      // dKt[d][j], accumulated over all queries
    dvt = dkt + D * BKB;     // dVt[d][j]
    kp = dvt + D * BKB;      // Kp[j][d] = k[j][d], d padded to Dp with zeros
    prob = kp + BKB * Dp;    // P[i][j] of BQB queries
    dsc = prob + BQB * BKB;  // dS[i][j] = scale * P (dP - delta)
  }
};

// dK, dV of the keys [j0, j0 + BKB) of kv head (b, kvh) over all queries of the group's query
// heads; adds their dQ into dq_part [G][T][Dp].
void flash_backward_key_block(const AttentionBackwardArgs& p, int64_t b, int64_t kvh,
                              int64_t j0, const float* delta, float* dq_part,
                              const BackwardScratch& w) {
  const int64_t T = p.t, S = p.s, D = p.d, G = p.heads / p.kv_heads;
  const int64_t offset = S - T, Dp = round_up(D, kWidth), kb = min64(BKB, S - j0);
  const float* k = p.k + ((b * p.kv_heads + kvh) * S + j0) * D;
  const float* v = p.v + ((b * p.kv_heads + kvh) * S + j0) * D;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < BKB; ++j) {
      w.kt[d * BKB + j] = j < kb ? k[j * D + d] * p.scale : 0.0f;
      w.vt[d * BKB + j] = j < kb ? v[j * D + d] : 0.0f;
      w.dkt[d * BKB + j] = w.dvt[d * BKB + j] = 0.0f;
    }
  for (int64_t j = 0; j < BKB; ++j)
    for (int64_t d = 0; d < Dp; ++d) w.kp[j * Dp + d] = j < kb && d < D ? k[j * D + d] : 0.0f;

  static const LaneIndex lane;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t bh = b * p.heads + kvh * G + g;
    const float* q = p.q + bh * T * D;
    const float* dout = p.dout + bh * T * D;
    const float* lse = p.lse + bh * T;
    const float* dlt = delta + bh * T;
    float* dq = dq_part + g * T * Dp;
    // Queries before i_first see none of these keys.
    const int64_t i_first = p.causal ? max64(0, j0 - offset) : 0;
    for (int64_t i0 = i_first; i0 < T; i0 += BQB) {
      const int64_t rows = min64(BQB, T - i0);
      // 1. S = Q Kt (scaled scores) into prob, dP = dO Vt into dsc
      gemm_rows<false>(rows, D, q + i0 * D, D, w.kt, BKB, w.prob, BKB, Init::kZero);
      gemm_rows<false>(rows, D, dout + i0 * D, D, w.vt, BKB, w.dsc, BKB, Init::kZero);
      // 2. P = exp(S - lse) (0 for hidden keys), dS = scale * P * (dP - delta)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        const int64_t last = p.causal ? min64(kb - 1, i + offset - j0) : kb - 1;
        const vfloat lse_i = broadcast(lse[i]), delta_i = broadcast(dlt[i]);
        const vfloat last_v = broadcast(static_cast<float>(last));
        for (int u = 0; u < NV; ++u) {
          float* pr = w.prob + r * BKB + u * kWidth;
          float* ds = w.dsc + r * BKB + u * kWidth;
          vfloat pv = exp_upto88(load(pr) - lse_i);
          if (last < BKB - 1) pv = lane.v[u] <= last_v ? pv : zero();
          store(pr, pv);
          store(ds, pv * (load(ds) - delta_i) * p.scale);
        }
      }
      // 3. dVt += dO^T P and dKt += Q^T dS  (rows of the tiles are head dimensions)
      gemm_rows<true>(D, rows, dout + i0 * D, D, w.prob, BKB, w.dvt, BKB, Init::kAdd);
      gemm_rows<true>(D, rows, q + i0 * D, D, w.dsc, BKB, w.dkt, BKB, Init::kAdd);
      // 4. dQ += dS Kp
      for (int64_t r = 0; r < rows; r += MR_DQ) {
        int R = static_cast<int>(min64(MR_DQ, rows - r));
        for (int64_t dv = 0; dv < Dp / kWidth; dv += NV_DQ) {
          int nvt = static_cast<int>(min64(NV_DQ, Dp / kWidth - dv));
          tile_rv<false>(R, nvt, kb, w.dsc + r * BKB, BKB, w.kp + dv * kWidth, Dp,
                         dq + (i0 + r) * Dp + dv * kWidth, Dp, Init::kAdd);
        }
      }
    }
  }
  float* dk = p.dk + ((b * p.kv_heads + kvh) * S + j0) * D;
  float* dvo = p.dv + ((b * p.kv_heads + kvh) * S + j0) * D;
  for (int64_t j = 0; j < kb; ++j)
    for (int64_t d = 0; d < D; ++d) {
      dk[j * D + d] = w.dkt[d * BKB + j];
      dvo[j * D + d] = w.dvt[d * BKB + j];
    }
}

// Threads: the key blocks of one (batch, kv head) group are independent (each owns its dK, dV
// rows), but they all add into the group's dQ. Two static schemes, both deterministic:
//   by group     - with enough groups to go round evenly, each thread takes whole groups and
//                  writes their dQ directly;
//   cooperative  - otherwise the threads split each group's key blocks (cost-balanced: early
//                  key blocks are seen by more causal queries), accumulate dQ in private
//                  partials and sum them in thread order, one group after the other.
void attention_flash_backward(const AttentionBackwardArgs& p) {
  const int64_t T = p.t, S = p.s, D = p.d, G = p.heads / p.kv_heads, offset = S - T;
  const int64_t Dp = round_up(D, kWidth), k_blocks = (S + BKB - 1) / BKB;
  const int64_t groups = p.batch * p.kv_heads;
  // Cost of a key block: the query rows (of one head) that see it, plus a fixed cost.
  auto cost = [&](int64_t kb) {
    int64_t i_first = p.causal ? max64(0, kb * BKB - offset) : 0;
    return (T - i_first) + 8;
  };
  int64_t total = 0;
  for (int64_t kb = 0; kb < k_blocks; ++kb) total += cost(kb);
  const int64_t flops = 10 * D * BKB * total * p.batch * p.heads;
  int nt = threads_for(flops, kMinFlopsPerThread);
  const bool by_group = groups >= nt && (groups % nt == 0 || groups >= 4 * nt || k_blocks < nt);
  nt = static_cast<int>(min64(nt, by_group ? groups : k_blocks));

  const int64_t scratch_floats = BackwardScratch::floats(D, Dp);
  const int64_t dq_floats = round_up(G * T * Dp, 16);
  const int64_t delta_floats = round_up(p.batch * p.heads * T, 16);
  float* ws = tl_workspace.get(delta_floats + nt * (scratch_floats + dq_floats));
  float* delta = ws;
  parallel_region(nt, [&](int t, int count) {
    BackwardScratch scratch(delta + delta_floats + t * scratch_floats, D, Dp);
    float* dq_base = delta + delta_floats + count * scratch_floats;
    float* my_dq = dq_base + t * dq_floats;
    // delta_i = dout_i . out_i for every query row
    const int64_t all_rows = p.batch * p.heads * T;
    for (int64_t i = all_rows * t / count; i < all_rows * (t + 1) / count; ++i) {
      float s = 0.0f;
      for (int64_t d = 0; d < D; ++d) s += p.dout[i * D + d] * p.out[i * D + d];
      delta[i] = s;
    }
#ifdef _OPENMP
#pragma omp barrier
#endif
    const int64_t rows = G * T;  // dq rows of one group
    if (by_group) {
      for (int64_t gi = groups * t / count; gi < groups * (t + 1) / count; ++gi) {
        const int64_t b = gi / p.kv_heads, kvh = gi % p.kv_heads;
        for (int64_t i = 0; i < rows * Dp; ++i) my_dq[i] = 0.0f;
        for (int64_t kb = 0; kb < k_blocks; ++kb)
          flash_backward_key_block(p, b, kvh, kb * BKB, delta, my_dq, scratch);
        float* dq = p.dq + (b * p.heads + kvh * G) * T * D;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t d = 0; d < D; ++d) dq[r * D + d] = my_dq[r * Dp + d];
      }
      return;
    }
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t b = gi / p.kv_heads, kvh = gi % p.kv_heads;
      for (int64_t i = 0; i < rows * Dp; ++i) my_dq[i] = 0.0f;
      for_my_share(k_blocks, t, count, cost, [&](int64_t kb) {
        flash_backward_key_block(p, b, kvh, kb * BKB, delta, my_dq, scratch);
      });
#ifdef _OPENMP
#pragma omp barrier
#endif
      // dq of the group's query heads = the threads' partials, summed in thread order
      float* dq = p.dq + (b * p.heads + kvh * G) * T * D;
      for (int64_t r = rows * t / count; r < rows * (t + 1) / count; ++r)
        for (int64_t d = 0; d < D; ++d) {
          float s = dq_base[r * Dp + d];
          for (int u = 1; u < count; ++u) s += dq_base[u * dq_floats + r * Dp + d];
          dq[r * D + d] = s;
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
    }
  });
}

// ---- version 3: decode -------------------------------------------------------------------
constexpr int64_t kDecodeRows = 16;    // query rows processed together (heads of one kv head)
constexpr int64_t kDecodeKeys = 256;   // keys per chunk of scores
// An fp16 cache: float32 K + V of a chunk, widened into scratch, stay in L1 (D = 64: 64 keys;
// 256 keys' 128 KiB went to L2 and back). Zen 3, 30 layers x 4k keys x 3 kv heads: ~12 ->
// ~10.5 ms with the prefetch below; float32 caches unchanged within the noise.
constexpr int64_t kDecodeHalfBytes = 32 * 1024;
constexpr int64_t kDecodeMinKeysPerSplit = 64;
// Work worth a chunk of its own (a few microseconds; the decode runner's pool hands chunks out
// for well under one, see common/pool.h): the cache is read from DRAM, so two threads help
// early, at a few hundred keys.
constexpr int64_t kDecodeMinFlopsPerChunk = int64_t(1) << 17;
constexpr int64_t kDecodeMaxSplits = 64;
constexpr int64_t kDecodePrefetch = 4 * kWidth;  // keys ahead

// Lane j of the result = sum of the lanes of x[j]: kWidth horizontal sums at once.
inline vfloat reduce_add_each(const vfloat* x) {
#if defined(__AVX512F__)
  // Fold halves pairwise: 16 vectors -> 8 (two keys, 8 lanes each) -> 4 -> 2 -> 1.
  __m512 y[8], z[4], w[2];
  for (int i = 0; i < 8; ++i) {
    __m512 a = (__m512)x[2 * i], b = (__m512)x[2 * i + 1];
    // lanes 0-7: a.lo + a.hi; lanes 8-15: b.lo + b.hi
    y[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, a, b),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit blocks: keys 4i .. 4i+3, 4 lanes each
    __m512 a = y[2 * i], b = y[2 * i + 1];
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {
    __m512 a = z[2 * i], b = z[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  __m512 u = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // lane 4a + c now holds key 4c + a: transpose the 4 x 4 lane grid
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return (vfloat)_mm512_permutexvar_ps(order, u);
#elif defined(__AVX2__)
  // Pairwise horizontal adds: 8 vectors -> 4 -> 2 (lane 4h + j: half h of key j or j + 4),
  // then the two 128-bit halves of each key added: 9 instructions for 8 sums.
  __m256 a = _mm256_hadd_ps((__m256)x[0], (__m256)x[1]), b = _mm256_hadd_ps((__m256)x[2], (__m256)x[3]);
  __m256 c = _mm256_hadd_ps((__m256)x[4], (__m256)x[5]), d = _mm256_hadd_ps((__m256)x[6], (__m256)x[7]);
  __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  return (vfloat)_mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20),
                               _mm256_permute2f128_ps(ab, cd, 0x31));
#else
  vfloat r;
  for (int j = 0; j < kWidth; ++j) r[j] = reduce_add(x[j]);
  return r;
#endif
}

// Attention of up to kDecodeRows query rows of kv head (b, kvh) (row r is query i = r % T of
// head kvh * G + r / T, rows [r0, r0 + nrows)) over the keys [k0, k1). Leaves the unnormalised
// result: m[r] (max), l[r] (sum), acc[r][0:Dp].
struct DecodeScratch {
  float *qp, *acc, *scores, *kv;
  float m[kDecodeRows], l[kDecodeRows];
  static int64_t floats(int64_t Dp) {
    return round_up(2 * kDecodeRows * Dp + kDecodeRows * kDecodeKeys + 2 * kDecodeKeys * Dp, 16);
  }
  DecodeScratch(float* w, int64_t Dp) {
    qp = w;                              // qp[r][0:Dp] = scale * q (zero padded)
    acc = qp + kDecodeRows * Dp;         // acc[r][0:Dp]
    scores = acc + kDecodeRows * Dp;     // scores[r][0:kDecodeKeys]
    kv = scores + kDecodeRows * kDecodeKeys;  // an fp16 cache's chunk widened: K then V [keys][D]
  }
};

// Lane jj (< n <= kWidth) of the result = q . k_jj for the n keys at kj (rows of D floats);
// q is zero padded to a whole number of vectors. kWidth independent FMA chains, then one
// transpose-reduce. kD > 0 fixes D at compile time (the key offsets become constants, which
// saves kWidth address registers); kD == 0 takes it from `D`.
template <int64_t kD>
inline vfloat dot_keys(const float* q, const float* kj, int64_t n, int64_t D_runtime) {
  const int64_t D = kD > 0 ? kD : D_runtime;
  const int64_t dvecs = D / kWidth, dtail = D - dvecs * kWidth;
  vfloat dots[kWidth];
  if (n == kWidth) {
#pragma GCC unroll 16
    for (int jj = 0; jj < kWidth; ++jj) dots[jj] = zero();
    for (int64_t u = 0; u < dvecs; ++u) {
      const vfloat qv = load(q + u * kWidth);
#pragma GCC unroll 16
      for (int jj = 0; jj < kWidth; ++jj) dots[jj] += qv * load(kj + jj * D + u * kWidth);
    }
    if (dtail) {
      const vfloat qv = load(q + dvecs * kWidth);
#pragma GCC unroll 16
      for (int jj = 0; jj < kWidth; ++jj)
        dots[jj] += qv * load_partial(kj + jj * D + dvecs * kWidth, dtail);
    }
  } else {  // the last few keys of a chunk
    for (int64_t jj = 0; jj < kWidth; ++jj) {
      vfloat s = zero();
      for (int64_t u = 0; jj < n && u < dvecs; ++u)
        s += load(q + u * kWidth) * load(kj + jj * D + u * kWidth);
      if (jj < n && dtail)
        s += load(q + dvecs * kWidth) * load_partial(kj + jj * D + dvecs * kWidth, dtail);
      dots[jj] = s;
    }
  }
  return reduce_add_each(dots);
}

inline vfloat dot_keys_any(const float* q, const float* kj, int64_t n, int64_t D) {
  switch (D) {
    case 64: return dot_keys<64>(q, kj, n, D);
    case 128: return dot_keys<128>(q, kj, n, D);
    default: return dot_keys<0>(q, kj, n, D);
  }
}

void decode_rows(const AttentionArgs& p, int64_t b, int64_t kvh, int64_t r0, int64_t nrows,
                 int64_t k0, int64_t k1, DecodeScratch& w) {
  const int64_t T = p.t, S = p.s, D = p.d, G = p.heads / p.kv_heads, offset = S - T;
  const int64_t Dp = round_up(D, kWidth), dvecs = D / kWidth, dtail = D - dvecs * kWidth;
  const bool half = p.k16 != nullptr;  // an fp16 cache: p.k and p.v are null
  const float* k = half ? nullptr : p.k + (b * p.kv_heads + kvh) * p.kv_rows() * D;
  const float* v = half ? nullptr : p.v + (b * p.kv_heads + kvh) * p.kv_rows() * D;
  int64_t key_end[kDecodeRows];  // row r sees keys < key_end[r]
  for (int64_t r = 0; r < nrows; ++r) {
    int64_t g = (r0 + r) / T, i = (r0 + r) % T;
    const float* q = p.q + ((b * p.heads + kvh * G + g) * T + i) * D;
    for (int64_t d = 0; d < Dp; ++d) w.qp[r * Dp + d] = d < D ? q[d] * p.scale : 0.0f;
    for (int64_t d = 0; d < Dp; ++d) w.acc[r * Dp + d] = 0.0f;
    key_end[r] = min64(k1, p.causal ? i + offset + 1 : S);
    w.m[r] = -INFINITY;
    w.l[r] = 0.0f;
  }
  static const LaneIndex lane;
  const uint16_t* k16 = half ? p.k16 + (b * p.kv_heads + kvh) * p.kv_rows() * D : nullptr;
  const uint16_t* v16 = half ? p.v16 + (b * p.kv_heads + kvh) * p.kv_rows() * D : nullptr;
  // an fp16 cache's chunk is widened into scratch: few enough keys that K and V stay in L1.
  // A float32 cache takes the same chunks, so both give the same result bit for bit.
  const int64_t chunk = max64(kWidth, min64(kDecodeKeys, kDecodeHalfBytes / (8 * D) / kWidth * kWidth));
  for (int64_t c0 = k0; c0 < k1; c0 += chunk) {
    const int64_t c1 = min64(k1, c0 + chunk), nk = c1 - c0;
    float alpha[kDecodeRows];
    // the chunk's keys and values: in place, or (an fp16 cache) widened into scratch, a
    // sequential pass the hardware prefetcher follows on its own
    const float* kc = half ? w.kv : k + c0 * D;
    const float* vc = half ? w.kv + kDecodeKeys * D : v + c0 * D;
    if (half) {
      halves_to_floats(k16 + c0 * D, w.kv, nk * D);
      halves_to_floats(v16 + c0 * D, w.kv + kDecodeKeys * D, nk * D);
    }
    // 1. scores of every row against keys c0..c1, kWidth keys at a time; the rows share each
    //    group of keys while it is in L1. The keys a few groups ahead are prefetched (this
    //    loop is too short for the hardware prefetcher to get far enough ahead on its own).
    // An fp16 cache: the next chunk's keys and values are prefetched into L2 while this one is
    // computed, a share with each group of keys (else DRAM idles between the widening passes).
    const int64_t next_bytes = half ? min64(k1 - c1, chunk) * D * 2 : 0;
    const int64_t groups_in_chunk = (nk + kWidth - 1) / kWidth;
    const int64_t lines_per_group = (next_bytes / 64 + groups_in_chunk) / groups_in_chunk;
    for (int64_t j = c0; j < c1; j += kWidth) {
      const int64_t n = min64(kWidth, c1 - j);
      if (next_bytes) {
        const char* nk16 = reinterpret_cast<const char*>(k16 + c1 * D);
        const char* nv16 = reinterpret_cast<const char*>(v16 + c1 * D);
        const int64_t first = (j - c0) / kWidth * lines_per_group * 64;
        for (int64_t x = first; x < first + lines_per_group * 64 && x < next_bytes; x += 64) {
          __builtin_prefetch(nk16 + x, 0, 2);  // locality 2: L2
          __builtin_prefetch(nv16 + x, 0, 2);
        }
      }
      if (!half && j + kDecodePrefetch + n <= k1) {
        const char* ahead = reinterpret_cast<const char*>(k + (j + kDecodePrefetch) * D);
        for (int64_t x = 0; x < n * D * 4; x += 64) __builtin_prefetch(ahead + x, 0, 3);
      }
      for (int64_t r = 0; r < nrows; ++r) {
        vfloat s = dot_keys_any(w.qp + r * Dp, kc + (j - c0) * D, n, D);
        // hidden: past the chunk, or past this row's causal limit
        const vfloat limit = broadcast(static_cast<float>(min64(key_end[r], c1) - j));
        s = lane.v[0] < limit ? s : broadcast(-INFINITY);
        store(w.scores + r * kDecodeKeys + (j - c0), s);  // j - c0 + kWidth <= kDecodeKeys
      }
    }
    for (int64_t r = 0; r < nrows; ++r) {
      float* sc = w.scores + r * kDecodeKeys;
      // 2. online softmax over the chunk (a row that sees none of it is left as it was)
      alpha[r] = 1.0f;
      if (key_end[r] <= c0) {
        for (int64_t jj = 0; jj < nk; ++jj) sc[jj] = 0.0f;
        continue;
      }
      vfloat mv = broadcast(w.m[r]);
      int64_t jj = 0;
      for (; jj + kWidth <= nk; jj += kWidth) mv = max(mv, load(sc + jj));
      float m_new = reduce_max(mv);
      for (; jj < nk; ++jj) m_new = sc[jj] > m_new ? sc[jj] : m_new;
      alpha[r] = scalar_exp(w.m[r] - m_new);
      vfloat sum = zero();
      const vfloat mb = broadcast(m_new);
      for (jj = 0; jj + kWidth <= nk; jj += kWidth) {
        vfloat e = exp_upto88(load(sc + jj) - mb);
        store(sc + jj, e);
        sum += e;
      }
      float l_chunk = reduce_add(sum);
      for (; jj < nk; ++jj) {
        sc[jj] = scalar_exp(sc[jj] - m_new);
        l_chunk += sc[jj];
      }
      w.m[r] = m_new;
      w.l[r] = w.l[r] * alpha[r] + l_chunk;
    }
    // 3. acc = acc * alpha + P V for the chunk: tiles of MR_DQ rows x NV_DQ vectors
    for (int64_t r = 0; r < nrows; ++r)
      if (alpha[r] != 1.0f)
        for (int64_t d = 0; d < Dp; ++d) w.acc[r * Dp + d] *= alpha[r];
    for (int64_t r = 0; r < nrows; r += MR_DQ) {
      int R = static_cast<int>(min64(MR_DQ, nrows - r));
      for (int64_t u = 0; u < dvecs; u += NV_DQ) {
        int nvt = static_cast<int>(min64(NV_DQ, dvecs - u));
        tile_rv<false>(R, nvt, nk, w.scores + r * kDecodeKeys, kDecodeKeys, vc + u * kWidth,
                       D, w.acc + r * Dp + u * kWidth, Dp, Init::kAdd);
      }
    }
    if (dtail)  // the last head dimensions (D not a multiple of the vector width)
      for (int64_t r = 0; r < nrows; ++r)
        for (int64_t jj = 0; jj < nk; ++jj) {
          float pr = w.scores[r * kDecodeKeys + jj];
          for (int64_t d = dvecs * kWidth; d < D; ++d) w.acc[r * Dp + d] += pr * vc[jj * D + d];
        }
  }
}


// The number of key splits of each (batch, kv head): from the shapes only, never from the
// thread count, so that the result is the same on any number of threads and any schedule.
// Enough items (groups x splits) for dynamic chunks to balance a few threads, each split at
// least kDecodeMinKeysPerSplit keys.
int64_t decode_splits(int64_t groups, int64_t S) {
  int64_t splits = groups >= 16 ? 1 : (16 + groups - 1) / groups;
  splits = min64(splits, kDecodeMaxSplits);
  while (splits > 1 && S / splits < kDecodeMinKeysPerSplit) --splits;
  return splits;
}

thread_local Workspace tl_decode_scratch;

void attention_decode(const AttentionArgs& p) {
  const int64_t T = p.t, S = p.s, D = p.d, G = p.heads / p.kv_heads;
  const int64_t Dp = round_up(D, kWidth), groups = p.batch * p.kv_heads, rows = G * T;
  const int64_t flops = 4 * p.batch * p.heads * T * S * D;
  const int64_t splits = decode_splits(groups, S), items = groups * splits;
  const int64_t part_floats = Dp + 2;  // m, l, acc[Dp] per (item, row)
  float* parts = splits > 1 ? tl_workspace.get(items * rows * part_floats) : nullptr;
  // one item is worth a thread when it holds a few microseconds of work
  const int64_t min_items = max64(1, kDecodeMinFlopsPerChunk / max64(1, flops / items));
  parallel_for(items, min_items, [&](int64_t i0, int64_t i1) {
    float* scratch = tl_decode_scratch.try_get(DecodeScratch::floats(Dp));
    if (!scratch) return;  // out of memory: cannot happen for any real D (a few KiB)
    DecodeScratch w(scratch, Dp);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t gi = item / splits, split = item % splits;
      const int64_t b = gi / p.kv_heads, kvh = gi % p.kv_heads;
      const int64_t k0 = S * split / splits, k1 = S * (split + 1) / splits;
      for (int64_t r0 = 0; r0 < rows; r0 += kDecodeRows) {
        const int64_t nrows = min64(kDecodeRows, rows - r0);
        decode_rows(p, b, kvh, r0, nrows, k0, k1, w);
        for (int64_t r = 0; r < nrows; ++r) {
          const float* acc = w.acc + r * Dp;
          if (splits == 1) {  // the whole result: normalise and write
            const int64_t g = (r0 + r) / T, i = (r0 + r) % T;
            const int64_t row = (b * p.heads + kvh * G + g) * T + i;
            const float inv_l = 1.0f / w.l[r];
            for (int64_t d = 0; d < D; ++d) p.out[row * D + d] = acc[d] * inv_l;
            if (p.lse) p.lse[row] = w.m[r] + std::log(w.l[r]);
          } else {
            float* part = parts + (item * rows + r0 + r) * part_floats;
            part[0] = w.m[r];
            part[1] = w.l[r];
            for (int64_t d = 0; d < Dp; ++d) part[2 + d] = acc[d];
          }
        }
      }
    }
  });
  if (splits == 1) return;
  // merge the splits of each (group, row) in split order
  parallel_for(groups * rows, max64(1, 4096 / (splits * Dp)), [&](int64_t x0, int64_t x1) {
    for (int64_t x = x0; x < x1; ++x) {
      const int64_t gi = x / rows, r = x % rows;
      const float* part0 = parts + (gi * splits * rows + r) * part_floats;
      float m = -INFINITY;
      for (int64_t s = 0; s < splits; ++s) {
        float ms = part0[s * rows * part_floats];
        m = ms > m ? ms : m;
      }
      float l = 0.0f, scale_s[kDecodeMaxSplits];
      for (int64_t s = 0; s < splits; ++s) {
        const float* part = part0 + s * rows * part_floats;
        scale_s[s] = part[0] == -INFINITY ? 0.0f : scalar_exp(part[0] - m);
        l += part[1] * scale_s[s];
      }
      const int64_t b = gi / p.kv_heads, kvh = gi % p.kv_heads, g = r / T, i = r % T;
      const int64_t row = (b * p.heads + kvh * G + g) * T + i;
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0.0f;
        for (int64_t s = 0; s < splits; ++s) acc += part0[s * rows * part_floats + 2 + d] * scale_s[s];
        p.out[row * D + d] = acc / l;
      }
      if (p.lse) p.lse[row] = m + std::log(l);
    }
  });
}

}  // namespace

#if defined(__AVX512F__)
#define KG_ATTENTION_PATH "flash: 8x48 AVX-512 micro-GEMM tiles, online softmax; decode: split-K"
#elif defined(__AVX2__)
#define KG_ATTENTION_PATH "flash: 6x16 AVX2 micro-GEMM tiles, online softmax; decode: split-K"
#else
#define KG_ATTENTION_PATH "flash: 6x8 SSE micro-GEMM tiles, online softmax; decode: split-K"
#endif

extern const AttentionKernels attention_kernels = {
    attention_naive,          attention_flash,          attention_decode,
    attention_naive_backward, attention_flash_backward, to_half,
    KG_ATTENTION_PATH};

KG_END_ISA_NAMESPACE
