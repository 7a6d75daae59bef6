// Quantized weights in ggml's Q8_0 and Q4_1 block formats: dequantize, and y = x @ W^T with W
// stored quantized (the decode matrix-vector product and the prefill matrix product).
//   W: [N, K] stored row by row, each row K / 32 blocks (K a multiple of 32), little endian:
//     Q8_0 block, 34 bytes: fp16 d, int8 q[32];                 w[j] = d * q[j]
//     Q4_1 block, 20 bytes: fp16 d, fp16 m, uint8 nibbles[16];  w[j] = d * q[j] + m with
//       q[j] = nibbles[j] & 15 and q[j + 16] = nibbles[j] >> 4  (j < 16)
//   x: [M, K] float32, y: [M, N] float32.
#pragma once
#include <cstdint>

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
// The same bytes as the GGUF blocks (320 = 16 x 20, 544 = 16 x 34), read as one stream.
constexpr int64_t kPackRows = 16;
inline int64_t quant_packed_record(QuantType t) { return t == QuantType::q8_0 ? 544 : 320; }
inline int64_t quant_packed_bytes(QuantType t, int64_t n, int64_t k) {
  return (n + kPackRows - 1) / kPackRows * (k / kQuantBlock) * quant_packed_record(t);
}

struct QuantPackArgs {
  const uint8_t* raw = nullptr;  // [n, k] in GGUF blocks
  uint8_t* packed = nullptr;     // quant_packed_bytes(type, n, k)
  int64_t n = 0, k = 0;
  QuantType type = QuantType::q8_0;
};

// y [m, n] (row stride ldy, 0: n) = x [m, k] @ W^T with W packed. x is quantized to int8 per
// block of 32 exactly as version 4 (vnni) does (reference.quantize_activations_q8); each block
// then adds d dx idot(u, qx) + m sx with sx = dx sum(qx): the same integers and the same
// formula as reference.quant_matmul_q8, up to float rounding.
struct PackedMatmulArgs {
  const float* x = nullptr;
  const uint8_t* w = nullptr;
  float* y = nullptr;
  int64_t m = 0, n = 0, k = 0, ldy = 0;
  QuantType type = QuantType::q8_0;
};

struct QuantPackedKernels {
  void (*pack)(const QuantPackArgs&);
  void (*matmul)(const PackedMatmulArgs&);  // version 5 (packed): decode and prefill alike
  bool native;  // VPDPBUSD; otherwise the same integers in plain loops (correct but slow)
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(QuantKernels, quant_kernels)
KG_DECLARE_PER_ISA(QuantPackedKernels, quant_packed_kernels)
