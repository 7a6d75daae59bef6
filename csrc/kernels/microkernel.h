// The register-blocked micro-GEMM shared by matmul.cpp (operands packed into slivers) and
// attention.cpp (operands read where they lie, rows or columns of A broadcast). Include only
// from csrc/kernels/*.cpp (like simd.h it opens namespace kg::<level>).
//
// A tile keeps R x NVT vectors of C in registers; per step kk it loads NVT vectors of B's
// row kk, broadcasts R scalars of A and issues R * NVT independent FMAs, so that the loads
// and broadcasts hide behind the FMAs.
#pragma once
#include <cstdint>

#include "common/simd.h"

KG_BEGIN_ISA_NAMESPACE
namespace microkernel {

using namespace simd;

// The full tile: kRows rows x kVecs vectors.
#if defined(__AVX512F__)
constexpr int kRows = 8;  // 8 x 3 accumulators + 3 B vectors + 1 broadcast = 28 of 32 zmm
constexpr int kVecs = 3;  // (measured here: 8x48 beats 14x32, 12x32 and 6x64 by 3-10%)
#else
constexpr int kRows = 6;  // 6 x 2 accumulators + 2 + 1 = 15 of 16 registers
constexpr int kVecs = 2;
#endif

// How a tile starts: C = A B,  C += A B,  C = C * v + A B,  C = v + A B, where v points to
// NVT vectors of floats (one factor or one start value per column: attention's online-softmax
// rescale, matmul's bias).
enum class Init { kZero, kAdd, kScaleAdd, kRow };

// C[0:R, 0:NVT vectors] (row stride ldc) = init + sum_{kk<kc} A(r, kk) B[kk, :]
// where B's rows (stride ldb) are loaded as vectors and A(r, kk) is broadcast from
//   a[r * lda + kk]   (kACols = false: A's rows are R rows of a row-major matrix), or
//   a[kk * lda + r]   (kACols = true:  A's rows are R adjacent columns; a packed sliver of
//                      A is the case lda = R).
template <int R, int NVT, bool kACols>
__attribute__((always_inline)) inline void tile(int64_t kc, const float* __restrict a,
                                                int64_t lda, const float* __restrict b,
                                                int64_t ldb, float* __restrict c, int64_t ldc,
                                                Init init, const float* v = nullptr) {
  vfloat acc[R][NVT];
  // (ifs, not a switch on init: with a switch GCC 12 spilled one of matmul's 24 accumulators
  // to the stack inside the k loop, 20% slower, measured)
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NVT; ++u) {
      if (init == Init::kZero) {
        acc[r][u] = zero();
      } else if (init == Init::kRow) {
        acc[r][u] = load(v + u * kWidth);
      } else {
        acc[r][u] = load(c + r * ldc + u * kWidth);
        if (init == Init::kScaleAdd) acc[r][u] *= load(v + u * kWidth);
      }
    }
  for (int64_t kk = 0; kk < kc; ++kk) {
    vfloat bv[NVT];
#pragma GCC unroll 4
    for (int u = 0; u < NVT; ++u) bv[u] = load(b + kk * ldb + u * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      vfloat av = broadcast(kACols ? a[kk * lda + r] : a[r * lda + kk]);
#pragma GCC unroll 4
      for (int u = 0; u < NVT; ++u) acc[r][u] += av * bv[u];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NVT; ++u) store(c + r * ldc + u * kWidth, acc[r][u]);
}

}  // namespace microkernel
KG_END_ISA_NAMESPACE
