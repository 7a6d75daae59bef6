// matmul: C = op(A) @ op(B) (+ bias) (+ C), float32.  Shapes in matmul.h.
//
// version 1 (naive): the textbook triple loop, one dot product per output, one thread.
// (versions 2-4, 6 and 7 are GPU ideas: csrc/cuda/matmul.cu)
// version 5 (blocked): the BLIS/GotoBLAS structure. Written for row-major C, it keeps a
//   thin sliver of A (MR rows x KC) in L1 and streams slivers of B (KC x NR) from a block
//   packed into L2; the MR x NR register tile is the "microkernel" (microkernel.h, shared
//   with attention): per k it loads NR/W vectors of B, broadcasts MR scalars of A and
//   issues MR*NR/W independent FMAs.
//     loop 1  M in blocks of MB  (packed A panel, MB x KC, lives in L3)
//     loop 2  K in blocks of KC
//     loop 3  N in blocks of NB  (packed B block, KC x NB, lives in L2)
//     loop 4  A slivers of MR rows (one stays in L1)
//     loop 5  B slivers of NR columns -> microkernel
//   so each operand is packed once when M <= MB.
//   Packing makes both operands contiguous in exactly the order the microkernel reads them
//   and absorbs the transposes (trans_a / trans_b cost nothing in the hot loop) and the
//   ragged edges (zero padding). Threads share the packed A panel and split the columns
//   (or, for narrow C, take disjoint row ranges).
//   Small M (matrix-vector products, decoding one token) skips packing: see gemv_rows.
#include "kernels/matmul.h"

#include <cstdlib>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#include "kernels/microkernel.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;
using microkernel::Init;

// ---- version 1: naive ------------------------------------------------------------------
void matmul_naive(const MatmulArgs& p) {
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const float* a = p.a + bi * p.batch_stride_a;
    const float* b = p.b + bi * p.batch_stride_b;
    float* c = p.c + bi * p.batch_stride_c;
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        float sum = 0.0f;
        for (int64_t kk = 0; kk < p.k; ++kk) {
          float aik = p.trans_a ? a[kk * p.m + i] : a[i * p.k + kk];
          float bkj = p.trans_b ? b[j * p.k + kk] : b[kk * p.n + j];
          sum += aik * bkj;
        }
        if (p.bias) sum += p.bias[j];
        c[i * p.n + j] = p.accumulate ? c[i * p.n + j] + sum : sum;
      }
    }
  }
}

// ---- version 5: blocked ------------------------------------------------------------------
#ifndef KG_MM_MR  // -DKG_MM_MR=... -DKG_MM_NV=...: other tile shapes, for tuning
#define KG_MM_MR microkernel::kRows
#define KG_MM_NV microkernel::kVecs
#endif
#ifndef KG_MM_KC
#define KG_MM_KC 384
#endif
#ifndef KG_MM_NB
#define KG_MM_NB 480
#endif
constexpr int MR = KG_MM_MR;
constexpr int NV = KG_MM_NV;  // vectors per microkernel row
constexpr int NR = NV * kWidth;
constexpr int64_t KC = KG_MM_KC;
constexpr int64_t NB = NR * (KG_MM_NB / NR);  // ~480 columns: KC x NB floats = 720 KiB of L2
#ifndef KG_MM_MB
#define KG_MM_MB 4200
#endif
constexpr int64_t MB = MR * (KG_MM_MB / MR);

thread_local Workspace tl_pack_a, tl_pack_b;

