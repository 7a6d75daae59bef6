// Quantized weights in ggml's Q8_0 and Q4_1 block formats: dequantize, and y = x @ W^T with W
// stored quantized (the decode matrix-vector product and the prefill matrix product).
//   W: [N, K] stored row by row, each row K / 32 blocks (K a multiple of 32), little endian:
//     Q8_0 block, 34 bytes: fp16 d, int8 q[32];                 w[j] = d * q[j]
//     Q4_1 block, 20 bytes: fp16 d, fp16 m, uint8 nibbles[16];  w[j] = d * q[j] + m with
//       q[j] = nibbles[j] & 15 and q[j + 16] = nibbles[j] >> 4  (j < 16)
//   x: [M, K] float32, y: [M, N] float32.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/isa.h"

namespace kg {

enum class QuantType : int { q8_0 = 0, q4_1 = 1 };

constexpr int64_t kQuantBlock = 32;  // weights per block
inline int64_t quant_block_bytes(QuantType t) { return t == QuantType::q8_0 ? 34 : 20; }

struct DequantizeArgs {
  const uint8_t* raw = nullptr;
  float* out = nullptr;  // [rows, cols]
  int64_t rows = 0, cols = 0;
  QuantType type = QuantType::q8_0;
};

struct QuantMatmulArgs {
  const float* x = nullptr;    // [m, k]
  const uint8_t* w = nullptr;  // [n, k] quantized
  float* y = nullptr;          // [m, n]
  int64_t m = 0, n = 0, k = 0;
  QuantType type = QuantType::q8_0;
};

using DequantizeFn = void (*)(const DequantizeArgs&);
using QuantMatmulFn = void (*)(const QuantMatmulArgs&);

struct QuantKernels {
  DequantizeFn dequantize_naive;  // version 1: one block at a time, scalar, one thread
  DequantizeFn dequantize_fast;   // version 2: SIMD block decode, threads over rows
  QuantMatmulFn matmul_naive;     // version 1: dequantize a row, dot it with x, one thread
  QuantMatmulFn matmul_fused;     // version 2: fused decode-and-dot, fp32, 4 rows of x at a time
  QuantMatmulFn matmul_tiled;     // version 3: dequantize row panels to fp32, blocked matmul
  QuantMatmulFn matmul_vnni;      // version 4: int8 dot products (x quantized to Q8 per block)
  QuantMatmulFn matmul_auto;      // "version 0" = auto: fused for small m (decode), tiled above
  const char* description;
};

// ---- packed panels: the int8 path's own weight layout (kernels/quant_packed.cpp) -------------
// W's rows in groups of 16 (the last group padded with zero rows), each group block by block:
// a record holds one block (32 weights along K) of 16 rows, laid out so that one 64-byte load
// feeds one VPDPBUSD: byte 4r + t of a 64-byte chunk is row r's weight for k = 4c + t of the
// chunk's four k.
//   Q4_1 record, 320 bytes: d[16] fp16, m[16] fp16, 4 chunks of 64 bytes; chunk c's byte 4r + t
//     holds q[r][8c + t] (low nibble) and q[r][8c + 4 + t] (high nibble).
//   Q8_0 record, 544 bytes: d[16] fp16, 8 chunks of 64 bytes; byte 4r + t of chunk c is
//     q[r][4c + t] + 128 (unsigned), and m = -128 d makes it the same affine form as Q4_1:
//     w = d u + m with u = q + 128.
// The same bytes as the GGUF blocks (320 = 16 x 20, 544 = 16 x 34), read as one stream, after
// a 64-byte header that says what they are (so that panels of another shape or type are
// refused, not misread): "KGQP", uint32 version 1, uint32 qtype, uint32 0, int64 n, int64 k.
constexpr int64_t kPackRows = 16, kPackHeader = 64;
inline int64_t quant_packed_record(QuantType t) { return t == QuantType::q8_0 ? 544 : 320; }
inline int64_t quant_packed_bytes(QuantType t, int64_t n, int64_t k) {
  return kPackHeader + (n + kPackRows - 1) / kPackRows * (k / kQuantBlock) * quant_packed_record(t);
}

// Why panels do not hold `t` weights [n, k] (null: they do).
inline const char* quant_panels_mismatch(const uint8_t* panels, QuantType t, int64_t n, int64_t k) {
  uint32_t version, type;
  int64_t pn, pk;
  if (panels[0] != 'K' || panels[1] != 'G' || panels[2] != 'Q' || panels[3] != 'P')
    return "not packed panels (no KGQP header: make them with ops.quant_pack)";
  std::memcpy(&version, panels + 4, 4);
  std::memcpy(&type, panels + 8, 4);
  std::memcpy(&pn, panels + 16, 8);
  std::memcpy(&pk, panels + 24, 8);
  if (version != 1) return "packed panels of an unknown version";
  if (type != static_cast<uint32_t>(t)) return "packed panels of another quantization type";
  if (pn != n || pk != k) return "packed panels of another shape";
  return nullptr;
}

struct QuantPackArgs {
  const uint8_t* raw = nullptr;  // [n, k] in GGUF blocks
  uint8_t* packed = nullptr;     // quant_packed_bytes(type, n, k): header, then the records
  int64_t n = 0, k = 0;
  QuantType type = QuantType::q8_0;
};

// y [m, n] (row stride ldy, 0: n) = x [m, k] @ W^T with W packed, x quantized per block of 32:
//   x_bits 8:  qx = q1 int8 exactly as version 4 (vnni) does it (reference.quantize_activations_q8,
//              llama.cpp's Q8_0 activations): dx = max|x| / 127, ~1% error per product.
//   x_bits 16: two int8 passes, qx = 256 q1 + q2 with q2 = round((x - q1 d1) 256 / d1) clamped to
//              +-127 and dx = d1 / 256 (reference.quantize_activations_q8x2): ~4e-5 error per
//              product, the weights still read once (two VPDPBUSD per load instead of one).
// Each block then adds d dx idot(u, qx) + m sx with sx = dx sum(qx): the same integers and the
// same formula as reference.quant_matmul_q8(x_bits=...), up to float rounding.
struct PackedMatmulArgs {
  const float* x = nullptr;
  const uint8_t* w = nullptr;  // the records (past the header)
  float* y = nullptr;
  int64_t m = 0, n = 0, k = 0, ldy = 0;
  QuantType type = QuantType::q8_0;
  int x_bits = 16;  // 8 or 16
};

struct QuantPackedKernels {
  void (*pack)(const QuantPackArgs&);
  void (*matmul)(const PackedMatmulArgs&);  // version 5 (packed): decode and prefill alike
  bool native;  // VPDPBUSD or AVX2; otherwise the same integers in plain loops (correct, slow)
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(QuantKernels, quant_kernels)
KG_DECLARE_PER_ISA(QuantPackedKernels, quant_packed_kernels)
