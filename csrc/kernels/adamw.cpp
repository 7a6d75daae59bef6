// AdamW step, global gradient norm, in-place scaling.  Formulas in adamw.h.
//
// version 1 (naive): the formula element by element, one thread.
// version 2 (fast):
//   adamw       - one fused pass: each element's param, grad, m, v are read once and param, m,
//                 v written once (28 bytes per parameter; numpy's formula makes ~10 passes
//                 with temporaries). The scalars (1 - lr*wd, lr/bc1, sqrt(bc2)) are formed
//                 once in float64. Equal contiguous ranges per thread, SIMD with masked tails.
//                 The step is limited by memory bandwidth, not arithmetic.
//   sum_squares - the arrays are treated as one long vector cut into equal ranges per thread;
//                 each thread widens its floats to float64 and sums the squares in 4 SIMD
//                 accumulators; the per-thread partials are added in thread order, so the
//                 result is the same on every run with the same thread count.
//   scale       - x *= s, the same partition.
#include "kernels/adamw.h"

#include "common/simd.h"
#include "common/threading.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// The float32 constants of one step, formed in float64 as PyTorch does with Python floats.
struct AdamwConstants {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
  explicit AdamwConstants(const AdamwArgs& a) {
    double bc1 = 1.0 - std::pow(a.beta1, static_cast<double>(a.step));
    double bc2 = 1.0 - std::pow(a.beta2, static_cast<double>(a.step));
    decay = static_cast<float>(1.0 - a.lr * a.weight_decay);
    beta1 = static_cast<float>(a.beta1);
    one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
    beta2 = static_cast<float>(a.beta2);
    one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
    step_size = static_cast<float>(a.lr / bc1);
    bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    eps = static_cast<float>(a.eps);
  }
};

// ---- version 1: naive ------------------------------------------------------------------
void adamw_naive(const AdamwArgs& a) {
  const AdamwConstants k(a);
  for (int64_t i = 0; i < a.n; ++i) {
    float g = a.grad[i];
    float m = k.beta1 * a.m[i] + k.one_minus_beta1 * g;
    float v = k.beta2 * a.v[i] + k.one_minus_beta2 * g * g;
    float denom = std::sqrt(v) / k.bc2_sqrt + k.eps;
    a.param[i] = a.param[i] * k.decay - k.step_size * (m / denom);
    a.m[i] = m;
    a.v[i] = v;
  }
}

double sum_squares_naive(const ArrayListArgs& a) {
  double sum = 0.0;
  for (int64_t k = 0; k < a.count; ++k)
    for (int64_t i = 0; i < a.sizes[k]; ++i) sum += static_cast<double>(a.data[k][i]) * a.data[k][i];
  return sum;
}

void scale_naive(const ArrayListArgs& a, float s) {
  for (int64_t k = 0; k < a.count; ++k)
    for (int64_t i = 0; i < a.sizes[k]; ++i) a.data[k][i] *= s;
}

// ---- version 2: fast -------------------------------------------------------------------
// The update for one vector of elements (identical arithmetic to the naive loop).
struct AdamwVec {
  vfloat decay, beta1, omb1, beta2, omb2, step_size, bc2_sqrt, eps;
  explicit AdamwVec(const AdamwConstants& k)
      : decay(broadcast(k.decay)), beta1(broadcast(k.beta1)), omb1(broadcast(k.one_minus_beta1)),
        beta2(broadcast(k.beta2)), omb2(broadcast(k.one_minus_beta2)),
        step_size(broadcast(k.step_size)), bc2_sqrt(broadcast(k.bc2_sqrt)), eps(broadcast(k.eps)) {}
  inline void apply(vfloat& p, vfloat g, vfloat& m, vfloat& v) const {
    m = beta1 * m + omb1 * g;
    v = beta2 * v + omb2 * g * g;
    vfloat denom = simd::sqrt(v) / bc2_sqrt + eps;
    p = p * decay - step_size * (m / denom);
  }
};

