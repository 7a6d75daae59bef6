// Q8_0 / Q4_1 weights repacked for int8 dot products: y = x @ W^T for decode (M = 1) and
// prefill (M large) alike. Layout in quant.h ("packed panels").
//
// Why repack. In GGUF order a block's 32 weights belong to one row, so a VPDPBUSD over them
// leaves 8 partial sums of one output to be added across lanes, and each block's two fp16
// scales are read one at a time. In the packed order the 16 lanes of a VPDPBUSD are 16 rows:
// a block of 16 rows is 8 of them (Q4_1: 4 loads, each split into low and high nibbles), with
// x's 4 int8 values broadcast; the 16 scales d (and m) of the block load as one vector. Per
// block and row of x: 8 VPDPBUSD, one int -> float conversion, two FMAs:
//     acc[16] += float(idot[16]) * (d[16] * dx) + m[16] * sx       (sx = dx * sum(qx))
// The weights of a group of 16 rows stay in L1 while every row of x goes past (prefill), so
// unpacking them is paid once per group and up to kMaxRows rows of x.
//
// x is quantized per block of 32 as llama.cpp's Q8_0 activations: d1 = max|x| / 127,
// q1 = roundf(x / d1) computed as x * (1 / d1) (reference.quantize_activations_q8, bit for
// bit, vectorised here); a block holding NaN or inf gets dx = NaN and qx = 0. With x_bits 16 a
// second int8 pass quantizes the remainder x - q1 d1 on a 256 times finer step (q2), and each
// block's integer dot is 256 idot(u, q1) + idot(u, q2): twice the VPDPBUSDs on the same
// weight registers, ~1/250 of the one-pass error (reference.quantize_activations_q8x2).
//
// Each output is one lane of one accumulator, summed block by block in order: the same
// arithmetic whatever range of rows a thread takes, so results do not depend on threads.
// Without AVX512-VNNI the same integers are computed in plain loops (correct, slow: the
// model keeps the fp32 path there, see QuantPackedKernels::native).
#include <cmath>
#include <cstring>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"
#include "kernels/fp16.h"
#include "kernels/quant.h"
#include "kernels/quantize_x.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define KG_PACKED_VNNI 1
#define KG_PACKED_AVX2 0
#elif defined(__AVX2__)
#define KG_PACKED_VNNI 0
#define KG_PACKED_AVX2 1
#else
#define KG_PACKED_VNNI 0
#define KG_PACKED_AVX2 0
#endif

constexpr int kMaxRows = 8;  // rows of x per pass over a group's weights
typedef int32_t int32_alias __attribute__((may_alias, aligned(1)));  // 4 int8 read as one
#ifndef KG_PACKED_PREFETCH
#define KG_PACKED_PREFETCH 8
#endif
constexpr int64_t kPrefetchRecords = KG_PACKED_PREFETCH;  // decode: prefetch distance
// The AVX2 tile's: measured on Zen 3 (one thread, Q4_1 [3072 x 576] from DRAM) 10 GB/s at 8
// records ahead, 13 GB/s at 32 (the kernel alone reads 20 GB/s from cache)
constexpr int64_t kPrefetchRecordsAvx2 = 32;

// ---- pack ----------------------------------------------------------------------------------

void pack(const QuantPackArgs& p) {
  const int64_t nb = p.k / kQuantBlock, bb = quant_block_bytes(p.type), rb = nb * bb;
  const int64_t rec = quant_packed_record(p.type), groups = (p.n + kPackRows - 1) / kPackRows;
  std::memset(p.packed, 0, kPackHeader);
  const uint32_t head[3] = {1, (uint32_t)p.type, 0};
  std::memcpy(p.packed, "KGQP", 4);
  std::memcpy(p.packed + 4, head, sizeof(head));
  std::memcpy(p.packed + 16, &p.n, 8);
  std::memcpy(p.packed + 24, &p.k, 8);
  uint8_t* records = p.packed + kPackHeader;
  parallel_for(groups, 64, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* out = records + (g * nb + b) * rec;
        std::memset(out, 0, rec);  // padding rows: d = m = 0, weights 0
        for (int64_t r = 0; r < kPackRows && g * kPackRows + r < p.n; ++r) {
          const uint8_t* blk = p.raw + (g * kPackRows + r) * rb + b * bb;
          std::memcpy(out + 2 * r, blk, 2);  // d
          if (p.type == QuantType::q4_1) {
            std::memcpy(out + 32 + 2 * r, blk + 2, 2);  // m
            uint8_t q[32];
            for (int j = 0; j < 16; ++j) q[j] = blk[4 + j] & 15, q[j + 16] = blk[4 + j] >> 4;
            for (int c = 0; c < 4; ++c)
              for (int t = 0; t < 4; ++t)
                out[64 + 64 * c + 4 * r + t] = (uint8_t)(q[8 * c + t] | (q[8 * c + 4 + t] << 4));
          } else {
            for (int c = 0; c < 8; ++c)
              for (int t = 0; t < 4; ++t)
                out[32 + 64 * c + 4 * r + t] = (uint8_t)(blk[2 + 4 * c + t] ^ 0x80);  // q + 128
          }
        }
      }
  });
}

