// matmul_bf16 on the CPU: C = op(A) @ op(B) (+ bias) (+ C), bf16 operands, float32 accumulation.
// Shapes in matmul_bf16.h. The oracle is reference.matmul_bf16 (operands widened, float64).
//
// version 1 (naive): widen both operands one element at a time, scalar float32 dot products.
// version 6 (packed): matmul.cpp's BLIS loops with the operands packed as bf16 *pairs*: a
//   32-bit word holds (X[.., 2p], X[.., 2p+1]), two consecutive k. AVX512-BF16's VDPBF16PS
//   multiplies 16 such pairs by 16 pairs and adds both products to 16 float32 accumulators:
//   two multiply-adds per lane per instruction, twice the FMA rate of float32 at the same
//   register tile (8 rows x 48 columns: 24 accumulators). So a sliver of A is, for each pair p,
//   MR words (one per row), and a sliver of B is, for each p, NR words (one per column); the
//   microkernel broadcasts A's word and runs one VDPBF16PS per (row, vector of B).
//   K is blocked in even steps so pairs never straddle blocks; an odd K gets a zero partner.
//   Without AVX512-BF16 (AVX-512, AVX2, SSE copies) the same packed pairs are widened by a
//   16-bit shift and go through two float32 FMAs: the same products (each exact in float32),
//   added in a slightly different order.
//   Threads split the columns (each packs the A panel it needs and its own B blocks), or the
//   rows when there are few columns.
#include "kernels/matmul_bf16.h"

#include <cstring>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

typedef uint32_t vuint __attribute__((vector_size(kWidth * 4)));

inline float widen1(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// ---- version 1: naive --------------------------------------------------------------------
void matmul_naive(const MatmulBf16Args& p) {
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      float sum = 0.0f;
      for (int64_t kk = 0; kk < p.k; ++kk) {
        uint16_t aik = p.trans_a ? p.a[kk * p.m + i] : p.a[i * p.k + kk];
        uint16_t bkj = p.trans_b ? p.b[j * p.k + kk] : p.b[kk * p.n + j];
        sum += widen1(aik) * widen1(bkj);
      }
      if (p.bias) sum += p.bias[j];
      float* c = p.c + i * p.n + j;
      *c = p.accumulate ? *c + sum : sum;
    }
}

// ---- version 6: packed pairs ---------------------------------------------------------------
#if defined(__AVX512F__)
constexpr int MR = 8, NV = 3;  // 24 accumulators + 3 B vectors + 1 broadcast of 32 zmm
#else
constexpr int MR = 6, NV = 2;
#endif
constexpr int NR = NV * kWidth;
constexpr int64_t KC = 768;                    // k per block (384 pairs), even
constexpr int64_t NB = NR * (480 / NR);        // columns per packed B block
constexpr int64_t MB = MR * (2400 / MR);       // rows per packed A panel

struct PackBuffers {
  GrowBuffer<uint32_t> a, b;
};
thread_local PackBuffers tl_pack;

inline uint32_t pair(uint16_t even, uint16_t odd) { return (uint32_t)even | ((uint32_t)odd << 16); }

// op(A)[i0:i0+mc, k0:k0+kc] as slivers of MR rows: word (s, p, r) = (A(r, 2p), A(r, 2p+1)).
void pack_a(const MatmulBf16Args& p, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t s = 0; s * MR < mc; ++s) {
    uint32_t* dst = out + s * MR * pairs;
    const int64_t row0 = i0 + s * MR, rows = mc - s * MR < MR ? mc - s * MR : MR;
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t k = k0 + 2 * q;
      const bool has_odd = 2 * q + 1 < kc;
      for (int64_t r = 0; r < MR; ++r) {
        uint32_t w = 0;
        if (r < rows) {
          const int64_t i = row0 + r;
          if (p.trans_a)
            w = pair(p.a[k * p.m + i], has_odd ? p.a[(k + 1) * p.m + i] : 0);
          else
            w = pair(p.a[i * p.k + k], has_odd ? p.a[i * p.k + k + 1] : 0);
        }
        dst[q * MR + r] = w;
      }
    }
  }
}

