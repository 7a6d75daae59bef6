// layernorm and rmsnorm, forward and backward, float32.  Formulas and shapes in norm.h.
//
// version 1 (naive): the formulas row by row with float64 sums, one thread. The backward
//   sums dweight / dbias column by column, also in float64.
// version 2 (fast): threads take contiguous ranges of rows; a row (up to ~16k floats) stays
//   in L1/L2 between its passes, so x comes from memory once:
//   - layernorm statistics in one read: each lane keeps a running (mean, M2) and merges in
//     one block of 4 vectors at a time (the block's own mean and M2 come from registers;
//     the merge is Chan's parallel-variance formula). Unlike sum(x^2) - sum(x)^2 this has
//     no cancellation, and the values are first shifted by the row's first element so that
//     a large common offset (x = 1000 + noise) costs no precision in the mean either (when
//     that element is an outlier, the stats are redone with the mean as the shift).
//   - rmsnorm: sum of squares in 4 independent vector accumulators.
//   - the output pass is a few multiply-adds per element; meanwhile the next row is
//     prefetched into L2, and outputs larger than the last-level cache are written with
//     streaming stores (simd.h's store_range), saving the read of every output line.
//   - backward: one pass for the row sums mean(g), mean(g * xhat) while adding dy * xhat and
//     dy into a per-thread float block of dweight / dbias, a second pass (from cache) for dx.
//     Every 32 rows the block is folded into per-thread float64 sums; the threads' sums are
//     added in thread order at the end (deterministic for a given thread count; 1e-5
//     relative to the sum of |terms| over 100k rows, where float32 running sums give ~1e-3).
#include "kernels/norm.h"

#include <cmath>

#include "common/simd.h"
#include "common/threading.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// ---- version 1: naive ------------------------------------------------------------------

void layernorm_naive(const LayerNormArgs& p) {
  const int64_t C = p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * C;
    float* y = p.y + r * C;
    double sum = 0.0;
    for (int64_t j = 0; j < C; ++j) sum += x[j];
    double mean = sum / C;
    double sq = 0.0;
    for (int64_t j = 0; j < C; ++j) sq += (x[j] - mean) * (x[j] - mean);
    double rstd = 1.0 / std::sqrt(sq / C + p.eps);
    for (int64_t j = 0; j < C; ++j) {
      double b = p.bias ? p.bias[j] : 0.0;
      y[j] = (float)((x[j] - mean) * rstd * p.weight[j] + b);
    }
    if (p.mean) p.mean[r] = (float)mean;
    if (p.rstd) p.rstd[r] = (float)rstd;
  }
}

void layernorm_backward_naive(const LayerNormBackwardArgs& p) {
  const int64_t C = p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* dy = p.dy + r * C;
    const float* x = p.x + r * C;
    float* dx = p.dx + r * C;
    double mean = p.mean[r], rstd = p.rstd[r];
    double sum_g = 0.0, sum_gxhat = 0.0;  // sums of g = dy * w and of g * xhat
    for (int64_t j = 0; j < C; ++j) {
      double g = (double)dy[j] * p.weight[j];
      sum_g += g;
      sum_gxhat += g * (x[j] - mean) * rstd;
    }
    for (int64_t j = 0; j < C; ++j) {
      double g = (double)dy[j] * p.weight[j];
      double xhat = (x[j] - mean) * rstd;
      dx[j] = (float)(rstd * (g - sum_g / C - xhat * sum_gxhat / C));
    }
  }
  for (int64_t j = 0; j < C; ++j) {
    double dw = 0.0, db = 0.0;
    for (int64_t r = 0; r < p.rows; ++r) {
      double xhat = (p.x[r * C + j] - (double)p.mean[r]) * p.rstd[r];
      dw += p.dy[r * C + j] * xhat;
      db += p.dy[r * C + j];
    }
    p.dweight[j] = (float)dw;
    p.dbias[j] = (float)db;
  }
}

