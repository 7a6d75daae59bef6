#include "kernels/peak.h"

#include "common/simd.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif
#include "common/threading.h"

// An empty asm statement that claims to change x: the compiler must keep x in a vector
// register and cannot fold the loop around it. The register class is per architecture.
#if defined(__x86_64__) || defined(__i386__)
#define KG_OPAQUE_VECTOR(x) __asm__ volatile("" : "+v"(x))
#elif defined(__aarch64__)
#define KG_OPAQUE_VECTOR(x) __asm__ volatile("" : "+w"(x))
#else
#define KG_OPAQUE_VECTOR(x) __asm__ volatile("" : "+m"(x))
#endif

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// 12 independent accumulators per thread hide the FMA latency (4 cycles) on 2 pipes.
double fma_flops(int64_t iterations, int threads) {
  float sink[64] = {};
  parallel_region(threads, [&](int t, int) {
    vfloat acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = broadcast(1.0f + 1e-7f * (i + t));
    vfloat x = broadcast(0.999999f), y = broadcast(1e-7f);
    for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) acc[i] = acc[i] * x + y;
      KG_OPAQUE_VECTOR(x);  // keep the loop from being folded
    }
    vfloat s = zero();
    for (int i = 0; i < 12; ++i) s += acc[i];
    if (t < 64) sink[t] = reduce_add(s);
  });
  volatile float keep = sink[0];
  (void)keep;
  return 2.0 * 12 * kWidth * (double)iterations * threads;
}

// The bf16 dot-product rate: VDPBF16PS does two multiply-adds per fp32 lane (4 flops), on 12
// independent accumulators like fma_flops. Without AVX512-BF16 the bf16 matmul runs on fp32
// FMAs, so its peak is the FMA rate.
double bf16_dot_flops(int64_t iterations, int threads) {
#if defined(__AVX512BF16__)
  float sink[64] = {};
  parallel_region(threads, [&](int t, int) {
    __m512 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(1e-3f * (i + t));
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f);  // (0.996, 0.996) as bf16 pairs
    __m512bh y = (__m512bh)_mm512_set1_epi32(0x33d633d6);  // (1e-7, 1e-7)
    for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
      KG_OPAQUE_VECTOR(x);  // keep the loop from being folded
    }
    __m512 s = _mm512_setzero_ps();
    for (int i = 0; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
    if (t < 64) sink[t] = _mm512_reduce_add_ps(s);
  });
  volatile float keep = sink[0];
  (void)keep;
  return 4.0 * 12 * 16 * (double)iterations * threads;
#else
  return fma_flops(iterations, threads);
#endif
}

void scale_copy(const float* src, float* dst, int64_t n, float s) {
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    vfloat sv = broadcast(s);
    for (; i + kWidth <= i1; i += kWidth) store(dst + i, load(src + i) * sv);
    for (; i < i1; ++i) dst[i] = src[i] * s;
  });
}

float sum(const float* src, int64_t n) {
  float partial[1024] = {};
  parallel_region(threads_for(n, 1 << 16), [&](int t, int count) {
    int64_t i0 = n * t / count, i1 = n * (t + 1) / count, i = i0;
    vfloat a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    for (; i + 4 * kWidth <= i1; i += 4 * kWidth) {
      a0 += load(src + i);
      a1 += load(src + i + kWidth);
      a2 += load(src + i + 2 * kWidth);
      a3 += load(src + i + 3 * kWidth);
    }
    float s = reduce_add((a0 + a1) + (a2 + a3));
    for (; i < i1; ++i) s += src[i];
    if (t < 1024) partial[t] = s;
  });
  float total = 0.0f;
  for (int t = 0; t < 1024; ++t) total += partial[t];
  return total;
}

}  // namespace

extern const PeakKernels peak_kernels = {fma_flops, bf16_dot_flops, scale_copy, sum};

KG_END_ISA_NAMESPACE
