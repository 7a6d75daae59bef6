// A small SIMD vocabulary for the kernel files, written once and compiled per level.
//
// `vfloat` is a GCC/Clang vector of kWidth floats: 16 with AVX-512, 8 with AVX2, 4 on the
// baseline (SSE2, or plain scalar code on other CPUs). Arithmetic operators work on it
// directly (a * b + c becomes an FMA where the level has one); the helpers below add the
// pieces the operators lack:
//   - unaligned and partial loads and stores, horizontal reductions, min / max;
//   - the vectorised exp (one polynomial, one range reduction, one 2^n scaling for every
//     kernel) and what is built on it: sigmoid, tanh;
//   - streaming (non-temporal) stores for outputs larger than the caches, and store_range,
//     which writes an output range piece by piece with or without them.
//
// Include only from csrc/kernels/*.cpp (it opens namespace kg::<level>).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/isa.h"
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

KG_BEGIN_ISA_NAMESPACE
namespace simd {

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif

typedef float vfloat __attribute__((vector_size(kWidth * 4)));
typedef int32_t vint __attribute__((vector_size(kWidth * 4)));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat broadcast(float x) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_set1_ps(x);
#elif defined(__AVX2__)
  return (vfloat)_mm256_set1_ps(x);
#elif defined(__SSE2__)
  return (vfloat)_mm_set1_ps(x);
#else
  return vfloat{x, x, x, x};
#endif
}
inline vfloat zero() { return vfloat{}; }

// Loads the first n (< kWidth) floats, the other lanes are 0; never reads past p + n.
inline vfloat load_partial(const float* p, int64_t n) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#else
  vfloat v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
// Stores the first n (< kWidth) lanes; never writes past p + n.
inline void store_partial(float* p, vfloat v, int64_t n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#else
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
#endif
}
// A whole vector when n >= kWidth, else the first n floats (zeros after): loop tails.
inline vfloat load_upto(const float* p, int64_t n) {
  return n >= kWidth ? load(p) : load_partial(p, n);
}
// Stores a whole vector when n >= kWidth, else the first n lanes.
inline void store_upto(float* p, vfloat v, int64_t n) {
  if (n >= kWidth)
    store(p, v);
  else
    store_partial(p, v, n);
}

inline float reduce_add(vfloat v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.0f;
  for (int i = 0; i < kWidth; ++i) s += v[i];
  return s;
#endif
}
inline float reduce_max(vfloat v) {
#if defined(__AVX512F__)
  return _mm512_reduce_max_ps((__m512)v);
#else
  float m = v[0];
  for (int i = 1; i < kWidth; ++i) m = v[i] > m ? v[i] : m;
  return m;
#endif
}

#if defined(__AVX2__)
// The sum of the 8 int32 lanes of v (wrapping as int32 adds do: callers keep it in range).
inline int32_t reduce_add_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
#endif

// a > b ? a : b and a < b ? a : b lane by lane: when either is NaN the result is b, so
// max(broadcast(c), x) clamps x and keeps a NaN x. That is exactly MAXPS / MINPS, written
// as intrinsics because GCC compiles the selects to a compare and a blend.
inline vfloat max(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX2__)
  return (vfloat)_mm256_max_ps((__m256)a, (__m256)b);
#elif defined(__SSE2__)
  return (vfloat)_mm_max_ps((__m128)a, (__m128)b);
#else
  return a > b ? a : b;
#endif
}
inline vfloat min(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(__AVX2__)
  return (vfloat)_mm256_min_ps((__m256)a, (__m256)b);
#elif defined(__SSE2__)
  return (vfloat)_mm_min_ps((__m128)a, (__m128)b);
#else
  return a < b ? a : b;
#endif
}
inline vfloat abs(vfloat a) {
  vint bits = (vint)a & 0x7fffffff;
  return (vfloat)bits;
}
inline vfloat copysign(vfloat magnitude, vfloat sign) {
  vint bits = ((vint)magnitude & 0x7fffffff) | ((vint)sign & (int32_t)0x80000000u);
  return (vfloat)bits;
}
inline vfloat sqrt(vfloat x) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX2__)
  return (vfloat)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (vfloat)_mm_sqrt_ps((__m128)x);
