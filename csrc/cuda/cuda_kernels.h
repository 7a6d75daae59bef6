// Host-side launchers of the CUDA kernels. Pointers are device pointers (CuPy arrays'
// data.ptr); `stream` is a cudaStream_t (CuPy's current stream) passed as an integer so that
// the bindings do not need CUDA headers. Launch errors throw std::runtime_error.
// `version` is the family's version number, as in the Versions(...) table of
// python/kernelgpt/kernels/<family>.py (llm.c-style: version n is one idea on any processor);
// csrc/bindings/cuda.cpp checks it is one of the family's CUDA versions before launching.
#pragma once
#include <cstdint>

namespace kg {
namespace cuda {

int device_count();  // 0 when there is no driver or no GPU

// versions (csrc/cuda/matmul.cu): 1 naive, 2 coalesced, 3 tiled, 4 blocked1d, 5 blocked,
// 6 vectorized, 7 warptiled.
void matmul(int version, const float* a, const float* b, const float* bias, float* c,
            int64_t batch, int64_t m, int64_t n, int64_t k, int64_t batch_stride_a,
            int64_t batch_stride_b, int64_t batch_stride_c, bool trans_a, bool trans_b,
            bool accumulate, uintptr_t stream);

// Softmax (or log-softmax) over rows of length cols; rows are grouped into matrices of
// t rows for the causal mask (row i of a matrix keeps columns j <= i + cols - t).
// version 1 (naive): one thread per row, 2 (online): one block per row with warp reductions,
// online max/sum.
void softmax(int version, const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
             float scale, bool causal, bool log, uintptr_t stream);

// bf16 (uint16 bits) matmul with float accumulation: c [m, n] = op(a) @ op(b) (+ bias) (+ c);
// a [m, k] ([k, m] with trans_a), b [k, n] ([n, k] with trans_b), bias float [n] or null.
// version 1: naive, 5: wmma, tensor cores (csrc/cuda/matmul_bf16.cu).
void matmul_bf16(int version, const uint16_t* a, const uint16_t* b, const float* bias, float* c,
                 int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, bool accumulate,
                 uintptr_t stream);
// float -> bf16 bits, round to nearest even (as reference.to_bf16).
void to_bf16(const float* x, uint16_t* y, int64_t n, uintptr_t stream);

// dx of softmax (log = false) or log-softmax (log = true) from dy and the forward output y.
// version 1 (naive): one thread per row, 2 (fused): one block per row with a block reduction.
void softmax_backward(int version, const float* dy, const float* y, float* dx, int64_t rows,
                      int64_t cols, float scale, bool log, uintptr_t stream);

// ---- the families below: see the header comment of each csrc/cuda/<family>.cu ----------
// Every launcher takes `version` (1 = the naive one), device pointers and CuPy's stream.

// layernorm over rows of length cols. mean / rstd may be null. bias may be null.
// version 1 (naive): one thread per row, 2 (fast): one warp per row (shuffle reductions,
// two-pass variance).
void layernorm(int version, const float* x, const float* weight, const float* bias, float* y,
               float* mean, float* rstd, int64_t rows, int64_t cols, float eps,
               uintptr_t stream);
// dx per row; dweight / dbias (dbias may be null) summed over rows column by column in a
// fixed order (deterministic, no atomics).
void layernorm_backward(int version, const float* dy, const float* x, const float* weight,
                        const float* mean, const float* rstd, float* dx, float* dweight,
                        float* dbias, int64_t rows, int64_t cols, uintptr_t stream);
void rmsnorm(int version, const float* x, const float* weight, float* y, float* rstd,
             int64_t rows, int64_t cols, float eps, uintptr_t stream);
void rmsnorm_backward(int version, const float* dy, const float* x, const float* weight,
                      const float* rstd, float* dx, float* dweight, int64_t rows, int64_t cols,
                      uintptr_t stream);

// Elementwise activations. op: 0 gelu (tanh), 1 gelu (exact erf), 2 silu, 3 relu,
// 4 sigmoid, 5 tanh.
// version 1 (naive): one thread per element (grid-stride), 2 (fast): float4 loads / stores.
void activation(int version, int op, const float* x, float* y, int64_t n, uintptr_t stream);
void activation_backward(int version, int op, const float* dy, const float* x, float* dx,
                         int64_t n, uintptr_t stream);
void swiglu(int version, const float* gate, const float* up, float* y, int64_t n,
            uintptr_t stream);
void swiglu_backward(int version, const float* dy, const float* gate, const float* up,
                     float* dgate, float* dup, int64_t n, uintptr_t stream);

// Fused cross-entropy over logits [n, v] with int64 targets. Writes losses [n] (0 for
// ignored rows) when non-null and dlogits [n, v] = weight_i * (softmax - onehot) when
// non-null, weight_i = row_weight[i * weight_stride] (a device array; stride 0 = one value).
// version 1 (naive): one thread per row, 2 (online): one block per row, online max / sum.
void cross_entropy(int version, const float* logits, const int64_t* targets, float* losses,
                   float* dlogits, const float* row_weight, int64_t weight_stride, int64_t n,
                   int64_t v, int64_t ignore_index, uintptr_t stream);

// Embedding: out[i, :] = table[ids[i], :]; backward dtable[v, :] += sum of dout[i, :] over
// ids[i] == v. Forward: version 1 (naive) only. Backward: version 1 (naive): atomicAdd scatter
// (order not fixed), 2 (fast, "sorted"): deterministic, needs `order` (a stable argsort of
// ids) and sums each id's run in position order.
void embedding(int version, const int64_t* ids, const float* table, float* out, int64_t n,
               int64_t vocab, int64_t c, uintptr_t stream);
void embedding_backward(int version, const float* dout, const int64_t* ids, const int64_t* order,
                        float* dtable, int64_t n, int64_t vocab, int64_t c, uintptr_t stream);

// RoPE on x [rows = batch * t, d]; positions (int64 [t]) may be null (then offset + row % t).
// version 1 (naive) only.
void rope(int version, const float* x, float* y, const int64_t* positions, int64_t offset,
          double base, bool interleaved, int64_t rotary_dim, bool inverse, int64_t rows,
          int64_t t, int64_t d, uintptr_t stream);

// AdamW in place (see ops.adamw_step); bc1, bc2 are the bias corrections 1 - beta^step.
// version 1 (naive) only.
void adamw(int version, float* param, const float* grad, float* m, float* v, int64_t n, float lr,
           float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
           uintptr_t stream);
// Adds sum(g^2) (float64) of g [n] into *total (one device double): fixed-order block partial
// sums in `partials` (at least grad_norm_partials() doubles), then one block sums those.
int64_t grad_norm_partials();
void grad_norm_accumulate(const float* g, int64_t n, double* partials, double* total,
                          uintptr_t stream);
// g *= coef where coef = max_norm / (sqrt(*total) + eps) < 1 and the norm is finite.
void clip_scale(float* g, int64_t n, const double* total, float max_norm, float eps,
                uintptr_t stream);

// Attention, q [b, h, t, dh]; k, v [b, hkv, kv_capacity, dh] of which the first s rows are
// used. out [b, h, t, dh], lse [b, h, t] (may be null).
// version 1: naive (scores [b, h, t, s] materialized in `scores`), 2: flash (a block of 4
// warps = 4 query rows shares key / value tiles in shared memory, online softmax; dh <= 128),
// 3: decode (one block per query row, 8 warps split the keys, states merged at the end),
// 4: flash_tc (version 2 on tensor cores, bf16 operands; dh a multiple of 16, <= 128).
// s_dev (may be null): the decode version reads the number of keys from this device int64
// instead of s (so that a CUDA graph can replay one decode step at any position).
void attention(int version, const float* q, const float* k, const float* v, float* out,
               float* lse, float* scores, int64_t b, int64_t h, int64_t hkv, int64_t t,
               int64_t s, int64_t kv_capacity, int64_t dh, float scale, bool causal,
               const int64_t* s_dev, uintptr_t stream);

// Version 4 of attention, flash_tc (csrc/cuda/attention_tc.cu).
void attention_tensor_cores(const float* q, const float* k, const float* v, float* out,
                            float* lse, int64_t b, int64_t h, int64_t hkv, int64_t t, int64_t s,
                            int64_t kv_capacity, int64_t dh, float scale, bool causal,
                            uintptr_t stream);

// Gradients of attention (see ops.attention_backward), k, v [b, hkv, s, dh] (s rows, no
// cache capacity). dq [b, h, t, dh], dk, dv [b, hkv, s, dh] are written (not accumulated);
// dk, dv sum over the query heads that share a kv head. delta [b, h, t] is scratch
// (rowsum(dout * out)); scores [b, h, t, s] is scratch for version 1.
// version 1: naive (P recomputed into `scores`, then dv, dS in place, dq, dk: one thread per
// output element, fixed summation order). version 2: flash (two kernels, no atomics: a warp per
// query row accumulates dq over key tiles; a warp per key row accumulates dk, dv over query
// tiles; tiles of 32 rows shared by 4 warps in shared memory; dh <= 128).
void attention_backward(int version, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, float* dq, float* dk,
                        float* dv, float* delta, float* scores, int64_t b, int64_t h, int64_t hkv,
                        int64_t t, int64_t s, int64_t dh, float scale, bool causal,
                        uintptr_t stream);

// Quantized weights (ggml blocks of 32: Q8_0 34 bytes, Q4_1 20 bytes). qtype 8 / 3.
// dequantize: version 1 (naive) only.
void dequantize(int version, int qtype, const uint8_t* raw, float* out, int64_t blocks,
                uintptr_t stream);
// y [m, n] = x [m, k] @ W^T, W [n, k] quantized. version 1 (naive): one thread per output,
// 5 (warp): one warp per output, lanes over blocks, warp-shuffle sum.
// accumulate: y += x @ W^T.
void quant_matmul(int version, int qtype, const float* x, const uint8_t* raw, float* y,
                  int64_t m, int64_t n, int64_t k, bool accumulate, uintptr_t stream);
// out [n, k] = rows ids[0..n) (device int64) of W [rows, k] dequantized.
void dequantize_rows(int qtype, const uint8_t* raw, const int64_t* ids, float* out, int64_t n,
                     int64_t k, uintptr_t stream);
// KV cache append for one token read on the device: cache [hkv, cap, dh] (batch 1) row
// *pos of each head = src [hkv, dh]; nothing is written when *pos is outside [0, cap).
void kv_write(float* cache, const float* src, const int64_t* pos, int64_t hkv, int64_t cap,
              int64_t dh, uintptr_t stream);

// Selective scan (csrc/cuda/ssm.cu; shapes and formulas in csrc/kernels/ssm.h): u, delta, y
// [batch, T, E]; A [E, N]; B, C [batch, T, N]; D [E]; h0, h_out [batch, E, N] (each may be
// null: a zero start state / no final state); N <= 128.
// version 1 (naive): one thread per channel (b, e), step after step. 2 (chunked): chunks of
// `chunk` steps scanned in parallel in three passes; work: 2 * batch * nchunks * N * E floats
// (nchunks = ceil(T / chunk); unused, may be null, when nchunks == 1).
void selective_scan(int version, const float* u, const float* delta, const float* A,
                    const float* B, const float* C, const float* D, const float* h0, float* y,
                    float* h_out, int64_t batch, int64_t T, int64_t E, int64_t N, int64_t chunk,
                    float* work, uintptr_t stream);
// Gradients (from h0 = 0) given dy [batch, T, E]: du, d_delta [batch, T, E], dA [E, N],
// dB, dC [batch, T, N], dD [E], all written (not accumulated), deterministically.
// version 1 (naive) only: one thread per channel keeps its states in work
// (batch * (T + 1) * N * E floats) and walks back in time; sums over channels / sequences /
// steps by one thread per output, in a fixed order.
void selective_scan_backward(int version, const float* dy, const float* u, const float* delta,
                             const float* A, const float* B, const float* C, const float* D,
                             float* du, float* d_delta, float* dA, float* dB, float* dC,
                             float* dD, int64_t batch, int64_t T, int64_t E, int64_t N,
                             float* work, uintptr_t stream);

}  // namespace cuda
}  // namespace kg