// op(B)[k0:k0+kc, j0:j0+nc] as slivers of NR columns: word (s, p, c) = (B(2p, c), B(2p+1, c)).
void pack_b(const MatmulBf16Args& p, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
            uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t s = 0; s < nc; s += NR) {
    const int64_t cols = nc - s < NR ? nc - s : NR;
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t k = k0 + 2 * q;
      const bool has_odd = 2 * q + 1 < kc;
      uint32_t* dst = out + q * NR;
      if (p.trans_b) {  // B [N, K]: the pair is adjacent in memory
        for (int64_t c = 0; c < cols; ++c) {
          const uint16_t* row = p.b + (j0 + s + c) * p.k + k;
          dst[c] = pair(row[0], has_odd ? row[1] : 0);
        }
      } else {  // B [K, N]: interleave two rows
        const uint16_t* r0 = p.b + k * p.n + j0 + s;
        const uint16_t* r1 = has_odd ? r0 + p.n : nullptr;
        for (int64_t c = 0; c < cols; ++c) dst[c] = pair(r0[c], r1 ? r1[c] : 0);
      }
      for (int64_t c = cols; c < NR; ++c) dst[c] = 0;
    }
    out += pairs * NR;
  }
}

// C[0:MR, 0:NR] (row stride ldc) = init + sum over pairs of A's pair (row r) . B's pair (col).
// init: C itself (load_c), the bias row, or zero.
__attribute__((always_inline)) inline void tile(int64_t pairs, const uint32_t* __restrict ap,
                                                const uint32_t* __restrict bp,
                                                float* __restrict c, int64_t ldc, bool load_c,
                                                const float* bias) {
  vfloat acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u)
      acc[r][u] = load_c ? load(c + r * ldc + u * kWidth) : bias ? load(bias + u * kWidth)
                                                                 : zero();
#if defined(__AVX512BF16__)
  for (int64_t q = 0; q < pairs; ++q) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u)
      bv[u] = (__m512bh)_mm512_loadu_si512(bp + q * NR + u * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[q * MR + r]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u)
        acc[r][u] = (vfloat)_mm512_dpbf16_ps((__m512)acc[r][u], av, bv[u]);
    }
  }
#else
  const vuint hi = (vuint){} + 0xffff0000u;
  for (int64_t q = 0; q < pairs; ++q) {
    vfloat b_even[NV], b_odd[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      vuint w;
      std::memcpy(&w, bp + q * NR + u * kWidth, sizeof(w));
      b_even[u] = (vfloat)(w << 16);
      b_odd[u] = (vfloat)(w & hi);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const uint32_t w = ap[q * MR + r];
      vfloat a_even = broadcast(widen1((uint16_t)(w & 0xffffu)));
      vfloat a_odd = broadcast(widen1((uint16_t)(w >> 16)));
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[r][u] += a_even * b_even[u] + a_odd * b_odd[u];
    }
  }
#endif
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) store(c + r * ldc + u * kWidth, acc[r][u]);
}

void macro_kernel(const MatmulBf16Args& p, const uint32_t* pa, const uint32_t* pb, float* c,
                  int64_t mc, int64_t nc, int64_t kc, bool load_c, const float* bias) {
  alignas(64) float edge[MR * NR];
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const uint32_t* ap = pa + ir * pairs;
    const int64_t rows = mc - ir < MR ? mc - ir : MR;
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const uint32_t* bp = pb + jr * pairs;
      const int64_t cols = nc - jr < NR ? nc - jr : NR;
      float* cij = c + ir * p.n + jr;
      const float* bias_j = bias ? bias + jr : nullptr;
      if (rows == MR && cols == NR) {
        tile(pairs, ap, bp, cij, p.n, load_c, bias_j);
        continue;
      }
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t cc = 0; cc < NR; ++cc) {
          float init = 0.0f;
          if (r < rows && cc < cols) init = load_c ? cij[r * p.n + cc] : (bias_j ? bias_j[cc] : 0.0f);
          edge[r * NR + cc] = init;
        }
      tile(pairs, ap, bp, edge, NR, true, nullptr);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t cc = 0; cc < cols; ++cc) cij[r * p.n + cc] = edge[r * NR + cc];
    }
  }
}

