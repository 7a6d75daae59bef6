// Machine peaks, measured: the fp32 FMA rate, the bf16 dot-product rate and the DRAM bandwidth that the benchmark
// table uses for its "% of peak" columns.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct PeakKernels {
  // Runs `iterations` rounds of independent FMA chains on `threads` threads; returns flops.
  double (*fma_flops)(int64_t iterations, int threads);
  // The same with bf16 dot products (VDPBF16PS, 4 flops per lane); the FMA rate without
  // AVX512-BF16, where the bf16 matmul falls back to fp32 FMAs.
  double (*bf16_dot_flops)(int64_t iterations, int threads);
  // Streams n floats: dst = src * s (read n, write n), split over the current thread count.
  void (*scale_copy)(const float* src, float* dst, int64_t n, float s);
  // Reads n floats, returns their sum (read-only bandwidth).
  float (*sum)(const float* src, int64_t n);
};

}  // namespace kg

KG_DECLARE_PER_ISA(PeakKernels, peak_kernels)
