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

}  // namespace kg

KG_DECLARE_PER_ISA(QuantKernels, quant_kernels)
