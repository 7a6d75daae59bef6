// Positions: sinusoidal table and rotary embeddings (RoPE).  Formulas and shapes in rope.h.
//
// version 1 (naive): for every value, the frequency with std::pow, the angle in float64 and its
//   std::sin / std::cos; one thread. Short and obviously right, and slow: one pow and one
//   sin/cos per pair of values.
// version 2 (fast):
//   - the frequencies w_i = base^(-2i/rd) once per call (rd/2 calls to std::pow);
//   - sin and cos of the float64 angles p * w_i with a SIMD float64 sincos (Cody-Waite
//     reduction by pi/2 in three parts, then Taylor polynomials on [-pi/4, pi/4]; about 1e-15
//     absolute, far below float32 rounding), rounded to float32 only when stored;
//   - RoPE computes that cos / sin table once per call for the T positions (a workspace from
//     the binding) and then rotates every [T, D] slice with plain SIMD multiply-adds:
//       half:        y[:h] = x1*cos - x2*sin,  y[h:] = x2*cos + x1*sin    (x1 = x[:h], x2 = x[h:rd])
//       interleaved: y = x*cos2 + swap_pairs(x)*sin2 with the table expanded to
//                    cos2 = (c0, c0, c1, c1, ..), sin2 = (-s0, s0, -s1, s1, ..)
//     Threads take equal contiguous ranges of the N*T rows, streaming x and out in order.
#include "kernels/rope.h"

