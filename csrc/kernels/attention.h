// attention: out = softmax(scale * q k^T + mask) v for every (batch, head), float32, row-major.
//   q    [B, H, T, D]        T queries per head
//   k, v [B, Hkv, S, D]      S keys and values per kv head; H % Hkv == 0 and query head h
//                            reads kv head h / (H / Hkv) (grouped-query attention)
//   out  [B, H, T, D]
//   lse  [B, H, T]           natural-log logsumexp of each query row's scaled, masked scores
//                            (what the backward needs to recompute the probabilities)
//   causal: query i sees the keys j <= i + (S - T) ("bottom-right aligned": the T queries are
//   the last T positions of the sequence, as with a KV cache); needs S >= T.
// Backward: dq [B, H, T, D]; dk, dv [B, Hkv, S, D], summed over the query heads of a kv head.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  // A half-precision KV cache: k and v as fp16 bits (then k and v above are unused). Every
  // kernel widens them to float32 (exactly) before any arithmetic: the result equals the float32
  // kernel's on the widened keys and values, bit for bit.
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
  float* out = nullptr;
  float* lse = nullptr;  // may be null: not wanted
  int64_t batch = 1, heads = 1, kv_heads = 1, t = 0, s = 0, d = 0;
  // Rows allocated per kv head in k and v (>= s): a KV cache [B, Hkv, capacity, D] of which
  // only the first s positions are filled. 0 means s.
  int64_t kv_capacity = 0;
  float scale = 1.0f;
  bool causal = false;
  int64_t kv_rows() const { return kv_capacity ? kv_capacity : s; }
};

struct AttentionBackwardArgs {
  const float* dout = nullptr;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* out = nullptr;
  const float* lse = nullptr;
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  int64_t batch = 1, heads = 1, kv_heads = 1, t = 0, s = 0, d = 0;
  float scale = 1.0f;
  bool causal = false;
};

using AttentionFn = void (*)(const AttentionArgs&);
// n floats -> fp16 bits, rounded to nearest even (numpy's astype(np.float16)): the KV store
using HalfStoreFn = void (*)(const float* x, uint16_t* out, int64_t n);
using AttentionBackwardFn = void (*)(const AttentionBackwardArgs&);

struct AttentionKernels {
  AttentionFn naive;    // version 1: full score matrix per head, plain loops, one thread
  AttentionFn flash;    // version 2: tiled, online softmax, SIMD micro-GEMMs, threads
  AttentionFn decode;   // version 3: few queries (T == 1) against a long KV cache, split-K
  AttentionBackwardFn naive_backward;  // version 1: row by row, plain loops, one thread
  AttentionBackwardFn flash_backward;  // version 2: flash-attention-2 recomputation, threads
  HalfStoreFn to_half;
  const char* flash_description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(AttentionKernels, attention_kernels)
