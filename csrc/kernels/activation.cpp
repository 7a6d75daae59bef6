// Activations (relu, sigmoid, tanh, silu, gelu, swiglu), forward and backward, float32.
// Formulas in activation.h.
//
// version 1 (naive): a scalar loop over a scalar function written with std:: math, one
//   thread. Both gelus are evaluated in float64 (see the gelu_tanh note below).
// version 2 (fast): the same formulas on simd.h vectors, threads over contiguous chunks:
//   - one read of each input and one write of each output; outputs larger than the
//     last-level cache are written with streaming stores (simd.h's store_range), so a
//     large activation moves 8 bytes per element instead of 12;
//   - every exp is simd.h's exp_upto88 (arguments <= 0 or nearly: no overflow handling),
//     with 2^n by vscalefps on AVX-512: sigmoid, silu and gelu cost 1.2-1.7 cycles per
//     element (below the ~2.5 that two threads' share of DRAM bandwidth allows), the exact
//     gelu ~3.7; sigmoid and tanh are simd.h's;
//   - gelu_tanh: float64 only for the vectors that need it (below).
//
// Numerics, shared by both versions (max relative error over all floats about 2e-7, gelu
// tanh-form fast 2e-6; the derivatives of silu and gelu cross zero at x = -1.28 and
// x = -0.75, where the error is ~2e-7 absolute):
// - Never 1 - sigmoid(z) or 1 + tanh(u): they cancel. sigmoid(-z) = 1 - sigmoid(z) and
//   e = exp(-|z|) give both halves without overflow or cancellation, so
//   gelu_tanh(x) = 0.5 x (1 + tanh(u)) is computed as x * sigmoid(2u), and
//   tanh'(x) = 1 - tanh(x)^2 as 4e / (1 + e)^2 with e = exp(-2|x|).
// - gelu_tanh for x << 0 is ~ x exp(-|2u|), and the rounding error of a float32 2u times
//   |2u| (up to ~100) is the relative error of the result; so 2u is formed in float64
//   for x < -5.
// - Phi(x) for x < 0 is 0.5 erfc(-x / sqrt(2)), which keeps its relative accuracy where
//   Phi is tiny. The fast version evaluates erfc with the Numerical Recipes formula
//   erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2) (relative error < 1.2e-7 for all z >= 0),
//   with -z^2 = -x^2/2 split into an exact part and a small remainder so that the large
//   exponent loses nothing to rounding.
// - Inputs beyond +-200 are clamped where the formula would otherwise meet inf * 0 = NaN
//   (silu(-inf), gelu(-inf), and every derivative at +-inf); beyond that point the functions
//   already equal their limits in float32. NaN stays NaN (the clamps compare, NaN fails).
#include "kernels/activation.h"

#include <cmath>

#include "common/simd.h"
#include "common/threading.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;
constexpr double kSqrt2OverPi_d = 0.79788456080286535588;
constexpr double kGeluCubic_d = 0.044715;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr float kSaturate = 200.0f;                      // see "Inputs beyond +-200" above

// ---- version 1: naive ------------------------------------------------------------------

float clamp_below(float x, float lo) { return x < lo ? lo : x; }  // NaN stays NaN
float clamp_abs(float x, float hi) { return x < -hi ? -hi : (x > hi ? hi : x); }

float relu(float x) { return x < 0.0f ? 0.0f : x; }
float relu_grad(float x) { return x > 0.0f ? 1.0f : (x <= 0.0f ? 0.0f : x); }

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float sigmoid_grad(float x) { return sigmoid(x) * sigmoid(-x); }

float tanh_grad(float x) {  // 1 - tanh(x)^2, without the cancellation near |x| large
  float e = std::exp(-2.0f * std::fabs(x));
  return 4.0f * e / ((1.0f + e) * (1.0f + e));
}

float silu(float x) {
  x = clamp_below(x, -kSaturate);
  return x * sigmoid(x);
}
float silu_grad(float x) {
  x = clamp_abs(x, kSaturate);
  return sigmoid(x) * (1.0f + x * sigmoid(-x));
}