#include "common/simd.h"
#include "common/threading.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// ---- version 1: naive ------------------------------------------------------------------
void sinusoidal_naive(const SinusoidalArgs& a) {
  for (int64_t t = 0; t < a.t; ++t) {
    double p = static_cast<double>(a.offset + t);
    for (int64_t j = 0; j < a.c; ++j) {
      int64_t i = j / 2;
      double angle = p * std::pow(a.base, -2.0 * i / a.c);
      a.out[t * a.c + j] = static_cast<float>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  }
}

void rope_naive(const RopeArgs& a) {
  const int64_t rd = a.rotary_dim, half = rd / 2;
  for (int64_t s = 0; s < a.n; ++s) {
    for (int64_t t = 0; t < a.t; ++t) {
      const float* x = a.x + (s * a.t + t) * a.d;
      float* y = a.out + (s * a.t + t) * a.d;
      double p = static_cast<double>(a.positions ? a.positions[t] : a.offset + t);
      for (int64_t i = 0; i < half; ++i) {
        double angle = p * std::pow(a.base, -2.0 * i / rd);
        float c = static_cast<float>(std::cos(angle));
        float sn = static_cast<float>(a.inverse ? -std::sin(angle) : std::sin(angle));
        int64_t i1 = a.interleaved ? 2 * i : i;  // the pair (i1, i2) that rotates together
        int64_t i2 = a.interleaved ? 2 * i + 1 : i + half;
        float x1 = x[i1], x2 = x[i2];
        y[i1] = x1 * c - x2 * sn;
        y[i2] = x2 * c + x1 * sn;
      }
      for (int64_t j = rd; j < a.d; ++j) y[j] = x[j];
    }
  }
}

// ---- SIMD float64 sincos -------------------------------------------------------------------
constexpr int kDWidth = kWidth / 2;  // doubles per vector
typedef double vdouble __attribute__((vector_size(kWidth * 4)));
typedef int64_t vlong __attribute__((vector_size(kWidth * 4)));

// pi/2 = kPio2a + kPio2b + kPio2c; the first two have 28 significant bits, so n * kPio2a and
// n * kPio2b are exact for |n| < 2^25 and x - n * pi/2 loses nothing to cancellation.
constexpr double kPio2a = 1.570796325802803;         // 0x1.921fb54p+0
constexpr double kPio2b = 9.920935808982456e-10;     // 0x1.10b4612p-30
constexpr double kPio2c = -1.2177051777973966e-18;   // -0x1.676733ae8fe48p-60
constexpr double kMaxReduced = 1e7;  // |x| beyond this (or inf / NaN): scalar std::sin/cos

// sin(x) and cos(x) for every lane.
inline void sincos(vdouble x, vdouble* sin_out, vdouble* cos_out) {
  bool any_large = false;
  for (int l = 0; l < kDWidth; ++l) any_large |= !(std::fabs(x[l]) <= kMaxReduced);
  if (any_large) {  // rare: huge positions times a large frequency, or inf / NaN
    for (int l = 0; l < kDWidth; ++l) {
      (*sin_out)[l] = std::sin(x[l]);
      (*cos_out)[l] = std::cos(x[l]);
    }
    return;
  }
  const double kRound = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  vdouble t = x * 0.63661977236758134308 + kRound;
  vdouble n = t - kRound;                    // nearest integer to x / (pi/2)
  vlong q = (vlong)t;                        // its low bits: n mod 4 (the quadrant)
  vdouble r = x - n * kPio2a;
  r = r - n * kPio2b;
  r = r - n * kPio2c;                        // r = x - n * pi/2, |r| <= pi/4 (+ a hair)
  vdouble r2 = r * r;
  // Taylor series: sin to r^13, cos to r^14 (truncation below 3e-14 for |r| <= pi/4).
  vdouble s = r2 * (1.0 / 6227020800) - 1.0 / 39916800;
  s = s * r2 + 1.0 / 362880;
  s = s * r2 - 1.0 / 5040;
  s = s * r2 + 1.0 / 120;
  s = s * r2 - 1.0 / 6;
  s = r + r * r2 * s;
  vdouble c = r2 * (-1.0 / 87178291200) + 1.0 / 479001600;
  c = c * r2 - 1.0 / 3628800;
  c = c * r2 + 1.0 / 40320;
  c = c * r2 - 1.0 / 720;
  c = c * r2 + 1.0 / 24;
  c = c * r2 - 0.5;
  c = c * r2 + 1.0;
  // sin(r + n pi/2) and cos(r + n pi/2) by quadrant: swap on odd n, negate by the table
  //   n mod 4:   0      1      2      3
  //   sin:      s      c     -s     -c
  //   cos:      c     -s     -c      s
  vlong odd = (q & 1) != 0;
  vdouble so = odd ? c : s;
  vdouble co = odd ? s : c;
  *sin_out = (q & 2) != 0 ? -so : so;
  *cos_out = ((q + 1) & 2) != 0 ? -co : co;
}

inline vdouble load_d(const double* p) {
  vdouble v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// sin and cos of p * freq[i] for i < count (count <= kChunk) into s[], c[] (float64).
constexpr int kChunk = 64;
inline void sincos_chunk(double p, const double* freq, int64_t count, double* s, double* c) {
  int64_t i = 0;
  for (; i + kDWidth <= count; i += kDWidth) {
    vdouble vs, vc;
    sincos(load_d(freq + i) * p, &vs, &vc);
    std::memcpy(s + i, &vs, sizeof(vs));
    std::memcpy(c + i, &vc, sizeof(vc));
  }
  if (i < count) {
    vdouble angle = {};
    for (int64_t l = 0; l < count - i; ++l) angle[l] = freq[i + l] * p;
    vdouble vs, vc;
    sincos(angle, &vs, &vc);
    for (int64_t l = 0; l < count - i; ++l) {
      s[i + l] = vs[l];
      c[i + l] = vc[l];
    }
  }
}

// ---- version 2: fast ---------------------------------------------------------------------
// freq[i] = base^(-2i/dim) for i < count.
void frequencies(double base, int64_t dim, int64_t count, double* freq) {
  for (int64_t i = 0; i < count; ++i) freq[i] = std::pow(base, -2.0 * i / dim);
}

void sinusoidal_fast(const SinusoidalArgs& a) {
  const int64_t C = a.c, pairs = (C + 1) / 2;
  double* freq = a.freq;
  frequencies(a.base, C, pairs, freq);
  parallel_for(a.t, (1 << 12) / C + 1, [&](int64_t t0, int64_t t1) {
    double s[kChunk], c[kChunk];
    for (int64_t t = t0; t < t1; ++t) {
      double p = static_cast<double>(a.offset + t);
      float* row = a.out + t * C;
      for (int64_t i0 = 0; i0 < pairs; i0 += kChunk) {
        int64_t count = pairs - i0 < kChunk ? pairs - i0 : kChunk;
        sincos_chunk(p, freq + i0, count, s, c);
        for (int64_t i = 0; i < count; ++i) {
          int64_t j = 2 * (i0 + i);
          row[j] = static_cast<float>(s[i]);
          if (j + 1 < C) row[j + 1] = static_cast<float>(c[i]);
        }
      }
    }
  });
}

// The table rows for positions [t0, t1): per position cos then signed sin (see rope.h).
void rope_table(const RopeArgs& a, const double* freq, int64_t t0, int64_t t1) {
  const int64_t rd = a.rotary_dim, half = rd / 2;
  const int64_t stride = a.interleaved ? 2 * rd : rd;
  const double sign = a.inverse ? -1.0 : 1.0;
  double s[kChunk], c[kChunk];
  for (int64_t t = t0; t < t1; ++t) {
    double p = static_cast<double>(a.positions ? a.positions[t] : a.offset + t);
    float* cos_row = a.table + t * stride;
    float* sin_row = cos_row + stride / 2;
    for (int64_t i0 = 0; i0 < half; i0 += kChunk) {
      int64_t count = half - i0 < kChunk ? half - i0 : kChunk;
      sincos_chunk(p, freq + i0, count, s, c);
      for (int64_t i = 0; i < count; ++i) {
        float cf = static_cast<float>(c[i]), sf = static_cast<float>(sign * s[i]);
        if (a.interleaved) {
          cos_row[2 * (i0 + i)] = cf;
          cos_row[2 * (i0 + i) + 1] = cf;
          sin_row[2 * (i0 + i)] = -sf;
          sin_row[2 * (i0 + i) + 1] = sf;
        } else {
          cos_row[i0 + i] = cf;
          sin_row[i0 + i] = sf;
        }
      }
    }
  }
}

// (x0, x1, x2, x3, ..) -> (x1, x0, x3, x2, ..)
inline vfloat swap_pairs(vfloat v) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_permute_ps((__m512)v, 0xB1);
#elif defined(__AVX2__)
  return (vfloat)_mm256_permute_ps((__m256)v, 0xB1);
#elif defined(__SSE2__)
  return (vfloat)_mm_shuffle_ps((__m128)v, (__m128)v, 0xB1);
#else
  vfloat r;
  for (int i = 0; i < kWidth; i += 2) {
    r[i] = v[i + 1];
    r[i + 1] = v[i];
  }
  return r;
#endif
}

// One row of D values: rotate the first rd, copy the rest.
inline void rope_row(const RopeArgs& a, const float* x, float* y, const float* cos_row,
                     const float* sin_row) {
  const int64_t rd = a.rotary_dim, half = rd / 2;
  if (a.interleaved) {
    int64_t i = 0;
    for (; i + kWidth <= rd; i += kWidth) {
      vfloat v = load(x + i);
      store(y + i, v * load(cos_row + i) + swap_pairs(v) * load(sin_row + i));
    }
    if (i < rd) {  // rd is even, so the pairs in the tail are whole
      int64_t k = rd - i;
      vfloat v = load_partial(x + i, k);
      store_partial(y + i, v * load_partial(cos_row + i, k) + swap_pairs(v) * load_partial(sin_row + i, k), k);
    }
  } else {
    int64_t i = 0;
    for (; i + kWidth <= half; i += kWidth) {
      vfloat c = load(cos_row + i), s = load(sin_row + i);
      vfloat x1 = load(x + i), x2 = load(x + half + i);
      store(y + i, x1 * c - x2 * s);
      store(y + half + i, x2 * c + x1 * s);
    }
    if (i < half) {
      int64_t k = half - i;
      vfloat c = load_partial(cos_row + i, k), s = load_partial(sin_row + i, k);
      vfloat x1 = load_partial(x + i, k), x2 = load_partial(x + half + i, k);
      store_partial(y + i, x1 * c - x2 * s, k);
      store_partial(y + half + i, x2 * c + x1 * s, k);
    }
  }
  int64_t j = rd;  // pass-through columns
  for (; j + kWidth <= a.d; j += kWidth) store(y + j, load(x + j));
  if (j < a.d) store_partial(y + j, load_partial(x + j, a.d - j), a.d - j);
}

void rope_fast(const RopeArgs& a) {
  const int64_t rd = a.rotary_dim, stride = a.interleaved ? 2 * rd : rd;
  double* freq = a.freq;
  frequencies(a.base, rd, rd / 2, freq);
  parallel_for(a.t, (1 << 11) / rd + 1,
               [&](int64_t t0, int64_t t1) { rope_table(a, freq, t0, t1); });

  // Then every row of x (N slices of T positions) in order: contiguous slices of rows per
  // thread stream x and out front to back (the table, T x rd floats, stays in L2 / L3).
  // (Measured: blocking positions x heads to keep the table in L1 was ~15% slower; the
  // 8 KiB chunks it reads from each head defeat the hardware prefetcher.)
  parallel_for(a.n * a.t, (1 << 14) / a.d + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* cos_row = a.table + (r % a.t) * stride;
      rope_row(a, a.x + r * a.d, a.out + r * a.d, cos_row, cos_row + stride / 2);
    }
  });
}

}  // namespace

extern const RopeKernels rope_kernels = {
    sinusoidal_naive, sinusoidal_fast, rope_naive, rope_fast,
#if defined(__AVX512F__)
    "float64 SIMD sincos table once per call, AVX-512 rotation"
#elif defined(__AVX2__)
    "float64 SIMD sincos table once per call, AVX2 rotation"
#else
    "float64 SIMD sincos table once per call, SSE2 rotation"
#endif
};

KG_END_ISA_NAMESPACE
