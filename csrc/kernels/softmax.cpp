// softmax / log-softmax over the last axis, forward and backward, float32. Shapes in softmax.h.
//
// version 1 (naive): per row, three plain loops: the max (subtracted so that exp cannot
//   overflow), the sum of exp (in double), then the outputs. One thread.
// version 2 (online): per row, ONE read from memory computes the max and the sum together
//   (online softmax: the running sum is rescaled whenever the running max grows; see
//   softmax_rows.h), then one pass writes the outputs while the row is still in L1/L2:
//   from the exps pass 1 kept (a multiply per value) or by recomputing them, whichever
//   plan_rows measured faster for the shape. x comes from memory once and y goes to memory
//   once. SIMD exp, threads over rows, streaming stores for large outputs.
// backward, version 1 (naive) and 2 (fused): per row, the reduction (sum dy*y, or sum dy)
//   in one read, then one pass writes dx while dy and y are still in L2. SIMD, threads.
//
// Special values: NaN or +inf anywhere in a row makes that row's outputs NaN (as in the
// reference: x - max(x) = inf - inf); -inf entries are fine and get probability 0 (log: -inf);
// a row whose entries are all -inf gives NaN (0/0), as PyTorch does.
#include "kernels/softmax.h"

#include <cmath>

#include "common/simd.h"
#include "common/threading.h"
#include "kernels/softmax_rows.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;
using namespace softmax_rows;

// Columns [0, valid) of row r take part; with the causal mask row i = r % t keeps
// j <= i + (cols - t), i.e. the first i + cols - t + 1 columns.
inline int64_t valid_cols(const SoftmaxArgs& p, int64_t r) {
  return p.causal ? r % p.t + p.cols - p.t + 1 : p.cols;
}

// ---- version 1: naive ------------------------------------------------------------------
void softmax_naive(const SoftmaxArgs& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.cols;
    float* y = p.y + r * p.cols;
    int64_t valid = valid_cols(p, r);
    float mx = -INFINITY;
    for (int64_t j = 0; j < valid; ++j) {
      float v = p.scale * x[j];
      mx = v > mx ? v : mx;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < valid; ++j) sum += std::exp(p.scale * x[j] - mx);
    if (p.log) {
      double lse = mx + std::log(sum);
      for (int64_t j = 0; j < valid; ++j) y[j] = (float)(p.scale * x[j] - lse);
      for (int64_t j = valid; j < p.cols; ++j) y[j] = -INFINITY;
    } else {
      float inv = (float)(1.0 / sum);
      for (int64_t j = 0; j < valid; ++j) y[j] = std::exp(p.scale * x[j] - mx) * inv;
      for (int64_t j = valid; j < p.cols; ++j) y[j] = 0.0f;
    }
  }
}

void softmax_backward_naive(const SoftmaxBackwardArgs& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* dy = p.dy + r * p.cols;
    const float* y = p.y + r * p.cols;
    float* dx = p.dx + r * p.cols;
    double sum = 0.0;  // softmax: sum dy*y; log-softmax: sum of dy over unmasked entries
    for (int64_t j = 0; j < p.cols; ++j)
      if (!p.log)
        sum += (double)dy[j] * y[j];
      else if (y[j] != -INFINITY)
        sum += dy[j];
    float s = (float)sum;
    for (int64_t j = 0; j < p.cols; ++j) {
      if (!p.log)
        dx[j] = p.scale * y[j] * (dy[j] - s);
      else
        dx[j] = y[j] == -INFINITY ? 0.0f : p.scale * (dy[j] - std::exp(y[j]) * s);
    }
  }
}