// In float64: for x << 0 the result is ~ x exp(-2|u|), and a float32 u's rounding error
// times |2u| (up to ~90) would be a 1e-5 relative error.
float gelu_tanh(float x) {
  double xd = clamp_below(x, -kSaturate);
  double u = kSqrt2OverPi_d * (xd + kGeluCubic_d * xd * xd * xd);
  return (float)(xd / (1.0 + std::exp(-2.0 * u)));  // = 0.5 x (1 + tanh(u))
}
float gelu_tanh_grad(float x) {
  double xd = clamp_abs(x, kSaturate);
  double u = kSqrt2OverPi_d * (xd + kGeluCubic_d * xd * xd * xd);
  double du = kSqrt2OverPi_d * (1.0 + 3.0 * kGeluCubic_d * xd * xd);
  double s = 1.0 / (1.0 + std::exp(-2.0 * u)), one_minus_s = 1.0 / (1.0 + std::exp(2.0 * u));
  return (float)(s * (1.0 + xd * one_minus_s * 2.0 * du));
}

float gelu_erf(float x) {
  double xd = clamp_below(x, -kSaturate);
  return (float)(0.5 * xd * std::erfc(-xd * kInvSqrt2));  // x * Phi(x)
}
float gelu_erf_grad(float x) {
  double xd = clamp_abs(x, kSaturate);
  double cdf = 0.5 * std::erfc(-xd * kInvSqrt2);
  double pdf = std::exp(-0.5 * xd * xd) * kInvSqrt2Pi;
  return (float)(cdf + xd * pdf);
}

float forward_scalar(Activation kind, float x) {
  switch (kind) {
    case Activation::relu: return relu(x);
    case Activation::sigmoid: return sigmoid(x);
    case Activation::tanh: return std::tanh(x);
    case Activation::silu: return silu(x);
    case Activation::gelu_tanh: return gelu_tanh(x);
    case Activation::gelu_erf: return gelu_erf(x);
  }
  return x;
}

float grad_scalar(Activation kind, float x) {
  switch (kind) {
    case Activation::relu: return relu_grad(x);
    case Activation::sigmoid: return sigmoid_grad(x);
    case Activation::tanh: return tanh_grad(x);
    case Activation::silu: return silu_grad(x);
    case Activation::gelu_tanh: return gelu_tanh_grad(x);
    case Activation::gelu_erf: return gelu_erf_grad(x);
  }
  return x;
}

void activation_naive(const ActivationArgs& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = forward_scalar(p.kind, p.x[i]);
}

void activation_backward_naive(const ActivationArgs& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = p.dy[i] * grad_scalar(p.kind, p.x[i]);
}

void swiglu_naive(const SwigluArgs& p) {
  const int64_t rows = p.rows > 0 ? p.rows : 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = p.gate + r * p.ld_in;
    const float* up = p.up + r * p.ld_in;
    float* out = p.out + r * p.n;
    for (int64_t i = 0; i < p.n; ++i) out[i] = silu(gate[i]) * up[i];
  }
}

void swiglu_backward_naive(const SwigluArgs& p) {
  const int64_t rows = p.rows > 0 ? p.rows : 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = p.gate + r * p.ld_in;
    const float* up = p.up + r * p.ld_in;
    const float* dy = p.dy + r * p.n;
    float* dgate = p.dgate + r * p.ld_grad;
    float* dup = p.dup + r * p.ld_grad;
    for (int64_t i = 0; i < p.n; ++i) {
      dgate[i] = dy[i] * up[i] * silu_grad(gate[i]);
      dup[i] = dy[i] * silu(gate[i]);
    }
  }
}

// ---- version 2: fast -------------------------------------------------------------------

using namespace simd;

inline vfloat clamp_below(vfloat x, float lo) { return x < lo ? broadcast(lo) : x; }
inline vfloat clamp_abs(vfloat x, float hi) {
  return x < -hi ? broadcast(-hi) : (x > hi ? broadcast(hi) : x);
}