// ---- x -> int8 blocks ------------------------------------------------------------------------

// ---- the tile: R rows of x against one group of 16 rows of W ----------------------------------

#if KG_PACKED_VNNI
// The 16 rows' integer dots of one block with x's 32 int8 (each VPDPBUSD takes four of them
// as one broadcast operand). Few rows of x (decode) leave too few independent chains to hide
// VPDPBUSD's latency, so the eight are split over two accumulators there.
template <int R>
inline __m512i dot_block(const __m512i* w, const int8_t* xq) {
  const int32_alias* x4 = reinterpret_cast<const int32_alias*>(xq);
  if (R <= 2) {
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      a = _mm512_dpbusd_epi32(a, w[c], _mm512_set1_epi32(x4[c]));
      b = _mm512_dpbusd_epi32(b, w[c + 4], _mm512_set1_epi32(x4[c + 4]));
    }
    return _mm512_add_epi32(a, b);
  }
  __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 8
  for (int c = 0; c < 8; ++c) s = _mm512_dpbusd_epi32(s, w[c], _mm512_set1_epi32(x4[c]));
  return s;
}
#endif

#if KG_PACKED_AVX2
// AVX2 without VNNI: the same integers from VPMADDUBSW (unsigned x signed bytes, pairs summed
// into int16) and VPMADDWD by ones (adjacent int16 pairs into int32), 8 rows of the group (one
// half) per ymm. Q4_1: a pair of products is at most 2 x 15 x 127, so a block's 8 VPMADDUBSW
// add up in int16 exactly (<= 30,480) before one VPMADDWD. Q8_0's stored u = q + 128 would
// saturate int16 (2 x 255 x 127), so each step takes |q| and x with q's sign (llama.cpp's
// trick: <= 2 x 128 x 127), giving idot(q, x); idot(u, x) = idot(q, x) + 128 sum(x) exactly.
// H halves from h0 per pass over the blocks: both (H = 2) for one row of x (decode: the
// broadcasts of x serve 16 rows, and every cache line of a record is read in the same
// iteration, so the stream from memory never pauses), one at a time for up to 4 rows of x
// (the 16 ymm registers hold no more).
template <int R, int H, QuantType T, int Passes>
void tile_avx2(const uint8_t* group, int h0, int64_t nb, const int8_t* qx, const float* dx,
               const float* sx, const int32_t* qsum, int64_t k, float* y, int64_t ldy, int valid,
               bool stream) {
  const int64_t rec = T == QuantType::q8_0 ? 544 : 320;
  const __m256i ones16 = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(15);
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  __m256 acc[R][H];
  for (int r = 0; r < R; ++r)
    for (int hh = 0; hh < H; ++hh) acc[r][hh] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * rec;
    if (stream)  // the first pass over these weights reads DRAM: ask a few records ahead
      for (int64_t line = 0; line < rec; line += 64)
        _mm_prefetch((const char*)(blk + kPrefetchRecordsAvx2 * rec + line), _MM_HINT_T0);
    __m256i s[R][Passes][H];  // the integer dots, per row of x, pass and half
    if (T == QuantType::q4_1) {
      __m256i s16[R][Passes][H];
      for (int r = 0; r < R; ++r)
        for (int ps = 0; ps < Passes; ++ps)
          for (int hh = 0; hh < H; ++hh) s16[r][ps][hh] = _mm256_setzero_si256();
#pragma GCC unroll 1  // unrolled, GCC hoists every load and broadcast, then spills
      for (int c = 0; c < 4; ++c) {  // chunk pair c: k 8c .. 8c + 3 low, 8c + 4 .. 8c + 7 high
        __m256i lo[H], hi[H];
        for (int hh = 0; hh < H; ++hh) {
          const __m256i raw =
              _mm256_loadu_si256((const __m256i*)(blk + 64 + 64 * c + 32 * (h0 + hh)));
          lo[hh] = _mm256_and_si256(raw, low4);
          hi[hh] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        }
        for (int r = 0; r < R; ++r)
          for (int ps = 0; ps < Passes; ++ps) {
            const int32_alias* x4 = reinterpret_cast<const int32_alias*>(
                qx + (r * k + b * kQuantBlock) * Passes + 32 * ps);
            const __m256i xl = _mm256_set1_epi32(x4[2 * c]), xh = _mm256_set1_epi32(x4[2 * c + 1]);
            for (int hh = 0; hh < H; ++hh)
              s16[r][ps][hh] = _mm256_add_epi16(
                  s16[r][ps][hh], _mm256_add_epi16(_mm256_maddubs_epi16(lo[hh], xl),
                                                   _mm256_maddubs_epi16(hi[hh], xh)));
          }
      }
      for (int r = 0; r < R; ++r)
        for (int ps = 0; ps < Passes; ++ps)
          for (int hh = 0; hh < H; ++hh) s[r][ps][hh] = _mm256_madd_epi16(s16[r][ps][hh], ones16);
    } else {
      for (int r = 0; r < R; ++r)
        for (int ps = 0; ps < Passes; ++ps)
          for (int hh = 0; hh < H; ++hh) s[r][ps][hh] = _mm256_setzero_si256();
#pragma GCC unroll 1
      for (int c = 0; c < 8; ++c) {
        __m256i q[H], a[H];
        for (int hh = 0; hh < H; ++hh) {
          q[hh] = _mm256_xor_si256(
              _mm256_loadu_si256((const __m256i*)(blk + 32 + 64 * c + 32 * (h0 + hh))), flip);
          a[hh] = _mm256_abs_epi8(q[hh]);
        }
        for (int r = 0; r < R; ++r)
          for (int ps = 0; ps < Passes; ++ps) {
            const int32_alias* x4 = reinterpret_cast<const int32_alias*>(
                qx + (r * k + b * kQuantBlock) * Passes + 32 * ps);
            const __m256i xb = _mm256_set1_epi32(x4[c]);
            for (int hh = 0; hh < H; ++hh)
              s[r][ps][hh] = _mm256_add_epi32(
                  s[r][ps][hh], _mm256_madd_epi16(
                                    _mm256_maddubs_epi16(a[hh], _mm256_sign_epi8(xb, q[hh])), ones16));
          }
      }
    }
    for (int hh = 0; hh < H; ++hh) {
      const int h = h0 + hh;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 16 * h)));
      const __m256 m = T == QuantType::q4_1
                           ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 32 + 16 * h)))
                           : _mm256_mul_ps(d, _mm256_set1_ps(-128.0f));
      for (int r = 0; r < R; ++r) {
        const int64_t xb = r * nb + b;
        __m256i si = s[r][0][hh];
        if (Passes == 2) si = _mm256_add_epi32(_mm256_slli_epi32(si, 8), s[r][Passes - 1][hh]);
        if (T == QuantType::q8_0)  // idot(u, x) = idot(q, x) + 128 sum(x)
          si = _mm256_add_epi32(si, _mm256_set1_epi32(128 * qsum[xb]));
        acc[r][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si),
                                     _mm256_mul_ps(d, _mm256_set1_ps(dx[xb])), acc[r][hh]);
        acc[r][hh] = _mm256_fmadd_ps(m, _mm256_set1_ps(sx[xb]), acc[r][hh]);
      }
    }
  }
  for (int hh = 0; hh < H; ++hh) {
    const int h = h0 + hh, n = valid - 8 * h < 8 ? valid - 8 * h : 8;
    for (int r = 0; r < R && n > 0; ++r) {
      if (n == 8) {
        _mm256_storeu_ps(y + r * ldy + 8 * h, acc[r][hh]);
      } else {
        float t[8];
        _mm256_storeu_ps(t, acc[r][hh]);
        for (int j = 0; j < n; ++j) y[r * ldy + 8 * h + j] = t[j];
      }
    }
  }
}
#endif