// ---- version 2: online -----------------------------------------------------------------
void softmax_online(const SoftmaxArgs& p) {
  const RowPlan plan = plan_rows(p.rows, p.cols, p.y);
  const bool stream = plan.stream;
  parallel_for(p.rows, min_rows_per_thread(p.cols), [&](int64_t r0, int64_t r1) {
    const vfloat vs = broadcast(p.scale);
    float* kept = plan.keep && !p.log ? kept_buffer(p.cols) : nullptr;  // null: recompute
    float chunk_max[kMaxKeptChunks];
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = p.x + r * p.cols;
      float* y = p.y + r * p.cols;
      int64_t valid = valid_cols(p, r);
      // pass 1: max and sum, one read of x from memory
      RowStats st = online_row(x, valid, p.scale, kept, kept ? chunk_max : nullptr);
      // pass 2: the outputs, from x (or the kept exps) still in L1/L2
      if (p.log) {  // y = scale*x - (M + log sum): no exp at all
        const vfloat lse = broadcast((float)(st.max + std::log(st.sum)));
        store_range(y, 0, valid, stream,
                    [&](int64_t j, int64_t k) { return load_upto(x + j, k) * vs - lse; });
      } else if (kept) {  // y = kept exp * exp(chunk max - M) / sum: a multiply per value
        write_from_kept(y, valid, kept, chunk_max, st, 1.0, stream,
                        [](int64_t, int64_t, vfloat v) { return v; });
      } else {  // y = exp(scale*x - M) / sum
        const vfloat m = broadcast(st.max), inv = broadcast((float)(1.0 / st.sum));
        store_range(y, 0, valid, stream, [&](int64_t j, int64_t k) {
          return exp_upto88(load_upto(x + j, k) * vs - m) * inv;
        });
      }
      if (valid < p.cols) {
        const vfloat fill = broadcast(p.log ? -INFINITY : 0.0f);
        store_range(y + valid, 0, p.cols - valid, stream, [&](int64_t, int64_t) { return fill; });
      }
    }
    if (stream) stream_fence();
  });
}

// Sum over a row of dy*y (softmax) or of dy where y != -inf (log-softmax): four float
// accumulators per chunk of 1024 values, chunk sums added in double.
inline double backward_row_sum(const float* dy, const float* y, int64_t n, bool log) {
  const vfloat ninf = broadcast(-INFINITY);
  auto term = [&](vfloat d, vfloat yv) { return log ? (yv != ninf ? d : zero()) : d * yv; };
  double total = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = n - c0 < kChunk ? n - c0 : kChunk;
    const float *dc = dy + c0, *yc = y + c0;
    vfloat a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    int64_t j = 0;
    for (; j + 4 * kWidth <= len; j += 4 * kWidth) {
      a0 += term(load(dc + j), load(yc + j));
      a1 += term(load(dc + j + kWidth), load(yc + j + kWidth));
      a2 += term(load(dc + j + 2 * kWidth), load(yc + j + 2 * kWidth));
      a3 += term(load(dc + j + 3 * kWidth), load(yc + j + 3 * kWidth));
    }
    for (; j < len; j += kWidth) {
      int64_t k = len - j < kWidth ? len - j : kWidth;
      a0 += term(load_upto(dc + j, k), load_upto(yc + j, k));  // zero padding adds 0 either way
    }
    total += reduce_add_double((a0 + a1) + (a2 + a3));
  }
  return total;
}

void softmax_backward_fused(const SoftmaxBackwardArgs& p) {
  const bool stream = plan_rows(p.rows, p.cols, p.dx).stream;
  parallel_for(p.rows, min_rows_per_thread(p.cols), [&](int64_t r0, int64_t r1) {
    const vfloat vs = broadcast(p.scale), ninf = broadcast(-INFINITY);
    for (int64_t r = r0; r < r1; ++r) {
      const float* dy = p.dy + r * p.cols;
      const float* y = p.y + r * p.cols;
      float* dx = p.dx + r * p.cols;
      const vfloat s = broadcast((float)backward_row_sum(dy, y, p.cols, p.log));
      if (p.log)
        store_range(dx, 0, p.cols, stream, [&](int64_t j, int64_t k) {
          vfloat yv = load_upto(y + j, k);
          vfloat g = vs * (load_upto(dy + j, k) - simd::exp(yv) * s);
          return yv != ninf ? g : zero();
        });
      else
        store_range(dx, 0, p.cols, stream, [&](int64_t j, int64_t k) {
          vfloat yv = load_upto(y + j, k);
          return vs * yv * (load_upto(dy + j, k) - s);
        });
    }
    if (stream) stream_fence();
  });
}

}  // namespace

#if defined(__AVX512F__)
#define KG_SOFTMAX_ISA "AVX-512 vscalefps"
#elif defined(__AVX2__)
#define KG_SOFTMAX_ISA "AVX2"
#else
#define KG_SOFTMAX_ISA "SSE2"
#endif
#define KG_SOFTMAX_PATH                                                                   \
  "online max+sum in chunks of 1024, " KG_SOFTMAX_ISA " exp, exps kept for the second pass " \
  "(inputs <= 8 MiB or rows <= 1024), streaming stores (outputs >= 32 MiB, rows >= 1024), "  \
  "threads over rows"

extern const SoftmaxKernels softmax_kernels = {softmax_naive, softmax_online,
                                               softmax_backward_naive, softmax_backward_fused,
                                               KG_SOFTMAX_PATH};

KG_END_ISA_NAMESPACE