inline bool any_greater(vfloat v, float t) {  // is some lane > t?
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)v, _mm512_set1_ps(t), _CMP_GT_OQ) != 0;
#elif defined(__AVX2__)
  return _mm256_movemask_ps((__m256)(v > t)) != 0;
#elif defined(__SSE2__)
  return _mm_movemask_ps((__m128)(v > t)) != 0;
#else
  for (int i = 0; i < kWidth; ++i)
    if (v[i] > t) return true;
  return false;
#endif
}

// The standard normal CDF Phi(x) and density phi(x), accurate where they are tiny.
// Phi(x) = 0.5 erfc(|x| / sqrt 2) for x < 0 and 1 - that for x >= 0, where
// erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2) (Numerical Recipes' erfcc), and
// -z^2 = -x^2 / 2 = a + b: a from x with its 12 low mantissa bits cleared (so a is exact),
// b the small rest. exp(a) * exp(b + P) then has no rounding error amplified by |a| ~ 100.
struct Normal {
  vfloat cdf, pdf;
};
template <bool kWantPdf>
inline Normal normal_parts(vfloat x) {
  x = clamp_abs(x, 30.0f);  // Phi(30) = 1 and phi(30) = 0 in float32
  vfloat xh = (vfloat)((vint)x & (int32_t)0xFFFFF000u);  // 12 significant bits: xh^2 exact
  vfloat xl = x - xh;
  vfloat a = (xh * xh) * -0.5f;       // <= 0
  vfloat b = (xl * (x + xh)) * -0.5f;  // <= 0, and a + b = -x^2 / 2
  vfloat z = abs(x) * (float)kInvSqrt2;
  vfloat t = 1.0f / (1.0f + 0.5f * z);
  vfloat p = broadcast(0.17087277f);
  p = p * t + -0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t + -1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t + -0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t + -1.26551223f;  // P(t) in [-1.27, 3e-8]
  vfloat ea = exp_upto88(a);
  vfloat half_erfc = 0.5f * t * ea * exp_upto88(b + p);  // Phi(-|x|)
  Normal r;
  r.cdf = x < 0.0f ? half_erfc : 1.0f - half_erfc;
  r.pdf = kWantPdf ? ea * exp_upto88(b) * (float)kInvSqrt2Pi : zero();
  return r;
}

// gelu_tanh(x) = x * sigmoid(z) with z = 2u = 2 sqrt(2/pi) (x + 0.044715 x^3), and
// sigmoid(z) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, with e = exp(-|z|). A float z
// carries ~3 roundings (relative error d ~ 1.2e-7), which become a relative error |z| d in e:
// - for x >= 0 that hardly matters: y = x / (1 + e) moves by at most e |z| d <= 0.37 d;
// - for x < 0, y ~ x e, |z| reaches ~90 before e underflows: 1e-5 relative error.
// So when a vector holds any x < -5 (|z| > 17), z and the reduction |z| = n ln2 + r are done
// in float64, as two halves of kWidth / 2 doubles (one register each); vectors with all
// x >= -5, nearly all of them in practice, stay in float32 (error <= 2e-6).
constexpr float kGeluFloatMinX = -5.0f;
constexpr double kGeluZ1 = 1.5957691216057308;  // 2 sqrt(2/pi): |z| = kGeluZ1 |x| + kGeluZ3 |x|^3
constexpr double kGeluZ3 = 0.071354816271363;   // 2 sqrt(2/pi) 0.044715

constexpr int kHalf = kWidth / 2;
typedef float vhalf __attribute__((vector_size(kHalf * 4)));
typedef double vdouble __attribute__((vector_size(kHalf * 8)));

inline void split_halves(vfloat v, vhalf& lo, vhalf& hi) {
#if defined(__AVX512F__)
  lo = (vhalf)_mm512_castps512_ps256((__m512)v);
  hi = (vhalf)_mm512_extractf32x8_ps((__m512)v, 1);
#elif defined(__AVX2__)
  lo = (vhalf)_mm256_castps256_ps128((__m256)v);
  hi = (vhalf)_mm256_extractf128_ps((__m256)v, 1);
#else
  lo = vhalf{v[0], v[1]};
  hi = vhalf{v[2], v[3]};
#endif
}