// y[r * ldy + j] for r < R, j < valid (<= 16) = row r of x . row j of the group. qx holds
// Passes x 32 bytes per block (q1, then q2), k * Passes per row of x; qsum the integer sum of
// each block of qx (read by the AVX2 copy only).
template <int R, QuantType T, int Passes>
void tile(const uint8_t* group, int64_t nb, const int8_t* qx, const float* dx, const float* sx,
          const int32_t* qsum, int64_t k, float* y, int64_t ldy, int valid, bool stream) {
  const int64_t rec = T == QuantType::q8_0 ? 544 : 320;
#if KG_PACKED_AVX2
  (void)rec;
  if (R == 1 && valid > 8) {  // decode: both halves in one pass
    tile_avx2<1, 2, T, Passes>(group, 0, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream);
    return;
  }
  for (int h = 0; h * 8 < valid; ++h)  // rows 0-7, then 8-15 (their cache lines are in L1 now)
    for (int r0 = 0; r0 < R; r0 += 4) {
      const int64_t off = r0 * k * Passes, boff = r0 * nb;
      const bool first = stream && h == 0 && r0 == 0;
      const int left = R - r0;
#define KG_TILE_AVX2(RR)                                                                          \
  tile_avx2<RR, 1, T, Passes>(group, h, nb, qx + off, dx + boff, sx + boff, qsum + boff, k,       \
                              y + r0 * ldy, ldy, valid, first)
      if (left >= 4)
        KG_TILE_AVX2(R >= 4 ? 4 : 1);
      else if (left == 3)
        KG_TILE_AVX2(3);
      else if (left == 2)
        KG_TILE_AVX2(2);
      else
        KG_TILE_AVX2(1);
#undef KG_TILE_AVX2
    }
#elif KG_PACKED_VNNI
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(15);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * rec;
    if (stream)  // the first pass over these weights reads DRAM: ask a few records ahead
      for (int64_t line = 0; line < rec; line += 64)
        _mm_prefetch((const char*)(blk + kPrefetchRecords * rec + line), _MM_HINT_T0);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blk));
    const __m512 m = T == QuantType::q4_1
                         ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(blk + 32)))
                         : _mm512_mul_ps(d, _mm512_set1_ps(-128.0f));
    __m512i w[8];
    if (T == QuantType::q4_1) {
      for (int c = 0; c < 4; ++c) {
        __m512i raw = _mm512_loadu_si512(blk + 64 + 64 * c);
        w[2 * c] = _mm512_and_si512(raw, low4);
        w[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
      }
    } else {
      for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(blk + 32 + 64 * c);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* xq = qx + (r * k + b * kQuantBlock) * Passes;
      __m512i s = dot_block<R>(w, xq);
      if (Passes == 2)  // s = 256 idot(u, q1) + idot(u, q2): exact in int32
        s = _mm512_add_epi32(_mm512_slli_epi32(s, 8), dot_block<R>(w, xq + 32));
      const int64_t xb = r * nb + b;
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(dx[xb])), acc[r]);
      acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[xb]), acc[r]);
    }
  }
  const __mmask16 keep = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1);
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + r * ldy, keep, acc[r]);
#else
  float acc[R][kPackRows] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * rec;
    for (int j = 0; j < kPackRows; ++j) {
      const float d = half_to_float(blk + 2 * j);
      const float m = T == QuantType::q4_1 ? half_to_float(blk + 32 + 2 * j) : d * -128.0f;
      for (int r = 0; r < R; ++r) {
        const int8_t* xq = qx + (r * k + b * kQuantBlock) * Passes;
        int32_t s = 0;
        for (int c = 0; c < 8; ++c)
          for (int t = 0; t < 4; ++t) {
            int u;
            if (T == QuantType::q4_1) {
              uint8_t byte = blk[64 + 64 * (c / 2) + 4 * j + t];
              u = c % 2 ? byte >> 4 : byte & 15;
            } else {
              u = blk[32 + 64 * c + 4 * j + t];
            }
            s += u * (Passes == 2 ? 256 * xq[4 * c + t] + xq[32 + 4 * c + t] : xq[4 * c + t]);
          }
        const int64_t xb = r * nb + b;
        acc[r][j] += (float)s * (d * dx[xb]);
        acc[r][j] += m * sx[xb];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < valid; ++j) y[r * ldy + j] = acc[r][j];
#endif
}

