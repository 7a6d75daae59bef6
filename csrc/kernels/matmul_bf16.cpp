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
//   On aarch64 with bf16 (the i8mm copy: armv8.6-a) BFMMLA multiplies a 2 x 4 block of A by a
//   4 x 2 block of B into a 2 x 2 block of C: 16 multiply-adds per instruction, twice BFDOT's.
//   Its operands are two rows (or two columns) of 4 consecutive k, so there the packed pairs
//   of each two k-pairs are regrouped (finish_sliver) and K blocks are cut on multiples of 4.
//   Without either (AVX-512, AVX2, SSE, NEON copies) the same packed pairs are widened by a
//   16-bit shift and go through two float32 FMAs: the same products (each exact in float32),
//   added in a slightly different order.
//   Threads split the columns or the rows, whichever makes them pack the smaller operand twice.
//   Operands may come as float32: packing rounds them (the same bits as to_bf16 first).
//   Epilogue: an activation on each finished tile (linear + GELU forward, or dX * GELU'(x)).
#include "kernels/matmul_bf16.h"

#include <cstring>

#include "kernels/bf16_bits.h"

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#if defined(__AVX512BF16__)
#include <immintrin.h>
#elif defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
#include <arm_neon.h>
#endif

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

typedef uint32_t vuint __attribute__((vector_size(kWidth * 4)));

inline float widen1(uint16_t h) { return bf16_to_float(h); }

// An operand element as bf16 bits: stored bits as they are, float32 rounded.
inline uint16_t bits_at(const uint16_t* x, int64_t i) { return x[i]; }
inline uint16_t bits_at(const float* x, int64_t i) { return round_to_bf16(x[i]); }

// The activation epilogue on C[0:rows, 0:cols] (row stride n) at element offset `at`.
void epilogue(const MatmulBf16Args& p, int64_t at, int64_t rows, int64_t cols) {
  const ActivationKernels& act = activation_kernels;
  for (int64_t r = 0; r < rows; ++r) {
    float* c = p.c + at + r * p.n;
    if (p.act_out) act.span_forward(p.activation, c, p.act_out + at + r * p.n, cols);
    if (p.act_x) act.span_backward(p.activation, c, p.act_x + at + r * p.n, c, cols);
  }
}

// The epilogue's other array (act_x read, or act_out written) for a tile, fetched while the
// tile computes: its rows are 4 n bytes apart, too far for the hardware prefetcher to follow.
inline void prefetch_epilogue(const MatmulBf16Args& p, int64_t at, int64_t rows, int64_t cols) {
  const float* base = p.act_x ? p.act_x : p.act_out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += 16) {
      if (p.act_x)
        __builtin_prefetch(base + at + r * p.n + c, 0, 3);
      else
        __builtin_prefetch(base + at + r * p.n + c, 1, 3);
    }
}

// ---- version 1: naive --------------------------------------------------------------------
template <class TA, class TB>
void naive_typed(const MatmulBf16Args& p, const TA* a, const TB* b) {
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      float sum = 0.0f;
      for (int64_t kk = 0; kk < p.k; ++kk) {
        uint16_t aik = p.trans_a ? bits_at(a, kk * p.m + i) : bits_at(a, i * p.k + kk);
        uint16_t bkj = p.trans_b ? bits_at(b, j * p.k + kk) : bits_at(b, kk * p.n + j);
        sum += widen1(aik) * widen1(bkj);
      }
      if (p.bias) sum += p.bias[j];
      float* c = p.c + i * p.n + j;
      *c = p.accumulate ? *c + sum : sum;
      epilogue(p, i * p.n + j, 1, 1);
    }
}