#else
  vfloat r;
  for (int i = 0; i < kWidth; ++i) r[i] = std::sqrt(x[i]);
  return r;
#endif
}

// ---- exp ----------------------------------------------------------------------------------
//
// Every exp of the kernels is x = n ln2 + r (|r| <= ln2/2), exp(r) by one degree-6
// polynomial, times 2^n. The polynomial is 1 + r + r^2 q(r) with q a minimax fit for the
// relative error over |r| <= ln2/2 with float coefficients: 3.8e-9 before rounding, as
// accurate after the float evaluation as the Taylor series to r^7, and one FMA cheaper.
// exp's relative error is below 7.5e-8 with FMA and 9.1e-8 without (measured over all of
// [-90, 90]); denormal results are within one ulp (2^-149). Three entry points:
//   exp(x)             any x;
//   exp_upto88(x)      x <= 88.8 only: without exp's min(), 7-12% faster in a loop of exps
//                      (measured, AVX-512 to SSE2), for the arguments that are bounded by
//                      construction (x - max(x) in softmax and attention, -|z| in the
//                      activations), where exp is most of a kernel's work;
//   exp_reduced(r, n)  for a caller that reduces x = n ln2 + r itself (gelu_tanh does it
//                      in float64).

// exp(r) * 2^n for |r| <= ln2/2 and integer-valued n in [-252, 254]; AVX-512 scales with
// vscalefps, which also takes any n (overflowing to inf, underflowing through the denormals
// to 0). Elsewhere 2^n is applied as two normal factors 2^(n/2), so that p * 2^n is rounded
// once: denormal results come out right too.
inline vfloat exp_reduced(vfloat r, vfloat n) {
  vfloat p = broadcast(1.381461392e-03f);
  p = p * r + 8.368710056e-03f;
  p = p * r + 4.166838899e-02f;
  p = p * r + 1.666652113e-01f;
  p = p * r + 4.999999404e-01f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
#if defined(__AVX512F__)
  return (vfloat)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  const vfloat kRound = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an int
  vint ni = (vint)(n + kRound) - (vint)kRound;  // n as an integer
  vint half = ni >> 1;
  vfloat scale_a = (vfloat)((half + 127) << 23);
  vfloat scale_b = (vfloat)((ni - half + 127) << 23);
  return p * scale_a * scale_b;
#endif
}