inline vfloat join_halves(vhalf lo, vhalf hi) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_insertf32x8(_mm512_castps256_ps512((__m256)lo), (__m256)hi, 1);
#elif defined(__AVX2__)
  return (vfloat)_mm256_insertf128_ps(_mm256_castps128_ps256((__m128)lo), (__m128)hi, 1);
#else
  return vfloat{lo[0], lo[1], hi[0], hi[1]};
#endif
}

// |z| = n ln2 + r (|r| <= ln2 / 2) for one half, in float64; returns r and n as floats.
inline void gelu_tanh_reduce(vhalf ax, vhalf& r, vhalf& n) {
  const double kRound = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  vdouble xd = __builtin_convertvector(ax, vdouble);
  vdouble z = xd * (kGeluZ1 + kGeluZ3 * (xd * xd));
  vdouble nd = (z * 1.4426950408889634 + kRound) - kRound;  // round(z / ln2)
  r = __builtin_convertvector(z - nd * 0.6931471805599453, vhalf);
  n = __builtin_convertvector(nd, vhalf);  // exact: 0..159
}

// exp(-|z|) (0 for |x| > 10.9, NaN stays NaN); see above for its accuracy.
inline vfloat gelu_tanh_exp_neg_abs_z(vfloat x) {
  vfloat ax = abs(x);
  if (!any_greater(-x, -kGeluFloatMinX))  // float32 (x = inf or 1e20 gives z = inf: clamped)
    return exp_upto88(-(ax * ((float)kGeluZ1 + (float)kGeluZ3 * (ax * ax))));
  ax = ax > 10.9f ? broadcast(10.9f) : ax;  // |z(10.9)| = 110: exp(-110) = 0 in float32
  vhalf x_lo, x_hi, r_lo, n_lo, r_hi, n_hi;
  split_halves(ax, x_lo, x_hi);
  gelu_tanh_reduce(x_lo, r_lo, n_lo);
  gelu_tanh_reduce(x_hi, r_hi, n_hi);
  return exp_reduced(-join_halves(r_lo, r_hi), -join_halves(n_lo, n_hi));
}

// One functor per activation: f(x) and f'(x) on a vector.
struct Relu {
  static vfloat f(vfloat x) { return x < 0.0f ? zero() : x; }
  static vfloat df(vfloat x) {
    return x > 0.0f ? broadcast(1.0f) : (x <= 0.0f ? zero() : x);
  }
};
struct Sigmoid {
  static vfloat f(vfloat x) { return simd::sigmoid(x); }
  static vfloat df(vfloat x) {  // sigmoid(x) sigmoid(-x) = e / (1 + e)^2, e = exp(-|x|)
    vfloat e = exp_upto88(-abs(x));
    vfloat r = 1.0f / (1.0f + e);
    return e * r * r;
  }
};
struct Tanh {
  static vfloat f(vfloat x) { return simd::tanh(x); }
  static vfloat df(vfloat x) {  // 1 - tanh^2 = 4e / (1 + e)^2, e = exp(-2|x|)
    vfloat e = exp_upto88(-2.0f * abs(x));
    vfloat r = 1.0f / (1.0f + e);
    return 4.0f * e * r * r;
  }
};
struct Silu {
  static vfloat f(vfloat x) {
    x = clamp_below(x, -kSaturate);
    return x * simd::sigmoid(x);
  }
  static vfloat df(vfloat x) {
    x = clamp_abs(x, kSaturate);
    SigmoidPair s = sigmoid_pair(x);
    return s.pos * (1.0f + x * s.neg);
  }
};
struct GeluTanh {
  static vfloat f(vfloat x) {
    x = clamp_below(x, -kSaturate);
    vfloat e = gelu_tanh_exp_neg_abs_z(x);
    vfloat r = 1.0f / (1.0f + e);
    return x * (x >= 0.0f ? r : e * r);  // x * sigmoid(z); z has the sign of x
  }
  static vfloat df(vfloat x) {  // s + x s (1 - s) dz/dx, s = sigmoid(z)
    x = clamp_abs(x, kSaturate);
    vfloat e = gelu_tanh_exp_neg_abs_z(x);
    vfloat r = 1.0f / (1.0f + e);
    vfloat s = x >= 0.0f ? r : e * r, one_minus_s = x >= 0.0f ? e * r : r;
    vfloat dz = (2.0f * kSqrt2OverPi) * (1.0f + (3.0f * kGeluCubic) * x * x);
    return s * (1.0f + x * one_minus_s * dz);
  }
};
struct GeluErf {
  static vfloat f(vfloat x) {
    x = clamp_below(x, -kSaturate);
    return x * normal_parts<false>(x).cdf;
  }
  static vfloat df(vfloat x) {
    x = clamp_abs(x, kSaturate);
    Normal n = normal_parts<true>(x);
    return n.cdf + x * n.pdf;
  }
};