void rmsnorm_naive(const RMSNormArgs& p) {
  const int64_t C = p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * C;
    float* y = p.y + r * C;
    double sq = 0.0;
    for (int64_t j = 0; j < C; ++j) sq += (double)x[j] * x[j];
    double rstd = 1.0 / std::sqrt(sq / C + p.eps);
    for (int64_t j = 0; j < C; ++j) y[j] = (float)(x[j] * rstd * p.weight[j]);
    if (p.rstd) p.rstd[r] = (float)rstd;
  }
}

void rmsnorm_backward_naive(const RMSNormBackwardArgs& p) {
  const int64_t C = p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* dy = p.dy + r * C;
    const float* x = p.x + r * C;
    float* dx = p.dx + r * C;
    double rstd = p.rstd[r];
    double sum_gxhat = 0.0;
    for (int64_t j = 0; j < C; ++j) sum_gxhat += (double)dy[j] * p.weight[j] * x[j] * rstd;
    for (int64_t j = 0; j < C; ++j) {
      double g = (double)dy[j] * p.weight[j];
      double xhat = x[j] * rstd;
      dx[j] = (float)(rstd * (g - xhat * sum_gxhat / C));
    }
  }
  for (int64_t j = 0; j < C; ++j) {
    double dw = 0.0;
    for (int64_t r = 0; r < p.rows; ++r)
      dw += (double)p.dy[r * C + j] * p.x[r * C + j] * p.rstd[r];
    p.dweight[j] = (float)dw;
  }
}

// ---- version 2: fast -------------------------------------------------------------------

// Rows per thread: enough elements (~16k) to pay for waking a thread.
inline int64_t min_rows_per_thread(int64_t cols) {
  int64_t r = 16384 / cols;
  return r < 1 ? 1 : r;
}

// Mean and M2 = sum((x - mean)^2) of d[j] = x[j] - shift, j < C, reading x once.
struct RowStats {
  double mean, m2;
};

// Chan et al.: merges a group (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a).
inline void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b,
                       double m2_b) {
  double n = n_a + n_b;
  double delta = mean_b - mean_a;
  mean_a += delta * (n_b / n);
  m2_a += m2_b + delta * delta * (n_a * n_b / n);
  n_a = n;
}

RowStats shifted_row_stats(const float* x, int64_t C, float shift) {
  constexpr int V = 4;               // vectors per block
  constexpr int64_t B = V * kWidth;  // floats per block
  const int64_t nblocks = C / B;
  const vfloat s = broadcast(shift);
  // Per lane: the mean and M2 of the 4 * b values this lane has seen in blocks 0..b-1.
  vfloat mean = zero(), m2 = zero();
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* xb = x + b * B;
    vfloat d0 = load(xb) - s, d1 = load(xb + kWidth) - s;
    vfloat d2 = load(xb + 2 * kWidth) - s, d3 = load(xb + 3 * kWidth) - s;
    vfloat block_mean = ((d0 + d1) + (d2 + d3)) * 0.25f;
    vfloat e0 = d0 - block_mean, e1 = d1 - block_mean;
    vfloat e2 = d2 - block_mean, e3 = d3 - block_mean;
    vfloat block_m2 = (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
    // Chan's merge with n_a = 4b, n_b = 4: n_b / n = 1 / (b + 1), n_a n_b / n = 4b / (b + 1).
    float inv = 1.0f / (float)(b + 1);
    vfloat delta = block_mean - mean;
    mean += delta * inv;
    m2 += block_m2 + delta * delta * (4.0f * (float)b * inv);
  }
  double n = 0.0, mean_all = 0.0, m2_all = 0.0;
  if (nblocks > 0) {  // merge the lanes: each holds V * nblocks values
    double lane_n = (double)V * nblocks, lane_mean_sum = 0.0;
    for (int l = 0; l < kWidth; ++l) lane_mean_sum += mean[l];
    mean_all = lane_mean_sum / kWidth;
    for (int l = 0; l < kWidth; ++l) {
      double dm = mean[l] - mean_all;
      m2_all += m2[l] + lane_n * dm * dm;
    }
    n = lane_n * kWidth;
  }
  int64_t tail = C - nblocks * B;
  if (tail > 0) {  // fewer than B values left: two passes over them from L1
    const float* xt = x + nblocks * B;
    double sum = 0.0;
    for (int64_t j = 0; j < tail; ++j) sum += (double)(xt[j] - shift);
    double tail_mean = sum / tail, tail_m2 = 0.0;
    for (int64_t j = 0; j < tail; ++j) {
      double d = (double)(xt[j] - shift) - tail_mean;
      tail_m2 += d * d;
    }
    chan_merge(n, mean_all, m2_all, (double)tail, tail_mean, tail_m2);
  }
  return {mean_all, m2_all};
}