void matmul_naive(const MatmulBf16Args& p) {
  if (p.a_f32 && p.b_f32) return naive_typed(p, p.a_f32, p.b_f32);
  if (p.a_f32) return naive_typed(p, p.a_f32, p.b);
  if (p.b_f32) return naive_typed(p, p.a, p.b_f32);
  naive_typed(p, p.a, p.b);
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

#if defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
constexpr bool kMmla = true;
#else
constexpr bool kMmla = false;
#endif

// Pairs a packed sliver holds for a K block of kc: (kc + 1) / 2, rounded up to even for BFMMLA
// (whose operands are 4 k; the padding pair is zero).
inline int64_t packed_pairs(int64_t kc) { return kMmla ? (kc + 3) / 4 * 2 : (kc + 1) / 2; }

// Finishes a packed sliver of `width` rows (A) or columns (B) whose first `pairs` pairs are
// written in pair order, word (q, i) at q * width + i: zeroes the padding pairs up to
// packed_pairs and, for BFMMLA, regroups each two pairs (4 k) so that every two rows (or
// columns) i, i+1 hold their 4 k contiguously, as the instruction reads them:
//   word (Q, i/2, i%2, q%2) at Q * 2 * width + (i / 2) * 4 + (i % 2) * 2 + q % 2,  Q = q / 2.
template <int W>
void finish_sliver(uint32_t* s, int64_t pairs, int64_t stride) {
  for (int64_t q = pairs; q < stride; ++q)
    for (int i = 0; i < W; ++i) s[q * W + i] = 0;
  if constexpr (kMmla) {
    static_assert(W % 2 == 0, "BFMMLA tiles need an even number of rows and columns");
    uint32_t g[2 * W];
    for (int64_t q = 0; q < stride; q += 2) {
      uint32_t* x = s + q * W;
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < W; ++i) g[(i / 2) * 4 + (i % 2) * 2 + h] = x[h * W + i];
      std::memcpy(x, g, sizeof(g));
    }
  }
}

// ---- rounding float32 operands while packing (vectorized; bits identical to round_to_bf16) --
typedef uint64_t vu64 __attribute__((vector_size(kWidth * 4)));
typedef uint32_t vu32half __attribute__((vector_size(kWidth * 2)));

// round_to_bf16 on every lane of float bit patterns; the bf16 lands in each lane's low 16 bits.
inline vuint round_lanes(vuint b) {
  const vuint rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const vuint quiet_nan = (b >> 16) | 0x40u;
  return (b & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
}

inline vuint load_bits(const float* x) {
  vuint v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

// dst[c] = (bf16(r0[c]), bf16(r1[c])) for c < cnt; r1 == nullptr: odd half 0. Two rows of
// consecutive k interleaved (B [K, N], or A [K, M] when trans_a).
void round_rows_pair(const float* r0, const float* r1, uint32_t* dst, int64_t cnt) {
  int64_t c = 0;
  for (; c + kWidth <= cnt; c += kWidth) {
    vuint w = round_lanes(load_bits(r0 + c));
    if (r1) w |= round_lanes(load_bits(r1 + c)) << 16;
    std::memcpy(dst + c, &w, sizeof(w));
  }
  for (; c < cnt; ++c) dst[c] = pair(round_to_bf16(r0[c]), r1 ? round_to_bf16(r1[c]) : 0);
}

// dst[q * stride] = (bf16(x[2q]), bf16(x[2q+1])) for q < (cnt + 1) / 2 (x[cnt] taken as 0 when
// cnt is odd): consecutive k of one row (A [M, K], or B [N, K] when trans_b).
void round_pairs_strided(const float* x, int64_t cnt, uint32_t* dst, int64_t stride) {
  alignas(64) uint32_t words[kWidth / 2];
  int64_t i = 0;
  for (; i + kWidth <= cnt; i += kWidth) {
    vu64 u = (vu64)round_lanes(load_bits(x + i));  // lane q: (low: bf16(x[2q]), high: bf16(x[2q+1]))
    vu64 w = (u & 0xffffu) | ((u >> 16) & 0xffff0000u);
    vu32half n = __builtin_convertvector(w, vu32half);
    std::memcpy(words, &n, sizeof(n));
    for (int q = 0; q < kWidth / 2; ++q) dst[(i / 2 + q) * stride] = words[q];
  }
  for (; i < cnt; i += 2)
    dst[(i / 2) * stride] = pair(round_to_bf16(x[i]), i + 1 < cnt ? round_to_bf16(x[i + 1]) : 0);
}

// op(A)[i0:i0+mc, k0:k0+kc] as slivers of MR rows: word (s, p, r) = (A(r, 2p), A(r, 2p+1)).
template <class T>
void pack_a(const MatmulBf16Args& p, const T* a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2, stride = packed_pairs(kc);
  for (int64_t s = 0; s * MR < mc; ++s) {
    uint32_t* dst = out + s * MR * stride;
    const int64_t row0 = i0 + s * MR, rows = mc - s * MR < MR ? mc - s * MR : MR;
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t k = k0 + 2 * q;
      const bool has_odd = 2 * q + 1 < kc;
      for (int64_t r = 0; r < MR; ++r) {
        uint32_t w = 0;
        if (r < rows) {
          const int64_t i = row0 + r;
          if (p.trans_a)
            w = pair(bits_at(a, k * p.m + i), has_odd ? bits_at(a, (k + 1) * p.m + i) : 0);
          else
            w = pair(bits_at(a, i * p.k + k), has_odd ? bits_at(a, i * p.k + k + 1) : 0);
        }
        dst[q * MR + r] = w;
      }
    }
    finish_sliver<MR>(dst, pairs, stride);
  }
}

// op(B)[k0:k0+kc, j0:j0+nc] as slivers of NR columns: word (s, p, c) = (B(2p, c), B(2p+1, c)).
template <class T>
void pack_b(const MatmulBf16Args& p, const T* b, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
            uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2, stride = packed_pairs(kc);
  for (int64_t s = 0; s < nc; s += NR) {
    const int64_t cols = nc - s < NR ? nc - s : NR;
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t k = k0 + 2 * q;
      const bool has_odd = 2 * q + 1 < kc;
      uint32_t* dst = out + q * NR;
      if (p.trans_b) {  // B [N, K]: the pair is adjacent in memory
        for (int64_t c = 0; c < cols; ++c) {
          const T* row = b + (j0 + s + c) * p.k + k;
          dst[c] = pair(bits_at(row, 0), has_odd ? bits_at(row, 1) : 0);
        }
      } else {  // B [K, N]: interleave two rows
        const T* r0 = b + k * p.n + j0 + s;
        if (has_odd)
          for (int64_t c = 0; c < cols; ++c) dst[c] = pair(bits_at(r0, c), bits_at(r0 + p.n, c));
        else
          for (int64_t c = 0; c < cols; ++c) dst[c] = pair(bits_at(r0, c), 0);
      }
      for (int64_t c = cols; c < NR; ++c) dst[c] = 0;
    }
    finish_sliver<NR>(out, pairs, stride);
    out += stride * NR;
  }
}