// Threads split [0, n) into contiguous chunks on 64-float (cache line multiple) boundaries.
constexpr int64_t kChunk = 64;
constexpr int64_t kMinChunksPerThread = 256;  // 16k floats: worth waking a thread for

template <class Body>
void parallel_chunks(int64_t n, Body body) {
  int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, kMinChunksPerThread, [&](int64_t c0, int64_t c1) {
    int64_t i1 = c1 * kChunk < n ? c1 * kChunk : n;
    body(c0 * kChunk, i1);
  });
}

// Outputs larger than the last-level cache are written with streaming stores
// (simd.h's store_range): that saves the read of every output line.
template <class Fn>
void forward_fast(const ActivationArgs& p) {
  const bool stream = use_streaming(p.out, p.n * (int64_t)sizeof(float));
  parallel_chunks(p.n, [&](int64_t i0, int64_t i1) {
    store_range(p.out, i0, i1, stream,
                [&](int64_t i, int64_t n) { return Fn::f(load_upto(p.x + i, n)); });
    if (stream) stream_fence();
  });
}

template <class Fn>
void backward_fast(const ActivationArgs& p) {
  const bool stream = use_streaming(p.out, p.n * (int64_t)sizeof(float));
  parallel_chunks(p.n, [&](int64_t i0, int64_t i1) {
    store_range(p.out, i0, i1, stream, [&](int64_t i, int64_t n) {
      return load_upto(p.dy + i, n) * Fn::df(load_upto(p.x + i, n));
    });
    if (stream) stream_fence();
  });
}

void activation_fast(const ActivationArgs& p) {
  switch (p.kind) {
    case Activation::relu: return forward_fast<Relu>(p);
    case Activation::sigmoid: return forward_fast<Sigmoid>(p);
    case Activation::tanh: return forward_fast<Tanh>(p);
    case Activation::silu: return forward_fast<Silu>(p);
    case Activation::gelu_tanh: return forward_fast<GeluTanh>(p);
    case Activation::gelu_erf: return forward_fast<GeluErf>(p);
  }
}

void activation_backward_fast(const ActivationArgs& p) {
  switch (p.kind) {
    case Activation::relu: return backward_fast<Relu>(p);
    case Activation::sigmoid: return backward_fast<Sigmoid>(p);
    case Activation::tanh: return backward_fast<Tanh>(p);
    case Activation::silu: return backward_fast<Silu>(p);
    case Activation::gelu_tanh: return backward_fast<GeluTanh>(p);
    case Activation::gelu_erf: return backward_fast<GeluErf>(p);
  }
}

template <class Fn>
void span_forward_fn(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kWidth) {
    const int64_t m = n - i < kWidth ? n - i : kWidth;
    store_upto(y + i, Fn::f(load_upto(x + i, m)), m);
  }
}

