#include "kernels/peak.h"

#include "common/simd.h"
#include "common/threading.h"

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
      __asm__ volatile("" : "+v"(x));  // keep the loop from being folded
    }
    vfloat s = zero();
    for (int i = 0; i < 12; ++i) s += acc[i];
    if (t < 64) sink[t] = reduce_add(s);
  });
  volatile float keep = sink[0];
  (void)keep;
  return 2.0 * 12 * kWidth * (double)iterations * threads;
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

extern const PeakKernels peak_kernels = {fma_flops, scale_copy, sum};

KG_END_ISA_NAMESPACE