template <bool kHasBias>
void layernorm_rows(const LayerNormArgs& p, int64_t r0, int64_t r1, bool stream) {
  const int64_t C = p.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.x + r * C;
    float* y = p.y + r * C;
    float shift = x[0];
    RowStats st = shifted_row_stats(x, C, shift);
    if (st.mean * st.mean > 256.0 * (st.m2 / C)) {
      // x[0] is an outlier (mean more than 16 std away): x - shift rounded away the low bits
      // of the other values. Rare; redo the stats (from L1) shifted by the mean instead.
      shift = (float)(shift + st.mean);
      st = shifted_row_stats(x, C, shift);
    }
    const float rstd = (float)(1.0 / std::sqrt(st.m2 / C + p.eps));
    const float mean_d = (float)st.mean;  // mean of x - shift
    if (p.mean) p.mean[r] = (float)(shift + st.mean);
    if (p.rstd) p.rstd[r] = rstd;
    // y = ((x - shift) - mean_d) * rstd * w + b, while the next row is fetched into L2
    // (into L2, not L1: L1 still holds this row)
    const vfloat sv = broadcast(shift), mv = broadcast(mean_d), rv = broadcast(rstd);
    const float* next = r + 1 < r1 ? x + C : x;
    store_range(y, 0, C, stream, [&](int64_t j, int64_t n) {
      __builtin_prefetch(next + j, 0, 2);
      vfloat v = ((load_upto(x + j, n) - sv) - mv) * rv * load_upto(p.weight + j, n);
      if (kHasBias) v += load_upto(p.bias + j, n);
      return v;
    });
  }
}

void layernorm_fast(const LayerNormArgs& p) {
  const bool stream = use_streaming(p.y, p.rows * p.cols * (int64_t)sizeof(float));
  parallel_for(p.rows, min_rows_per_thread(p.cols), [&](int64_t r0, int64_t r1) {
    if (p.bias)
      layernorm_rows<true>(p, r0, r1, stream);
    else
      layernorm_rows<false>(p, r0, r1, stream);
    if (stream) stream_fence();
  });
}

void rmsnorm_fast(const RMSNormArgs& p) {
  const int64_t C = p.cols;
  const bool stream = use_streaming(p.y, p.rows * C * (int64_t)sizeof(float));
  parallel_for(p.rows, min_rows_per_thread(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = p.x + r * C;
      float* y = p.y + r * C;
      vfloat a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
      int64_t j = 0;
      for (; j + 4 * kWidth <= C; j += 4 * kWidth) {
        vfloat v0 = load(x + j), v1 = load(x + j + kWidth);
        vfloat v2 = load(x + j + 2 * kWidth), v3 = load(x + j + 3 * kWidth);
        a0 += v0 * v0;
        a1 += v1 * v1;
        a2 += v2 * v2;
        a3 += v3 * v3;
      }
      for (; j + kWidth <= C; j += kWidth) {
        vfloat v = load(x + j);
        a0 += v * v;
      }
      if (j < C) {
        vfloat v = load_partial(x + j, C - j);
        a1 += v * v;
      }
      double sq = reduce_add((a0 + a1) + (a2 + a3));
      const float rstd = (float)(1.0 / std::sqrt(sq / C + p.eps));
      if (p.rstd) p.rstd[r] = rstd;
      const vfloat rv = broadcast(rstd);
      const float* next = r + 1 < r1 ? x + C : x;  // fetched while this row is written
      store_range(y, 0, C, stream, [&](int64_t j, int64_t n) {
        __builtin_prefetch(next + j, 0, 2);
        return load_upto(x + j, n) * rv * load_upto(p.weight + j, n);
      });
    }
    if (stream) stream_fence();
  });
}