// Packs op(A)[i0:i0+mc, k0:k0+kc] into slivers of MR rows: sliver s holds, for each k, the
// MR values A(i0+s*MR+r, k0+k) r=0..MR-1 contiguously; rows past mc are zero. Only the
// slivers s0 <= s < s1 are written (threads pack disjoint slivers of a shared panel).
void pack_a(const MatmulArgs& p, const float* a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            int64_t s0, int64_t s1, float* out) {
  for (int64_t s = s0; s < s1; ++s) {
    float* dst = out + s * MR * kc;
    int64_t row0 = s * MR, rows = mc - row0 < MR ? mc - row0 : MR;
    if (p.trans_a) {  // A stored [K, M]: each k gives MR contiguous values
      for (int64_t kk = 0; kk < kc; ++kk) {
        const float* src = a + (k0 + kk) * p.m + i0 + row0;
        for (int64_t r = 0; r < rows; ++r) dst[kk * MR + r] = src[r];
        for (int64_t r = rows; r < MR; ++r) dst[kk * MR + r] = 0.0f;
      }
    } else if (rows == MR) {  // MR row streams in, one contiguous stream out
      const float* src[MR];
      for (int r = 0; r < MR; ++r) src[r] = a + (i0 + row0 + r) * p.k + k0;
      for (int64_t kk = 0; kk < kc; ++kk)
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) dst[kk * MR + r] = src[r][kk];
    } else {
      for (int64_t kk = 0; kk < kc; ++kk)
        for (int64_t r = 0; r < MR; ++r)
          dst[kk * MR + r] = r < rows ? a[(i0 + row0 + r) * p.k + k0 + kk] : 0.0f;
    }
  }
}

#if defined(__AVX2__)
// out[k * NR + c] = src[c * ld + k] for c, k < 8: an 8 x 8 transpose in registers (unpack
// pairs, then quads, then swap 128-bit halves), so a transposed B is packed with whole-vector
// loads and stores instead of one strided store per element.
inline void transpose8(const float* src, int64_t ld, float* out) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      r[i + j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0x44);
      r[i + j + 2] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0xEE);
    }
  // r[0..3]: rows 0-3, k = {0,4}, {2,6}, {1,5}, {3,7}; r[4..7] the same for rows 4-7
  const int order[4] = {0, 2, 1, 3};
  for (int q = 0; q < 4; ++q) {
    __m256 lo = r[order[q]], hi = r[4 + order[q]];
    _mm256_storeu_ps(out + q * NR, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + (q + 4) * NR, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}
#endif

// Packs op(B)[k0:k0+kc, j0:j0+nc] into slivers of NR columns (zero padded).
void pack_b(const MatmulArgs& p, const float* b, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
            float* out) {
  for (int64_t s = 0; s < nc; s += NR) {
    int64_t cols = nc - s < NR ? nc - s : NR;
    if (p.trans_b) {  // B stored [N, K]
      int64_t cc = 0;
#if defined(__AVX2__)
      for (; cc + 8 <= cols; cc += 8) {  // 8 columns x 8 k at a time, then the k tail
        const float* src = b + (j0 + s + cc) * p.k + k0;
        int64_t kk = 0;
        for (; kk + 8 <= kc; kk += 8) transpose8(src + kk, p.k, out + kk * NR + cc);
        for (; kk < kc; ++kk)
          for (int64_t c8 = 0; c8 < 8; ++c8) out[kk * NR + cc + c8] = src[c8 * p.k + kk];
      }
#endif
      for (; cc < cols; ++cc) {
        const float* src = b + (j0 + s + cc) * p.k + k0;
        for (int64_t kk = 0; kk < kc; ++kk) out[kk * NR + cc] = src[kk];
      }
      for (int64_t cc = cols; cc < NR; ++cc)
        for (int64_t kk = 0; kk < kc; ++kk) out[kk * NR + cc] = 0.0f;
    } else {
      for (int64_t kk = 0; kk < kc; ++kk) {
        const float* src = b + (k0 + kk) * p.n + j0 + s;
        float* dst = out + kk * NR;
        if (cols == NR) {
          for (int v = 0; v < NV; ++v) store(dst + v * kWidth, load(src + v * kWidth));
        } else {
          for (int64_t cc = 0; cc < cols; ++cc) dst[cc] = src[cc];
          for (int64_t cc = cols; cc < NR; ++cc) dst[cc] = 0.0f;
        }
      }
    }
    out += kc * NR;
  }
}

// The register tile on packed slivers: C[0:MR, 0:NR] (row stride ldc) = init +
// sum_k ap[k, :]^T bp[k, :], where init is C itself (load_c), the bias row, or zero.
__attribute__((always_inline)) inline void packed_tile(int64_t kc, const float* ap,
                                                       const float* bp, float* c, int64_t ldc,
                                                       bool load_c, const float* bias) {
  microkernel::tile<MR, NV, true>(kc, ap, MR, bp, NR, c, ldc,
                                  load_c ? Init::kAdd : (bias ? Init::kRow : Init::kZero), bias);
}

// Loops 4 and 5 over one packed A panel (mc x kc) and one packed B block (kc x nc).
void macro_kernel(const MatmulArgs& p, const float* packed_a, const float* packed_b, float* c,
                  int64_t mc, int64_t nc, int64_t kc, bool load_c, const float* bias) {
  alignas(64) float edge[MR * NR];
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const float* ap = packed_a + ir * kc;
    int64_t rows = mc - ir < MR ? mc - ir : MR;
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const float* bp = packed_b + jr * kc;
      int64_t cols = nc - jr < NR ? nc - jr : NR;
      float* cij = c + ir * p.n + jr;
      const float* bias_j = bias ? bias + jr : nullptr;
      if (rows == MR && cols == NR) {
        packed_tile(kc, ap, bp, cij, p.n, load_c, bias_j);
        continue;
      }
      // Ragged edge: run the full tile on a local copy, keep the valid part.
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t cc = 0; cc < NR; ++cc) {
          float init = 0.0f;
          if (r < rows && cc < cols)
            init = load_c ? cij[r * p.n + cc] : (bias_j ? bias_j[cc] : 0.0f);
          edge[r * NR + cc] = init;
        }
      packed_tile(kc, ap, bp, edge, NR, true, nullptr);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t cc = 0; cc < cols; ++cc) cij[r * p.n + cc] = edge[r * NR + cc];
    }
  }
}