// The float32 operands: the same words, rounded in vectors.
void pack_a(const MatmulBf16Args& p, const float* a, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2, stride = packed_pairs(kc);
  for (int64_t s = 0; s * MR < mc; ++s) {
    uint32_t* dst = out + s * MR * stride;
    const int64_t row0 = i0 + s * MR, rows = mc - s * MR < MR ? mc - s * MR : MR;
    if (p.trans_a) {  // A [K, M]: rows k and k+1 hold the pair of each of the MR rows
      for (int64_t q = 0; q < pairs; ++q) {
        const int64_t k = k0 + 2 * q;
        const float* r0 = a + k * p.m + row0;
        round_rows_pair(r0, 2 * q + 1 < kc ? r0 + p.m : nullptr, dst + q * MR, rows);
        for (int64_t r = rows; r < MR; ++r) dst[q * MR + r] = 0;
      }
    } else {  // A [M, K]: each row's k are consecutive
      for (int64_t r = 0; r < rows; ++r)
        round_pairs_strided(a + (row0 + r) * p.k + k0, kc, dst + r, MR);
      for (int64_t r = rows; r < MR; ++r)
        for (int64_t q = 0; q < pairs; ++q) dst[q * MR + r] = 0;
    }
    finish_sliver<MR>(dst, pairs, stride);
  }
}

void pack_b(const MatmulBf16Args& p, const float* b, int64_t k0, int64_t kc, int64_t j0,
            int64_t nc, uint32_t* out) {
  const int64_t pairs = (kc + 1) / 2, stride = packed_pairs(kc);
  for (int64_t s = 0; s < nc; s += NR) {
    const int64_t cols = nc - s < NR ? nc - s : NR;
    if (p.trans_b) {  // B [N, K]: each column's k are consecutive
      for (int64_t c = 0; c < cols; ++c)
        round_pairs_strided(b + (j0 + s + c) * p.k + k0, kc, out + c, NR);
    } else {  // B [K, N]: interleave two rows
      for (int64_t q = 0; q < pairs; ++q) {
        const float* r0 = b + (k0 + 2 * q) * p.n + j0 + s;
        round_rows_pair(r0, 2 * q + 1 < kc ? r0 + p.n : nullptr, out + q * NR, cols);
      }
    }
    for (int64_t q = 0; q < pairs; ++q)
      for (int64_t c = cols; c < NR; ++c) out[q * NR + c] = 0;
    finish_sliver<NR>(out, pairs, stride);
    out += stride * NR;
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
#elif defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
  // aarch64 bf16 (armv8.6-a): BFMMLA on 2 x 2 blocks of C, m[rp][cp] = rows 2rp, 2rp+1 x
  // columns 2cp, 2cp+1 (row-major), from 2 rows x 4 k of A and 2 columns x 4 k of B (the
  // sliver layout of to_mmla); the row vectors go in and come back out by 64-bit zips.
  static_assert(MR % 2 == 0 && kWidth == 4, "BFMMLA tile: even rows, 4-lane vectors");
  constexpr int RP = MR / 2, CP = NR / 2;
  float32x4_t m[RP][CP];
  auto zip_lo = [](float32x4_t a, float32x4_t b) {
    return vreinterpretq_f32_f64(vzip1q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)));
  };
  auto zip_hi = [](float32x4_t a, float32x4_t b) {
    return vreinterpretq_f32_f64(vzip2q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)));
  };