template <class Fn>
void span_backward_fn(const float* dy, const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kWidth) {
    const int64_t m = n - i < kWidth ? n - i : kWidth;
    store_upto(out + i, load_upto(dy + i, m) * Fn::df(load_upto(x + i, m)), m);
  }
}

void span_forward(Activation kind, const float* x, float* y, int64_t n) {
  switch (kind) {
    case Activation::relu: return span_forward_fn<Relu>(x, y, n);
    case Activation::sigmoid: return span_forward_fn<Sigmoid>(x, y, n);
    case Activation::tanh: return span_forward_fn<Tanh>(x, y, n);
    case Activation::silu: return span_forward_fn<Silu>(x, y, n);
    case Activation::gelu_tanh: return span_forward_fn<GeluTanh>(x, y, n);
    case Activation::gelu_erf: return span_forward_fn<GeluErf>(x, y, n);
  }
}

void span_backward(Activation kind, const float* dy, const float* x, float* out, int64_t n) {
  switch (kind) {
    case Activation::relu: return span_backward_fn<Relu>(dy, x, out, n);
    case Activation::sigmoid: return span_backward_fn<Sigmoid>(dy, x, out, n);
    case Activation::tanh: return span_backward_fn<Tanh>(dy, x, out, n);
    case Activation::silu: return span_backward_fn<Silu>(dy, x, out, n);
    case Activation::gelu_tanh: return span_backward_fn<GeluTanh>(dy, x, out, n);
    case Activation::gelu_erf: return span_backward_fn<GeluErf>(dy, x, out, n);
  }
}

// The packed layout (rows > 0): threads take whole rows; rows are short and the outputs are
// read again at once (the next matrix product), so plain stores.
template <class Row>
void parallel_rows(const SwigluArgs& p, Row row) {
  int64_t min_rows = (kChunk * kMinChunksPerThread + p.n - 1) / (p.n > 0 ? p.n : 1);
  parallel_for(p.rows, min_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row(r);
  });
}

void swiglu_rows_fast(const SwigluArgs& p) {
  parallel_rows(p, [&](int64_t r) {
    const float* gate = p.gate + r * p.ld_in;
    const float* up = p.up + r * p.ld_in;
    float* out = p.out + r * p.n;
    int64_t i = 0;
    for (; i + kWidth <= p.n; i += kWidth) store(out + i, Silu::f(load(gate + i)) * load(up + i));
    if (i < p.n) {
      int64_t m = p.n - i;
      store_partial(out + i, Silu::f(load_partial(gate + i, m)) * load_partial(up + i, m), m);
    }
  });
}

void swiglu_fast(const SwigluArgs& p) {
  if (p.rows > 0) return swiglu_rows_fast(p);
  const bool stream = use_streaming(p.out, p.n * (int64_t)sizeof(float));
  parallel_chunks(p.n, [&](int64_t i0, int64_t i1) {
    store_range(p.out, i0, i1, stream, [&](int64_t i, int64_t n) {
      return Silu::f(load_upto(p.gate + i, n)) * load_upto(p.up + i, n);
    });
    if (stream) stream_fence();
  });
}

// dgate = dy * up * silu'(gate), dup = dy * silu(gate), sharing one exp per element.
inline void swiglu_grad(vfloat dy, vfloat gate, vfloat up, vfloat& dgate, vfloat& dup) {
  vfloat g = clamp_abs(gate, kSaturate);
  SigmoidPair s = sigmoid_pair(g);  // for gate > 100, s = (1, 0) exactly
  dgate = dy * up * (s.pos * (1.0f + g * s.neg));
  dup = dy * (clamp_below(gate, -kSaturate) * s.pos);
}