// ---- backward: per-thread sums of dweight / dbias ----------------------------------------

constexpr int64_t kRowBlock = 32;  // rows summed in float before folding into float64

// Thread t's scratch: float64 sums [2C] then a float block [2C] (see norm.h).
struct Partials {
  double* sum;  // sum[0:C] for dweight, sum[C:2C] for dbias
  float* block;
};
inline Partials partials_of(void* base, int64_t C, int t) {
  char* p = static_cast<char*>(base) + (int64_t)t * C * 2 * (sizeof(double) + sizeof(float));
  return {reinterpret_cast<double*>(p), reinterpret_cast<float*>(p + C * 2 * sizeof(double))};
}

// Adds the float block into the float64 sums and clears it.
inline void fold_block(Partials& w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    w.sum[j] += w.block[j];
    w.block[j] = 0.0f;
  }
}

// Runs row_fn(r, block) for every row on up to max_threads threads (contiguous ranges),
// then writes out[k][j] = sum over threads of the `n_out` float64 sums, in thread order.
template <class RowFn>
void rows_with_column_sums(int64_t rows, int64_t C, void* partials, int max_threads,
                           int n_out, float* out0, float* out1, RowFn row_fn) {
  int nt = threads_for(rows, min_rows_per_thread(C));
  if (nt > max_threads) nt = max_threads;
  const int64_t n = n_out * C;
  parallel_region(nt, [&](int t, int count) {
    Partials w = partials_of(partials, C, t);
    for (int64_t j = 0; j < n; ++j) w.sum[j] = 0.0, w.block[j] = 0.0f;
    int64_t r0 = rows * t / count, r1 = rows * (t + 1) / count;
    for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
      int64_t re = rb + kRowBlock < r1 ? rb + kRowBlock : r1;
      for (int64_t r = rb; r < re; ++r) row_fn(r, w.block);
      fold_block(w, n);
    }
    stream_fence();  // in case row_fn streamed its stores
  });
  float* outs[2] = {out0, out1};
  for (int k = 0; k < n_out; ++k)
    for (int64_t j = 0; j < C; ++j) {
      double s = 0.0;
      for (int t = 0; t < nt; ++t) s += partials_of(partials, C, t).sum[k * C + j];
      outs[k][j] = (float)s;
    }
}

void layernorm_backward_fast(const LayerNormBackwardArgs& p) {
  const int64_t C = p.cols;
  const bool stream = use_streaming(p.dx, p.rows * C * (int64_t)sizeof(float));
  auto row = [&](int64_t r, float* block) {
    const float* dy = p.dy + r * C;
    const float* x = p.x + r * C;
    float* dx = p.dx + r * C;
    float* bw = block;      // dweight block
    float* bb = block + C;  // dbias block
    const vfloat mv = broadcast(p.mean[r]), rv = broadcast(p.rstd[r]);
    vfloat sg0 = zero(), sg1 = zero(), sgx0 = zero(), sgx1 = zero();
    int64_t j = 0;
    for (; j + 2 * kWidth <= C; j += 2 * kWidth) {
      vfloat dy0 = load(dy + j), dy1 = load(dy + j + kWidth);
      vfloat xh0 = (load(x + j) - mv) * rv, xh1 = (load(x + j + kWidth) - mv) * rv;
      vfloat g0 = dy0 * load(p.weight + j), g1 = dy1 * load(p.weight + j + kWidth);
      sg0 += g0;
      sg1 += g1;
      sgx0 += g0 * xh0;
      sgx1 += g1 * xh1;
      store(bw + j, load(bw + j) + dy0 * xh0);
      store(bw + j + kWidth, load(bw + j + kWidth) + dy1 * xh1);
      store(bb + j, load(bb + j) + dy0);
      store(bb + j + kWidth, load(bb + j + kWidth) + dy1);
    }
    for (; j < C; j += kWidth) {  // up to two more vectors, the last one maybe partial
      int64_t n = C - j;
      vfloat dyv = load_upto(dy + j, n);
      vfloat xh = (load_upto(x + j, n) - mv) * rv;
      vfloat g = dyv * load_upto(p.weight + j, n);
      sg0 += g;
      sgx0 += g * xh;
      store_upto(bw + j, load_upto(bw + j, n) + dyv * xh, n);
      store_upto(bb + j, load_upto(bb + j, n) + dyv, n);
    }
    const vfloat a = broadcast(reduce_add(sg0 + sg1) / (float)C);
    const vfloat b = broadcast(reduce_add(sgx0 + sgx1) / (float)C);
    const int64_t next = r + 1 < p.rows ? C : 0;  // the next row, fetched meanwhile
    store_range(dx, 0, C, stream, [&](int64_t j, int64_t n) {
      __builtin_prefetch(x + next + j, 0, 2);
      __builtin_prefetch(dy + next + j, 0, 2);
      vfloat xh = (load_upto(x + j, n) - mv) * rv;
      vfloat g = load_upto(dy + j, n) * load_upto(p.weight + j, n);
      return ((g - a) - xh * b) * rv;
    });
  };
  rows_with_column_sums(p.rows, C, p.partials, p.max_threads, 2, p.dweight, p.dbias, row);
}