// exp(x) for x <= 88.8 (x > 88.7228 overflows to inf), -inf (0) and NaN (NaN); x < -104
// gives 0. Larger x are outside its domain (the 2^n scaling breaks down): use exp().
inline vfloat exp_upto88(vfloat x) {
  vfloat xc = max(broadcast(-104.0f), x);  // exp(-104) rounds to 0
#if defined(__AVX512F__)  // (vrndscaleps: 3% faster here than the FMA and subtract below)
  vfloat n = (vfloat)_mm512_roundscale_ps((__m512)(xc * 1.44269504088896341f),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  vfloat n = (xc * 1.44269504088896341f + kRound) - kRound;  // round(x / ln2)
#endif
  vfloat r = xc - n * 0.693145751953125f;  // ln2 split in a high part exact in float ...
  r = r - n * 1.428606765330187045e-06f;   // ... and the rest
  return exp_reduced(r, n);
}

// exp(x) for any x: exp(inf) = inf, exp(-inf) = 0, NaN stays NaN.
inline vfloat exp(vfloat x) { return exp_upto88(min(broadcast(88.8f), x)); }

// The same bits as a lane of exp() (and of exp_upto88 within its domain), for loop tails.
inline float scalar_exp(float x) { return exp(broadcast(x))[0]; }

// sigmoid(z) and sigmoid(-z) = 1 - sigmoid(z), both without overflow or cancellation:
// with e = exp(-|z|) in [0, 1], sigmoid(|z|) = 1 / (1 + e) and sigmoid(-|z|) = e / (1 + e).
struct SigmoidPair {
  vfloat pos, neg;
};
inline SigmoidPair sigmoid_pair(vfloat z) {
  vfloat e = exp_upto88(-abs(z));
  vfloat r = 1.0f / (1.0f + e);  // sigmoid(|z|)
  vfloat er = e * r;             // sigmoid(-|z|)
  return {z >= 0.0f ? r : er, z >= 0.0f ? er : r};
}
inline vfloat sigmoid(vfloat x) { return sigmoid_pair(x).pos; }

// tanh(x): the odd Taylor series to x^15 for |x| < 0.5 (error < 1e-8 relative there), and
// (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.37 and the sign restored elsewhere (no
// cancellation, no overflow).
inline vfloat tanh(vfloat x) {
  vfloat ax = abs(x);
  vfloat e = exp_upto88(-(ax + ax));
  vfloat big = copysign((1.0f - e) / (1.0f + e), x);
  vfloat x2 = x * x;
  vfloat p = broadcast(-929569.0f / 638512875.0f);
  p = p * x2 + 21844.0f / 6081075.0f;
  p = p * x2 + -1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 + -17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 + -1.0f / 3.0f;
  return ax < 0.5f ? x + x * x2 * p : big;
}

// ---- streaming stores ---------------------------------------------------------------------
//
// A normal store first reads the destination line into the cache ("read for ownership"), so
// writing an array that is far larger than the caches costs a read and a write of it: a
// kernel like y = f(x) moves 3 bytes over the memory bus per 2 it needs. A streaming store
// writes whole lines straight to memory. It only pays when the output will not be read
// from cache soon anyway; each kernel decides when that is (use_streaming, or its own
// measured plan). Streaming stores need vector-aligned addresses: store_range peels a head
// piece. Each thread that streamed must call stream_fence() before its results are read by
// others.

// The size of this machine's last-level cache (32 MiB): an output that large cannot stay
// in cache.
constexpr int64_t kStreamMinBytes = int64_t(32) << 20;

// Whether to stream an output of `bytes` bytes at `out` (float aligned, as numpy gives).
inline bool use_streaming(const float* out, int64_t bytes) {
  return bytes > kStreamMinBytes && reinterpret_cast<uintptr_t>(out) % sizeof(float) == 0;
}

// A non-temporal store of a whole vector to p, which must be aligned to the vector size.
inline void store_stream(float* p, vfloat v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX2__)
  _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE2__)
  _mm_stream_ps(p, (__m128)v);
#else
  store(p, v);
#endif
}

// Orders this thread's streaming stores before whatever it does next (another thread may
// read the output).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[i:i1] = value(j, n) piece by piece, n <= kWidth floats starting at j; when n < kWidth,
// value must read only n floats at each of its inputs + j (load_upto does that). With
// `stream` (out must be float aligned then), a head piece reaches the first vector-aligned
// address of out, whole vectors are streamed, and the tail is stored normally.
template <class Value>
inline void store_range(float* out, int64_t i, int64_t i1, bool stream, Value&& value) {
  if (stream) {
    int64_t head = (-(int64_t)(reinterpret_cast<uintptr_t>(out + i) / sizeof(float))) &
                   (kWidth - 1);
    if (head > i1 - i) head = i1 - i;
    if (head > 0) {
      store_partial(out + i, value(i, head), head);
      i += head;
    }
    for (; i + kWidth <= i1; i += kWidth) store_stream(out + i, value(i, kWidth));
  } else {
    for (; i + kWidth <= i1; i += kWidth) store(out + i, value(i, kWidth));
  }
  if (i < i1) store_partial(out + i, value(i, i1 - i), i1 - i);
}

}  // namespace simd
KG_END_ISA_NAMESPACE