void swiglu_backward_rows_fast(const SwigluArgs& p) {
  parallel_rows(p, [&](int64_t r) {
    const float* gate = p.gate + r * p.ld_in;
    const float* up = p.up + r * p.ld_in;
    const float* dy = p.dy + r * p.n;
    float* dgate = p.dgate + r * p.ld_grad;
    float* dup = p.dup + r * p.ld_grad;
    vfloat dg, du;
    int64_t i = 0;
    for (; i + kWidth <= p.n; i += kWidth) {
      swiglu_grad(load(dy + i), load(gate + i), load(up + i), dg, du);
      store(dgate + i, dg);
      store(dup + i, du);
    }
    if (i < p.n) {
      int64_t m = p.n - i;
      swiglu_grad(load_partial(dy + i, m), load_partial(gate + i, m), load_partial(up + i, m),
                  dg, du);
      store_partial(dgate + i, dg, m);
      store_partial(dup + i, du, m);
    }
  });
}

void swiglu_backward_fast(const SwigluArgs& p) {
  if (p.rows > 0) return swiglu_backward_rows_fast(p);
  // Two outputs: stream only when one head piece aligns both (always, for numpy's arrays).
  const bool stream = use_streaming(p.dgate, 2 * p.n * (int64_t)sizeof(float)) &&
                      use_streaming(p.dup, 2 * p.n * (int64_t)sizeof(float)) &&
                      (p.dup - p.dgate) % kWidth == 0;
  parallel_chunks(p.n, [&](int64_t i, int64_t i1) {
    vfloat dg, du;
    if (stream) {
      int64_t head = (-(int64_t)(reinterpret_cast<uintptr_t>(p.dgate + i) / sizeof(float))) &
                     (kWidth - 1);
      if (head > i1 - i) head = i1 - i;
      if (head > 0) {
        swiglu_grad(load_partial(p.dy + i, head), load_partial(p.gate + i, head),
                    load_partial(p.up + i, head), dg, du);
        store_partial(p.dgate + i, dg, head);
        store_partial(p.dup + i, du, head);
        i += head;
      }
      for (; i + kWidth <= i1; i += kWidth) {
        swiglu_grad(load(p.dy + i), load(p.gate + i), load(p.up + i), dg, du);
        store_stream(p.dgate + i, dg);
        store_stream(p.dup + i, du);
      }
      stream_fence();
    }
    for (; i + kWidth <= i1; i += kWidth) {
      swiglu_grad(load(p.dy + i), load(p.gate + i), load(p.up + i), dg, du);
      store(p.dgate + i, dg);
      store(p.dup + i, du);
    }
    if (i < i1) {
      int64_t m = i1 - i;
      swiglu_grad(load_partial(p.dy + i, m), load_partial(p.gate + i, m),
                  load_partial(p.up + i, m), dg, du);
      store_partial(p.dgate + i, dg, m);
      store_partial(p.dup + i, du, m);
    }
  });
}

// ---- the simd.h math on its own, for the accuracy tests ----------------------------------

template <class F>
void map_simd(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) store(y + i, f(load(x + i)));
  if (i < n) store_partial(y + i, f(load_partial(x + i, n - i)), n - i);
}

void simd_math(SimdMath fn, const float* x, float* y, int64_t n) {
  switch (fn) {
    case SimdMath::exp: return map_simd(x, y, n, [](vfloat v) { return simd::exp(v); });
    case SimdMath::tanh: return map_simd(x, y, n, [](vfloat v) { return simd::tanh(v); });
    case SimdMath::sigmoid: return map_simd(x, y, n, [](vfloat v) { return simd::sigmoid(v); });
  }
}

}  // namespace

#if defined(__AVX512F__)
#define KG_ACTIVATION_PATH "AVX-512 (16 lanes), polynomial exp / erfc, chunks over threads"
#elif defined(__AVX2__)
#define KG_ACTIVATION_PATH "AVX2 (8 lanes), polynomial exp / erfc, chunks over threads"
#else
#define KG_ACTIVATION_PATH "SSE2 (4 lanes), polynomial exp / erfc, chunks over threads"
#endif

extern const ActivationKernels activation_kernels = {
    {activation_naive, activation_backward_naive, swiglu_naive, swiglu_backward_naive},
    {activation_fast, activation_backward_fast, swiglu_fast, swiglu_backward_fast},
    KG_ACTIVATION_PATH,
    simd_math,
    span_forward,
    span_backward};

KG_END_ISA_NAMESPACE