template <QuantType T, int Passes>
void tile_rows(int rows, const uint8_t* group, int64_t nb, const int8_t* qx, const float* dx,
               const float* sx, const int32_t* qsum, int64_t k, float* y, int64_t ldy, int valid,
               bool stream) {
  switch (rows) {
    case 1: tile<1, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 2: tile<2, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 3: tile<3, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 4: tile<4, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 5: tile<5, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 6: tile<6, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    case 7: tile<7, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
    default: tile<8, T, Passes>(group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream); break;
  }
}

// The tile for this type and pass count.
template <int Passes>
void tile_any(QuantType t, int rows, const uint8_t* group, int64_t nb, const int8_t* qx,
              const float* dx, const float* sx, const int32_t* qsum, int64_t k, float* y,
              int64_t ldy, int valid, bool stream) {
  if (t == QuantType::q8_0)
    tile_rows<QuantType::q8_0, Passes>(rows, group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream);
  else
    tile_rows<QuantType::q4_1, Passes>(rows, group, nb, qx, dx, sx, qsum, k, y, ldy, valid, stream);
}

thread_local GrowBuffer<int8_t> tl_qx;
thread_local Workspace tl_scales;
thread_local GrowBuffer<int32_t> tl_qsum;  // sum(qx) per block (the AVX2 copy reads it)