void adamw_fast(const AdamwArgs& a) {
  const AdamwVec k{AdamwConstants(a)};
  parallel_for(a.n, 1 << 15, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + kWidth <= i1; i += kWidth) {
      vfloat p = load(a.param + i), g = load(a.grad + i), m = load(a.m + i), v = load(a.v + i);
      k.apply(p, g, m, v);
      store(a.param + i, p);
      store(a.m + i, m);
      store(a.v + i, v);
    }
    if (i < i1) {
      int64_t r = i1 - i;
      vfloat p = load_partial(a.param + i, r), g = load_partial(a.grad + i, r);
      vfloat m = load_partial(a.m + i, r), v = load_partial(a.v + i, r);
      k.apply(p, g, m, v);
      store_partial(a.param + i, p, r);
      store_partial(a.m + i, m, r);
      store_partial(a.v + i, v, r);
    }
  });
}

// Calls f(pointer, count) for the pieces of the concatenated arrays in [begin, end).
template <class F>
inline void for_each_piece(const ArrayListArgs& a, int64_t begin, int64_t end, F&& f) {
  int64_t start = 0;  // index of array k's first element in the concatenation
  for (int64_t k = 0; k < a.count && start < end; start += a.sizes[k], ++k) {
    int64_t lo = begin > start ? begin : start;
    int64_t hi = end < start + a.sizes[k] ? end : start + a.sizes[k];
    if (lo < hi) f(a.data[k] + (lo - start), hi - lo);
  }
}

inline int64_t total_size(const ArrayListArgs& a) {
  int64_t n = 0;
  for (int64_t k = 0; k < a.count; ++k) n += a.sizes[k];
  return n;
}

typedef double vdouble __attribute__((vector_size(kWidth * 4)));  // kWidth / 2 doubles
typedef float vhalf __attribute__((vector_size(kWidth * 2)));     // kWidth / 2 floats

inline vdouble load_widen(const float* p) {
  vhalf h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, vdouble);
}

double sum_squares_piece(const float* x, int64_t n) {
  constexpr int64_t H = kWidth / 2;
  vdouble a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 * H <= n; i += 4 * H) {
    vdouble d0 = load_widen(x + i), d1 = load_widen(x + i + H);
    vdouble d2 = load_widen(x + i + 2 * H), d3 = load_widen(x + i + 3 * H);
    a0 += d0 * d0;
    a1 += d1 * d1;
    a2 += d2 * d2;
    a3 += d3 * d3;
  }
  vdouble acc = (a0 + a1) + (a2 + a3);
  double sum = 0.0;
  for (int l = 0; l < H; ++l) sum += acc[l];
  for (; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

double sum_squares_fast(const ArrayListArgs& a) {
  constexpr int kMaxThreads = 1024;
  double partial[kMaxThreads] = {};
  const int64_t n = total_size(a);
  int nt = threads_for(n, 1 << 16);
  if (nt > kMaxThreads) nt = kMaxThreads;
  parallel_region(nt, [&](int t, int count) {
    double s = 0.0;
    for_each_piece(a, n * t / count, n * (t + 1) / count,
                   [&](const float* x, int64_t len) { s += sum_squares_piece(x, len); });
    partial[t] = s;
  });
  double total = 0.0;
  for (int t = 0; t < nt; ++t) total += partial[t];
  return total;
}

void scale_fast(const ArrayListArgs& a, float s) {
  const int64_t n = total_size(a);
  parallel_region(threads_for(n, 1 << 16), [&](int t, int count) {
    for_each_piece(a, n * t / count, n * (t + 1) / count, [&](float* x, int64_t len) {
      vfloat sv = broadcast(s);
      int64_t i = 0;
      for (; i + kWidth <= len; i += kWidth) store(x + i, load(x + i) * sv);
      if (i < len) store_partial(x + i, load_partial(x + i, len - i) * sv, len - i);
    });
  });
}

}  // namespace

extern const AdamwKernels adamw_kernels = {
    adamw_naive, adamw_fast, sum_squares_naive, sum_squares_fast, scale_naive, scale_fast,
#if defined(__AVX512F__)
    "fused single-pass AdamW, float64 sum of squares, AVX-512"
#elif defined(__AVX2__)
    "fused single-pass AdamW, float64 sum of squares, AVX2"
#else
    "fused single-pass AdamW, float64 sum of squares, SSE2"
#endif
};

KG_END_ISA_NAMESPACE