#pragma GCC unroll 8
  for (int rp = 0; rp < RP; ++rp)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      const float32x4_t r0 = (float32x4_t)acc[2 * rp][u], r1 = (float32x4_t)acc[2 * rp + 1][u];
      m[rp][2 * u] = zip_lo(r0, r1);
      m[rp][2 * u + 1] = zip_hi(r0, r1);
    }
  for (int64_t q = 0; q < pairs; q += 2) {
    bfloat16x8_t bv[CP];
#pragma GCC unroll 8
    for (int cp = 0; cp < CP; ++cp)
      bv[cp] = vreinterpretq_bf16_u32(vld1q_u32(bp + q * NR + cp * 4));
#pragma GCC unroll 8
    for (int rp = 0; rp < RP; ++rp) {
      const bfloat16x8_t av = vreinterpretq_bf16_u32(vld1q_u32(ap + q * MR + rp * 4));
#pragma GCC unroll 8
      for (int cp = 0; cp < CP; ++cp) m[rp][cp] = vbfmmlaq_f32(m[rp][cp], av, bv[cp]);
    }
  }
#pragma GCC unroll 8
  for (int rp = 0; rp < RP; ++rp)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      acc[2 * rp][u] = (vfloat)zip_lo(m[rp][2 * u], m[rp][2 * u + 1]);
      acc[2 * rp + 1][u] = (vfloat)zip_hi(m[rp][2 * u], m[rp][2 * u + 1]);
    }
#else
  // Each pair as two float32 steps, the even k for every row, then the odd k: the registers
  // of the fp32 microkernel (MR x NV accumulators, NV of B, one of A), two FMAs per pair.
  for (int64_t q = 0; q < pairs; ++q) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // h = 0: even k (low half), 1: odd k (high half)
      vfloat bv[NV];
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) {
        vuint w;
        std::memcpy(&w, bp + q * NR + u * kWidth, sizeof(w));
        bv[u] = (vfloat)(h ? w & 0xffff0000u : w << 16);
      }
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const uint32_t w = ap[q * MR + r];
        const vfloat av = broadcast(widen1((uint16_t)(h ? w >> 16 : w & 0xffffu)));
#pragma GCC unroll 4
        for (int u = 0; u < NV; ++u) acc[r][u] += av * bv[u];
      }
    }
  }
#endif
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) store(c + r * ldc + u * kWidth, acc[r][u]);
}

// C[ic:ic+mc, jc:jc+nc] (+)= packed A panel @ packed B block; `last`: the final k block,
// after which each tile gets the activation epilogue.
void macro_kernel(const MatmulBf16Args& p, const uint32_t* pa, const uint32_t* pb, int64_t ic,
                  int64_t jc, int64_t mc, int64_t nc, int64_t kc, bool load_c, const float* bias,
                  bool last) {
  float* c = p.c + ic * p.n + jc;
  const bool epi = last && (p.act_out || p.act_x);
  alignas(64) float edge[MR * NR];
  const int64_t pairs = packed_pairs(kc);
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const uint32_t* ap = pa + ir * pairs;
    const int64_t rows = mc - ir < MR ? mc - ir : MR;
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const uint32_t* bp = pb + jr * pairs;
      const int64_t cols = nc - jr < NR ? nc - jr : NR;
      float* cij = c + ir * p.n + jr;
      const float* bias_j = bias ? bias + jr : nullptr;
      if (epi) prefetch_epilogue(p, (ic + ir) * p.n + jc + jr, rows, cols);
      if (rows == MR && cols == NR) {
        tile(pairs, ap, bp, cij, p.n, load_c, bias_j);
        if (epi) epilogue(p, (ic + ir) * p.n + jc + jr, rows, cols);
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
      if (epi) epilogue(p, (ic + ir) * p.n + jc + jr, rows, cols);
    }
  }
}

