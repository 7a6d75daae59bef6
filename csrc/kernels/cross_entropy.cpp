// cross-entropy over a vocabulary, loss and gradient fused. Shapes and math in cross_entropy.h.
//
// version 1 (naive): per row, plain loops: the max, the sum of exp (in double), the loss
//   logsumexp - logits[target], then the gradient w * (exp(x - max) / sum - onehot). One thread.
// version 2 (online): per row, ONE read from memory computes max and sum together (online
//   softmax, see softmax_rows.h), then, if the gradient is wanted, one pass writes it from the
//   exps kept in L1/L2 (a multiply per value); the probabilities are never written out. SIMD
//   exp, threads over rows, streaming stores for gradients larger than the L3 cache.
//   Loss-only calls read the logits exactly once and write nothing but the losses.
//
// Special values: a NaN or +inf logit in a row makes that row's loss and gradient NaN; a
// target logit of -inf gives loss +inf (the target has probability 0).
#include "kernels/cross_entropy.h"

#include <cmath>

#include "common/simd.h"
#include "common/threading.h"
#include "kernels/softmax_rows.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;
using namespace softmax_rows;

inline float row_weight(const CrossEntropyArgs& p, int64_t i) {
  return p.grad_scale_rows ? p.grad_scale * p.grad_scale_rows[i] : p.grad_scale;
}

// ---- version 1: naive ------------------------------------------------------------------
void cross_entropy_naive(const CrossEntropyArgs& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float* x = p.logits + i * p.v;
    float* g = p.dlogits ? p.dlogits + i * p.v : nullptr;
    int64_t t = p.targets[i];
    if (t == p.ignore_index) {
      if (p.losses) p.losses[i] = 0.0f;
      if (g)
        for (int64_t j = 0; j < p.v; ++j) g[j] = 0.0f;
      continue;
    }
    float mx = -INFINITY;
    for (int64_t j = 0; j < p.v; ++j) mx = x[j] > mx ? x[j] : mx;
    double sum = 0.0;
    for (int64_t j = 0; j < p.v; ++j) sum += std::exp(x[j] - mx);
    if (p.losses) p.losses[i] = (float)(mx + std::log(sum) - x[t]);
    if (g) {
      float w = row_weight(p, i);
      float w_over_sum = (float)(w / sum);
      for (int64_t j = 0; j < p.v; ++j) g[j] = std::exp(x[j] - mx) * w_over_sum;
      g[t] -= w;
    }
  }
}

// ---- version 2: online -----------------------------------------------------------------
void cross_entropy_online(const CrossEntropyArgs& p) {
  const RowPlan plan = plan_rows(p.n, p.v, p.dlogits);
  const bool stream = p.dlogits && plan.stream;
  parallel_for(p.n, min_rows_per_thread(p.v), [&](int64_t r0, int64_t r1) {
    float* kept = plan.keep && p.dlogits ? kept_buffer(p.v) : nullptr;  // null: recompute
    float chunk_max[kMaxKeptChunks];
    for (int64_t i = r0; i < r1; ++i) {
      const float* x = p.logits + i * p.v;
      float* g = p.dlogits ? p.dlogits + i * p.v : nullptr;
      const int64_t t = p.targets[i];
      if (t == p.ignore_index) {
        if (p.losses) p.losses[i] = 0.0f;
        if (g) store_range(g, 0, p.v, stream, [](int64_t, int64_t) { return zero(); });
        continue;
      }
      RowStats st = online_row(x, p.v, 1.0f, kept, kept ? chunk_max : nullptr);  // one read
      if (p.losses) p.losses[i] = (float)(st.max + std::log(st.sum) - x[t]);
      if (!g) continue;
      // g = w * softmax - w * onehot(t); the target is patched into its vector, so that every
      // element is written exactly once, streaming or not.
      const float w = row_weight(p, i);
      auto minus_target = [&](int64_t j, int64_t k, vfloat r) {
        if ((uint64_t)(t - j) < (uint64_t)k) r[t - j] -= w;
        return r;
      };
      if (kept) {
        write_from_kept(g, p.v, kept, chunk_max, st, w, stream, minus_target);
      } else {
        const vfloat m = broadcast(st.max), ws = broadcast((float)(w / st.sum));
        store_range(g, 0, p.v, stream, [&](int64_t j, int64_t k) {
          return minus_target(j, k, exp_upto88(load_upto(x + j, k) - m) * ws);
        });
      }
    }
    if (stream) stream_fence();
  });
}

}  // namespace

#if defined(__AVX512F__)
#define KG_CE_ISA "AVX-512 vscalefps"
#elif defined(__AVX2__)
#define KG_CE_ISA "AVX2"
#else
#define KG_CE_ISA "SSE2"
#endif
#define KG_CE_PATH                                                                        \
  "loss and gradient from one online max+sum pass in chunks of 1024, " KG_CE_ISA " exp, "   \
  "exps kept for the gradient pass (logits <= 8 MiB or rows <= 1024), streaming stores "    \
  "(gradients >= 32 MiB, rows >= 1024), threads over rows"

extern const CrossEntropyKernels cross_entropy_kernels = {cross_entropy_naive,
                                                          cross_entropy_online, KG_CE_PATH};

KG_END_ISA_NAMESPACE