// C[i0:i1, j0:j1] on the calling thread.
void gemm_region(const MatmulBf16Args& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  if (i0 >= i1 || j0 >= j1) return;
  const int64_t k_blocks = (p.k + KC - 1) / KC;
  int64_t kc_step = (p.k + k_blocks - 1) / k_blocks;
  kc_step += kc_step & 1;  // even: pairs never straddle two blocks
  const int64_t panel_rows = i1 - i0 < MB ? (i1 - i0 + MR - 1) / MR * MR : MB;
  uint32_t* pa = tl_pack.a.get(panel_rows * (kc_step / 2));
  uint32_t* pb = tl_pack.b.get(NB * (kc_step / 2));
  for (int64_t ic = i0; ic < i1; ic += MB) {
    const int64_t mc = i1 - ic < MB ? i1 - ic : MB;
    for (int64_t pc = 0; pc < p.k; pc += kc_step) {
      const int64_t kc = p.k - pc < kc_step ? p.k - pc : kc_step;
      const bool first = pc == 0;
      const bool load_c = !first || p.accumulate;
      const float* bias = first && !p.accumulate ? p.bias : nullptr;
      pack_a(p, ic, mc, pc, kc, pa);
      for (int64_t jc = j0; jc < j1; jc += NB) {
        const int64_t nc = j1 - jc < NB ? j1 - jc : NB;
        pack_b(p, pc, kc, jc, nc, pb);
        macro_kernel(p, pa, pb, p.c + ic * p.n + jc, mc, nc, kc, load_c,
                     bias ? bias + jc : nullptr);
      }
    }
  }
}

void matmul_packed(const MatmulBf16Args& p) {
  const int64_t kMinWork = (int64_t)64 * 64 * 64;
  const int nt = threads_for(p.m * p.n * p.k, kMinWork);
  const int64_t col_units = (p.n + NR - 1) / NR;
  if (col_units >= 2 * nt) {  // threads split the columns
    parallel_region(nt, [&](int t, int count) {
      int64_t j0 = col_units * t / count * NR, j1 = col_units * (t + 1) / count * NR;
      gemm_region(p, 0, p.m, j0, j1 < p.n ? j1 : p.n);
    });
  } else {  // few columns: threads split the rows
    const int64_t row_units = (p.m + MR - 1) / MR;
    parallel_for(row_units, 1, [&](int64_t u0, int64_t u1) {
      gemm_region(p, u0 * MR, u1 * MR < p.m ? u1 * MR : p.m, 0, p.n);
    });
  }
}

}  // namespace

#if defined(__AVX512BF16__)
#define KG_MATMUL_BF16_PATH "8x48 AVX512-BF16 VDPBF16PS microkernel, packed bf16 pairs"
#elif defined(__AVX512F__)
#define KG_MATMUL_BF16_PATH "8x48 AVX-512 FMA on widened bf16 pairs (no AVX512-BF16: same products, fp32 FMA rate)"
#elif defined(__AVX2__)
#define KG_MATMUL_BF16_PATH "6x16 AVX2 FMA on widened bf16 pairs (no AVX512-BF16)"
#else
#define KG_MATMUL_BF16_PATH "6x8 SSE on widened bf16 pairs (no AVX512-BF16)"
#endif

extern const MatmulBf16Kernels matmul_bf16_kernels = {matmul_naive, matmul_packed,
                                                      KG_MATMUL_BF16_PATH};

KG_END_ISA_NAMESPACE
