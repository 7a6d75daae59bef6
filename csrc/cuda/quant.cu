// ggml Q8_0 / Q4_1 weights on the GPU: dequantize, and y = x @ W^T straight from the blocks.
//
// Blocks of 32 weights (ggml's layout, see reference.quantize_q8_0 / quantize_q4_1):
//   Q8_0: fp16 d, 32 x int8 q                    w = d * q            (34 bytes)
//   Q4_1: fp16 d, fp16 m, 16 bytes of nibbles    w = d * q + m        (20 bytes)
//         (byte j holds weight j in its low nibble and weight j + 16 in its high one)
// Versions as in python/kernelgpt/kernels/quant.py (2 to 4 are C++ only):
// dequantize version 1 "naive" (the only one on the GPU): one thread per weight;
// dequantize_rows: the rows named by device ids (an embedding lookup that a CUDA graph can
// replay: the id is read on the device).
// quant_matmul version 1 "naive": one thread per output y[m, n]: decode a weight, multiply, add.
// quant_matmul version 5 "warp": one warp per output; lane j decodes weight j of every block of
//            the row, so a warp reads each block's bytes together (coalesced), and the 32
//            partial dots meet in a warp shuffle at the end. (The weights are read once per x
//            row: meant for decoding, M small.)
// Every byte offset is computed from the row and block index: raw has exactly n * k / 32
// blocks (checked by the caller), so nothing is read past it.

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

constexpr int kQ8Bytes = 34, kQ41Bytes = 20, kTypeQ8 = 8, kTypeQ41 = 3;

__device__ inline float fp16_at(const uint8_t* b) {
  return __half2float(__ushort_as_half((unsigned short)(b[0] | (b[1] << 8))));
}

// Weight j (0..31) of the block starting at `blk`.
__device__ inline float weight_at(int qtype, const uint8_t* blk, int j) {
  if (qtype == kTypeQ8) return fp16_at(blk) * (float)(int8_t)blk[2 + j];
  uint8_t byte = blk[4 + (j & 15)];
  float q = (float)(j < 16 ? byte & 0x0F : byte >> 4);
  return fmaf(fp16_at(blk), q, fp16_at(blk + 2));
}

__global__ void dequantize_kernel(int qtype, const uint8_t* raw, float* out, int64_t blocks) {
  int bytes = qtype == kTypeQ8 ? kQ8Bytes : kQ41Bytes;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < blocks * 32;
       e += (int64_t)gridDim.x * blockDim.x)
    out[e] = weight_at(qtype, raw + (e / 32) * bytes, (int)(e % 32));
}

// out[i, :] = row ids[i] of W [rows, k], dequantized (an embedding lookup by device ids).
__global__ void dequantize_rows_kernel(int qtype, const uint8_t* raw, const int64_t* ids,
                                       float* out, int64_t n, int64_t k) {
  int bytes = qtype == kTypeQ8 ? kQ8Bytes : kQ41Bytes;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * k;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = ids[e / k], col = e % k;
    out[e] = weight_at(qtype, raw + (row * (k / 32) + col / 32) * bytes, (int)(col % 32));
  }
}

__global__ void quant_matmul_naive(int qtype, const float* x, const uint8_t* raw, float* y,
                                   int64_t m, int64_t n, int64_t k, bool accumulate) {
  int bytes = qtype == kTypeQ8 ? kQ8Bytes : kQ41Bytes;
  int64_t nb = k / 32;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < m * n;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = e / n, col = e % n;
    const uint8_t* w = raw + col * nb * bytes;
    const float* xr = x + row * k;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; ++b)
      for (int j = 0; j < 32; ++j) sum += weight_at(qtype, w + b * bytes, j) * xr[b * 32 + j];
    y[e] = accumulate ? y[e] + sum : sum;
  }
}

constexpr int kWarps = 8;

__global__ void quant_matmul_warp(int qtype, const float* x, const uint8_t* raw, float* y,
                                  int64_t m, int64_t n, int64_t k, bool accumulate) {
  int bytes = qtype == kTypeQ8 ? kQ8Bytes : kQ41Bytes;
  int lane = threadIdx.x % 32;
  int64_t nb = k / 32;
  int64_t warps = (int64_t)gridDim.x * kWarps;
  for (int64_t e = blockIdx.x * (int64_t)kWarps + threadIdx.x / 32; e < m * n; e += warps) {
    int64_t row = e / n, col = e % n;  // the whole warp has the same e
    const uint8_t* w = raw + col * nb * bytes;
    const float* xr = x + row * k;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; ++b)
      sum += weight_at(qtype, w + b * bytes, lane) * xr[b * 32 + lane];
    sum = warp_sum(sum);
    if (lane == 0) y[e] = accumulate ? y[e] + sum : sum;
  }
}

static void check_qtype(int qtype) {
  if (qtype != kTypeQ8 && qtype != kTypeQ41)
    throw std::runtime_error("quant (cuda): qtype must be 8 (Q8_0) or 3 (Q4_1)");
}

void dequantize(int, int qtype, const uint8_t* raw, float* out, int64_t blocks,
                uintptr_t stream) {
  check_qtype(qtype);
  dequantize_kernel<<<grid_for(blocks * 32, 256), 256, 0, as_stream(stream)>>>(qtype, raw, out,
                                                                                blocks);
  check(cudaGetLastError(), "dequantize (cuda) launch");
}

void dequantize_rows(int qtype, const uint8_t* raw, const int64_t* ids, float* out, int64_t n,
                     int64_t k, uintptr_t stream) {
  check_qtype(qtype);
  if (k % 32 != 0) throw std::runtime_error("dequantize_rows (cuda): k must be a multiple of 32");
  dequantize_rows_kernel<<<grid_for(n * k, 256), 256, 0, as_stream(stream)>>>(qtype, raw, ids,
                                                                              out, n, k);
  check(cudaGetLastError(), "dequantize_rows (cuda) launch");
}

void quant_matmul(int version, int qtype, const float* x, const uint8_t* raw, float* y,
                  int64_t m, int64_t n, int64_t k, bool accumulate, uintptr_t stream) {
  check_qtype(qtype);
  if (k % 32 != 0) throw std::runtime_error("quant_matmul (cuda): k must be a multiple of 32");
  if (version == 1)
    quant_matmul_naive<<<grid_for(m * n, 128), 128, 0, as_stream(stream)>>>(qtype, x, raw, y, m,
                                                                             n, k, accumulate);
  else
    quant_matmul_warp<<<grid_for(m * n, kWarps), 32 * kWarps, 0, as_stream(stream)>>>(
        qtype, x, raw, y, m, n, k, accumulate);
  check(cudaGetLastError(), "quant_matmul (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
