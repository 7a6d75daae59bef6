// embedding: a lookup table of rows, and the scatter-add that is its backward.
//   forward:  out[i, :] = table[ids[i], :]            ids [n], table [V, C], out [n, C]
//   backward: dtable[ids[i], :] += dout[i, :]          dout [n, C], dtable [V, C]
// (ids of any shape are flattened to n by the binding, which also checks 0 <= ids < V.)
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct EmbeddingArgs {
  const int64_t* ids = nullptr;  // [n], every value in [0, V)
  const float* table = nullptr;  // forward: [V, C]
  float* out = nullptr;          // forward: [n, C]
  const float* dout = nullptr;   // backward: [n, C]
  float* dtable = nullptr;       // backward: [V, C]
  int64_t n = 0, vocab = 0, channels = 0;
  bool accumulate = false;  // backward: add into dtable instead of overwriting it
};

using EmbeddingFn = void (*)(const EmbeddingArgs&);

struct EmbeddingKernels {
  EmbeddingFn forward_naive;   // version 1: copy one row per id, one thread
  EmbeddingFn forward_fast;    // version 2: SIMD row copies, ids split over threads
  EmbeddingFn backward_naive;  // version 1: zero, then add one row per id, one thread
  EmbeddingFn backward_fast;   // version 2: threads own disjoint row ranges (race-free)
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(EmbeddingKernels, embedding_kernels)