// C[i0:i0+m_len, j0:j0+n_len] of one batch entry on `threads` threads that share each packed
// A panel (packed cooperatively, sliver by sliver) and split the columns between them, each
// packing its own B blocks. With threads == 1 this is the plain single-threaded algorithm.
void gemm_region(const MatmulArgs& p, const float* a, const float* b, float* c, int64_t i0,
                 int64_t m_len, int64_t j0, int64_t n_len, int threads) {
  int64_t panel_rows = m_len < MB ? (m_len + MR - 1) / MR * MR : MB;
  int64_t k_blocks = (p.k + KC - 1) / KC;
  int64_t kc_step = (p.k + k_blocks - 1) / k_blocks;  // equal K blocks: 576 -> 288 + 288
  float* packed_a = tl_pack_a.get(panel_rows * kc_step);  // shared by the team
  float* packed_b_all = tl_pack_b.get(KC * NB * threads);  // one B block per thread
  parallel_region(threads, [&](int t, int count) {
    float* packed_b = packed_b_all + KC * NB * t;
    // This thread's columns, cut on NR boundaries.
    int64_t col_units = (n_len + NR - 1) / NR;
    int64_t my_j0 = j0 + col_units * t / count * NR;
    int64_t my_j1 = j0 + col_units * (t + 1) / count * NR;
    if (my_j1 > j0 + n_len) my_j1 = j0 + n_len;
    for (int64_t ic = i0; ic < i0 + m_len; ic += MB) {
      int64_t mc = i0 + m_len - ic < MB ? i0 + m_len - ic : MB;
      int64_t slivers = (mc + MR - 1) / MR;
      for (int64_t pc = 0; pc < p.k; pc += kc_step) {
        int64_t kc = p.k - pc < kc_step ? p.k - pc : kc_step;
        bool first_k = pc == 0;
        bool load_c = !first_k || p.accumulate;
        const float* bias = first_k && !p.accumulate ? p.bias : nullptr;
        pack_a(p, a, ic, mc, pc, kc, slivers * t / count, slivers * (t + 1) / count, packed_a);
#ifdef _OPENMP
#pragma omp barrier
#endif
        for (int64_t jc = my_j0; jc < my_j1; jc += NB) {
          int64_t nc = my_j1 - jc < NB ? my_j1 - jc : NB;
          pack_b(p, b, pc, kc, jc, nc, packed_b);
          macro_kernel(p, packed_a, packed_b, c + ic * p.n + jc, mc, nc, kc, load_c,
                       bias ? bias + jc : nullptr);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
      }
    }
  });
}

// Few rows (M <= 4): no packing. Each output row is a weighted sum of B's rows (B [K, N]) or
// a set of dot products with B's rows (trans_b, B [N, K]). Threads split the columns.
constexpr int64_t kGemvMaxRows = 4;

void gemv_rows(const MatmulArgs& p, const float* a, const float* b, float* c, int64_t j0,
               int64_t j1) {
  float a_rows[kGemvMaxRows];  // unused when !trans_a
  (void)a_rows;
  for (int64_t i = 0; i < p.m; ++i) {
    // row i of op(A), strided when trans_a
    auto a_at = [&](int64_t kk) { return p.trans_a ? a[kk * p.m + i] : a[i * p.k + kk]; };
    float* crow = c + i * p.n;
    if (p.trans_b) {
      int64_t j = j0;
      for (; j + 4 <= j1; j += 4) {  // four dot products share each load of A
        const float* b0 = b + j * p.k;
        vfloat s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
        int64_t kk = 0;
        if (!p.trans_a) {
          const float* arow = a + i * p.k;
          for (; kk + kWidth <= p.k; kk += kWidth) {
            vfloat av = load(arow + kk);
            s0 += av * load(b0 + kk);
            s1 += av * load(b0 + p.k + kk);
            s2 += av * load(b0 + 2 * p.k + kk);
            s3 += av * load(b0 + 3 * p.k + kk);
          }
        }
        float t[4] = {reduce_add(s0), reduce_add(s1), reduce_add(s2), reduce_add(s3)};
        for (; kk < p.k; ++kk) {
          float av = a_at(kk);
          for (int q = 0; q < 4; ++q) t[q] += av * b0[q * p.k + kk];
        }
        for (int q = 0; q < 4; ++q) {
          float v = t[q] + (p.bias ? p.bias[j + q] : 0.0f);
          crow[j + q] = p.accumulate ? crow[j + q] + v : v;
        }
      }
      for (; j < j1; ++j) {
        const float* brow = b + j * p.k;
        float s = 0.0f;
        for (int64_t kk = 0; kk < p.k; ++kk) s += a_at(kk) * brow[kk];
        s += p.bias ? p.bias[j] : 0.0f;
        crow[j] = p.accumulate ? crow[j] + s : s;
      }
    } else {
      // Columns in chunks of 8 vectors held in registers across the whole K loop.
      constexpr int64_t kChunk = 8 * kWidth;
      for (int64_t jc = j0; jc < j1; jc += kChunk) {
        int64_t width = j1 - jc < kChunk ? j1 - jc : kChunk;
        if (width == kChunk) {
          vfloat acc[8];
#pragma GCC unroll 8
          for (int v = 0; v < 8; ++v) acc[v] = zero();
          for (int64_t kk = 0; kk < p.k; ++kk) {
            vfloat av = broadcast(a_at(kk));
            const float* brow = b + kk * p.n + jc;
#pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) acc[v] += av * load(brow + v * kWidth);
          }
#pragma GCC unroll 8
          for (int v = 0; v < 8; ++v) {
            vfloat r = acc[v];
            if (p.bias) r += load(p.bias + jc + v * kWidth);
            if (p.accumulate) r += load(crow + jc + v * kWidth);
            store(crow + jc + v * kWidth, r);
          }
        } else {
          float acc[kChunk] = {};
          for (int64_t kk = 0; kk < p.k; ++kk) {
            float av = a_at(kk);
            const float* brow = b + kk * p.n + jc;
            for (int64_t cc = 0; cc < width; ++cc) acc[cc] += av * brow[cc];
          }
          for (int64_t cc = 0; cc < width; ++cc) {
            float r = acc[cc] + (p.bias ? p.bias[jc + cc] : 0.0f);
            crow[jc + cc] = p.accumulate ? crow[jc + cc] + r : r;
          }
        }
      }
    }
  }
}

void matmul_blocked(const MatmulArgs& p) {
  const int64_t flops_per_batch = p.m * p.n * p.k;
  const int64_t kMinWorkPerThread = (int64_t)48 * 48 * 48;
  const bool gemv = p.m <= kGemvMaxRows;
  if (p.batch >= num_threads() || flops_per_batch < kMinWorkPerThread) {
    // Whole batch entries per thread.
    int64_t min_batches = (kMinWorkPerThread + flops_per_batch - 1) / flops_per_batch;
    parallel_for(p.batch, min_batches, [&](int64_t b0, int64_t b1) {
      for (int64_t bi = b0; bi < b1; ++bi) {
        const float* a = p.a + bi * p.batch_stride_a;
        const float* b = p.b + bi * p.batch_stride_b;
        float* c = p.c + bi * p.batch_stride_c;
        if (gemv)
          gemv_rows(p, a, b, c, 0, p.n);
        else
          gemm_region(p, a, b, c, 0, p.m, 0, p.n, 1);
      }
    });
    return;
  }
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const float* a = p.a + bi * p.batch_stride_a;
    const float* b = p.b + bi * p.batch_stride_b;
    float* c = p.c + bi * p.batch_stride_c;
    if (gemv) {
      parallel_for(p.n, 64, [&](int64_t j0, int64_t j1) { gemv_rows(p, a, b, c, j0, j1); });
      continue;
    }
    int nt = threads_for(flops_per_batch, kMinWorkPerThread);
    int64_t col_units = (p.n + NR - 1) / NR;
    if (col_units >= 2 * nt) {
      gemm_region(p, a, b, c, 0, p.m, 0, p.n, nt);  // threads split the columns
    } else {
      // Few columns: threads take disjoint row ranges, each on its own.
      int64_t row_units = (p.m + MR - 1) / MR;
      parallel_for(row_units, 1, [&](int64_t u0, int64_t u1) {
        int64_t r0 = u0 * MR, r1 = u1 * MR < p.m ? u1 * MR : p.m;
        gemm_region(p, a, b, c, r0, r1 - r0, 0, p.n, 1);
      });
    }
  }
}