// Work per chunk of groups worth a thread of its own: ~64k multiply-adds.
constexpr int64_t kMinMacsPerChunk = 1 << 16;

template <int Passes>
void matmul_passes(const PackedMatmulArgs& p) {
  const int64_t nb = p.k / kQuantBlock, ldy = p.ldy ? p.ldy : p.n;
  const int64_t rec = quant_packed_record(p.type), groups = (p.n + kPackRows - 1) / kPackRows;
  int8_t* qx = tl_qx.get(p.m * p.k * Passes);
  float* scales = tl_scales.get(2 * p.m * nb);
  float *dx = scales, *sx = scales + p.m * nb;
  int32_t* qsum = tl_qsum.get(p.m * nb);
  parallel_for(p.m, 1 + kMinMacsPerChunk / p.k,
               [&](int64_t i0, int64_t i1) {
                 quantize_x_blocks<Passes>(p.x, i0 * nb, i1 * nb, qx, dx, sx, qsum);
               });
  const int64_t macs_per_group = kPackRows * p.k * p.m * Passes;
  parallel_for(groups, 1 + kMinMacsPerChunk / macs_per_group, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* group = p.w + g * nb * rec;
      const int valid = (int)(p.n - g * kPackRows < kPackRows ? p.n - g * kPackRows : kPackRows);
      for (int64_t i = 0; i < p.m; i += kMaxRows) {
        const int rows = (int)(p.m - i < kMaxRows ? p.m - i : kMaxRows);
        tile_any<Passes>(p.type, rows, group, nb, qx + i * p.k * Passes, dx + i * nb, sx + i * nb,
                         qsum + i * nb, p.k, p.y + i * ldy + g * kPackRows, ldy, valid, i == 0);
      }
    }
  });
}

void matmul(const PackedMatmulArgs& p) {
  if (p.x_bits == 8)
    matmul_passes<1>(p);
  else
    matmul_passes<2>(p);
}

}  // namespace

#if KG_PACKED_VNNI
#define KG_PACKED_PATH "packed panels: 16 rows per VPDPBUSD (AVX512-VNNI), x in int8 blocks"
#elif KG_PACKED_AVX2
#define KG_PACKED_PATH "packed panels: 8 rows per VPMADDUBSW + VPMADDWD (AVX2), x in int8 blocks"
#else
#define KG_PACKED_PATH "packed panels: integer block dots in plain loops (no AVX512-VNNI)"
#endif

extern const QuantPackedKernels quant_packed_kernels = {
    pack, matmul, KG_PACKED_VNNI || KG_PACKED_AVX2, KG_PACKED_PATH};

KG_END_ISA_NAMESPACE