// C[i0:i1, j0:j1] on the calling thread; A and B as stored (bits or float32).
template <class TA, class TB>
void gemm_region_typed(const MatmulBf16Args& p, const TA* a, const TB* b, int64_t i0, int64_t i1,
                       int64_t j0, int64_t j1) {
  if (i0 >= i1 || j0 >= j1) return;
  const int64_t k_blocks = (p.k + KC - 1) / KC;
  int64_t kc_step = (p.k + k_blocks - 1) / k_blocks;
  const int64_t k_unit = kMmla ? 4 : 2;  // pairs (BFMMLA: two pairs) never straddle two blocks
  kc_step = (kc_step + k_unit - 1) / k_unit * k_unit;
  const int64_t panel_rows = i1 - i0 < MB ? (i1 - i0 + MR - 1) / MR * MR : MB;
  uint32_t* pa = tl_pack.a.get(panel_rows * packed_pairs(kc_step));
  uint32_t* pb = tl_pack.b.get(NB * packed_pairs(kc_step));
  for (int64_t ic = i0; ic < i1; ic += MB) {
    const int64_t mc = i1 - ic < MB ? i1 - ic : MB;
    for (int64_t pc = 0; pc < p.k; pc += kc_step) {
      const int64_t kc = p.k - pc < kc_step ? p.k - pc : kc_step;
      const bool first = pc == 0, last = pc + kc >= p.k;
      const bool load_c = !first || p.accumulate;
      const float* bias = first && !p.accumulate ? p.bias : nullptr;
      pack_a(p, a, ic, mc, pc, kc, pa);
      for (int64_t jc = j0; jc < j1; jc += NB) {
        const int64_t nc = j1 - jc < NB ? j1 - jc : NB;
        pack_b(p, b, pc, kc, jc, nc, pb);
        macro_kernel(p, pa, pb, ic, jc, mc, nc, kc, load_c, bias ? bias + jc : nullptr, last);
      }
    }
  }
}

void gemm_region(const MatmulBf16Args& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  if (p.a_f32 && p.b_f32) return gemm_region_typed(p, p.a_f32, p.b_f32, i0, i1, j0, j1);
  if (p.a_f32) return gemm_region_typed(p, p.a_f32, p.b, i0, i1, j0, j1);
  if (p.b_f32) return gemm_region_typed(p, p.a, p.b_f32, i0, i1, j0, j1);
  gemm_region_typed(p, p.a, p.b, i0, i1, j0, j1);
}

// Threads split C's columns (each thread packs all of op(A) and its share of op(B)) or its rows
// (each packs its rows of op(A) and all of op(B)): the split that packs the smaller operand
// twice, as long as it gives every thread at least two tiles across.
void matmul_packed(const MatmulBf16Args& p) {
  const int64_t kMinWork = (int64_t)64 * 64 * 64;
  const int nt = threads_for(p.m * p.n * p.k, kMinWork);
  const int64_t col_units = (p.n + NR - 1) / NR, row_units = (p.m + MR - 1) / MR;
  const bool cols_ok = col_units >= 2 * nt, rows_ok = row_units >= 2 * nt;
  const bool split_cols = nt > 1 && cols_ok && (!rows_ok || p.m <= p.n);
  if (split_cols) {
    parallel_region(nt, [&](int t, int count) {
      int64_t j0 = col_units * t / count * NR, j1 = col_units * (t + 1) / count * NR;
      gemm_region(p, 0, p.m, j0, j1 < p.n ? j1 : p.n);
    });
  } else {
    parallel_region(nt, [&](int t, int count) {
      int64_t u0 = row_units * t / count, u1 = row_units * (t + 1) / count;
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
#elif defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
#define KG_MATMUL_BF16_PATH "6x8 NEON BFMMLA microkernel (2x2 blocks), packed bf16 quads"
#elif defined(__aarch64__)
#define KG_MATMUL_BF16_PATH "6x8 NEON FMA on widened bf16 pairs (no bf16 instructions)"
#else
#define KG_MATMUL_BF16_PATH "6x8 SSE on widened bf16 pairs (no AVX512-BF16)"
#endif

extern const MatmulBf16Kernels matmul_bf16_kernels = {matmul_naive, matmul_packed,
                                                      KG_MATMUL_BF16_PATH};

KG_END_ISA_NAMESPACE