void lowrank_add(const LowrankArgs& p) {
  const int64_t min_rows = p.n > 0 ? (1 << 16) / p.n + 1 : 1;  // 64k values: worth a thread
  // A merged weight is read back only by the next pass over all the weights: streaming stores
  // skip the read of each output line that a cached store would do.
  const bool stream = p.m * p.n * (int64_t)sizeof(float) > (1 << 20);
  parallel_for(p.m, min_rows, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* base = p.base + i * p.n;
      const float* brow = p.b + i * p.r;
      store_range(p.out + i * p.n, 0, p.n, stream, [&](int64_t j, int64_t cnt) {
        vfloat acc = load_upto(base + j, cnt);
        for (int64_t k = 0; k < p.r; ++k)
          acc += broadcast(brow[k]) * load_upto(p.a + k * p.n + j, cnt);
        return acc;
      });
    }
    if (stream) stream_fence();
  });
}

}  // namespace

#if defined(__AVX512F__)
#define KG_MATMUL_PATH "8x48 AVX-512 FMA microkernel, packed A/B"
#elif defined(__AVX2__)
#define KG_MATMUL_PATH "6x16 AVX2 FMA microkernel, packed A/B"
#else
#define KG_MATMUL_PATH "6x8 SSE microkernel, packed A/B"
#endif

extern const MatmulKernels matmul_kernels = {matmul_naive, matmul_blocked, KG_MATMUL_PATH,
                                             lowrank_add};

KG_END_ISA_NAMESPACE
