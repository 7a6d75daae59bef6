// Embedding lookup and its scatter-add backward on the GPU.
//
// Versions as in python/kernelgpt/kernels/embedding.py:
// forward version 1 "naive" (the only one on the GPU): one thread per output element (row
//            ids[i], column c): coalesced.
// backward version 1 "naive": scatter: one thread per dout element, atomicAdd into its table
//            row. Simple and fast, but float additions land in whatever order the threads
//            arrive: not bit-reproducible when ids repeat.
// backward version 2 "fast" (backend="sorted"): deterministic: the positions sorted by id (a
//            stable argsort done by the caller) form one run per id; the thread at the start
//            of a run sums the run in position order, exactly the order of the CPU kernels.
// Ids outside [0, vocab) (the Python side rejects them first) are skipped: never an
// out-of-bounds access (forward rows get NaN).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

__global__ void embedding_forward(const int64_t* ids, const float* table, float* out, int64_t n,
                                  int64_t vocab, int64_t c) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * c;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = e / c, j = e % c, id = ids[i];
    out[e] = (id >= 0 && id < vocab) ? table[id * c + j] : NAN;
  }
}

__global__ void embedding_backward_atomic(const float* dout, const int64_t* ids, float* dtable,
                                          int64_t n, int64_t vocab, int64_t c) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * c;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = e / c, j = e % c, id = ids[i];
    if (id >= 0 && id < vocab) atomicAdd(&dtable[id * c + j], dout[e]);
  }
}

// Element e = (k, j): k indexes the sorted order. Only the first k of each id's run works.
__global__ void embedding_backward_sorted(const float* dout, const int64_t* ids,
                                          const int64_t* order, float* dtable, int64_t n,
                                          int64_t vocab, int64_t c) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * c;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t k = e / c, j = e % c, id = ids[order[k]];
    if (id < 0 || id >= vocab || (k > 0 && ids[order[k - 1]] == id)) continue;
    float sum = dtable[id * c + j];  // accumulate=True starts from the caller's values
    for (; k < n && ids[order[k]] == id; ++k) sum += dout[order[k] * c + j];
    dtable[id * c + j] = sum;
  }
}

void embedding(int, const int64_t* ids, const float* table, float* out, int64_t n, int64_t vocab,
               int64_t c, uintptr_t stream) {
  embedding_forward<<<grid_for(n * c, 256), 256, 0, as_stream(stream)>>>(ids, table, out, n,
                                                                          vocab, c);
  check(cudaGetLastError(), "embedding (cuda) launch");
}

void embedding_backward(int version, const float* dout, const int64_t* ids, const int64_t* order,
                        float* dtable, int64_t n, int64_t vocab, int64_t c, uintptr_t stream) {
  unsigned blocks = grid_for(n * c, 256);
  if (version == 1)
    embedding_backward_atomic<<<blocks, 256, 0, as_stream(stream)>>>(dout, ids, dtable, n, vocab,
                                                                      c);
  else
    embedding_backward_sorted<<<blocks, 256, 0, as_stream(stream)>>>(dout, ids, order, dtable, n,
                                                                      vocab, c);
  check(cudaGetLastError(), "embedding_backward (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