void rmsnorm_backward_fast(const RMSNormBackwardArgs& p) {
  const int64_t C = p.cols;
  const bool stream = use_streaming(p.dx, p.rows * C * (int64_t)sizeof(float));
  auto row = [&](int64_t r, float* bw) {
    const float* dy = p.dy + r * C;
    const float* x = p.x + r * C;
    float* dx = p.dx + r * C;
    const vfloat rv = broadcast(p.rstd[r]);
    vfloat sgx0 = zero(), sgx1 = zero();
    int64_t j = 0;
    for (; j + 2 * kWidth <= C; j += 2 * kWidth) {
      vfloat dy0 = load(dy + j), dy1 = load(dy + j + kWidth);
      vfloat xh0 = load(x + j) * rv, xh1 = load(x + j + kWidth) * rv;
      sgx0 += dy0 * load(p.weight + j) * xh0;
      sgx1 += dy1 * load(p.weight + j + kWidth) * xh1;
      store(bw + j, load(bw + j) + dy0 * xh0);
      store(bw + j + kWidth, load(bw + j + kWidth) + dy1 * xh1);
    }
    for (; j < C; j += kWidth) {
      int64_t n = C - j;
      vfloat dyv = load_upto(dy + j, n);
      vfloat xh = load_upto(x + j, n) * rv;
      sgx0 += dyv * load_upto(p.weight + j, n) * xh;
      store_upto(bw + j, load_upto(bw + j, n) + dyv * xh, n);
    }
    const vfloat b = broadcast(reduce_add(sgx0 + sgx1) / (float)C);
    const int64_t next = r + 1 < p.rows ? C : 0;  // the next row, fetched meanwhile
    store_range(dx, 0, C, stream, [&](int64_t j, int64_t n) {
      __builtin_prefetch(x + next + j, 0, 2);
      __builtin_prefetch(dy + next + j, 0, 2);
      vfloat xh = load_upto(x + j, n) * rv;
      vfloat g = load_upto(dy + j, n) * load_upto(p.weight + j, n);
      return (g - xh * b) * rv;
    });
  };
  rows_with_column_sums(p.rows, C, p.partials, p.max_threads, 1, p.dweight, nullptr, row);
}

}  // namespace

#if defined(__AVX512F__)
#define KG_NORM_PATH "AVX-512 (16 lanes): one-read Chan/Welford row stats, fused output, rows over threads"
#elif defined(__AVX2__)
#define KG_NORM_PATH "AVX2 (8 lanes): one-read Chan/Welford row stats, fused output, rows over threads"
#else
#define KG_NORM_PATH "SSE2 (4 lanes): one-read Chan/Welford row stats, fused output, rows over threads"
#endif

extern const NormKernels norm_kernels = {
    {layernorm_naive, layernorm_backward_naive, rmsnorm_naive, rmsnorm_backward_naive},
    {layernorm_fast, layernorm_backward_fast, rmsnorm_fast, rmsnorm_backward_fast},
    KG_NORM_PATH};

KG_END_ISA_NAMESPACE
