// Rotary position embedding (RoPE) on the GPU, both layouts (formulas in ops.rope).
//
// version 1 "naive" (python/kernelgpt/kernels/rope.py; the only one on the GPU, the kernel is
//            memory-bound already): one thread per rotated pair (row, i). As on the CPU the
//            angle p * base^(-2i/rd) is formed in float64 and only its sin / cos are rounded
//            to float32, so position 1e6 is as accurate as 1. Columns rd..d-1 are copied by
//            the threads of the last pairs of each row.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

struct RopeArgs {
  const float* x;
  float* y;
  const int64_t* positions;
  int64_t offset;
  double base;
  bool interleaved, inverse;
  int64_t rd, rows, t, d;
};

__global__ void rope_pairs(RopeArgs p) {
  int64_t half = p.rd / 2, per_row = half + (p.d - p.rd);  // pairs + passed-through columns
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < p.rows * per_row;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = e / per_row, i = e % per_row;
    const float* x = p.x + r * p.d;
    float* y = p.y + r * p.d;
    if (i >= half) {  // a column past rotary_dim: copied
      int64_t j = p.rd + (i - half);
      y[j] = x[j];
      continue;
    }
    int64_t t = r % p.t;
    double pos = (double)(p.positions ? p.positions[t] : p.offset + t);
    double angle = pos * pow(p.base, -2.0 * (double)i / (double)p.rd);
    double s, c;
    sincos(angle, &s, &c);
    float cs = (float)c, sn = p.inverse ? -(float)s : (float)s;
    int64_t j1 = p.interleaved ? 2 * i : i, j2 = p.interleaved ? 2 * i + 1 : i + half;
    float x1 = x[j1], x2 = x[j2];
    y[j1] = x1 * cs - x2 * sn;
    y[j2] = x2 * cs + x1 * sn;
  }
}

void rope(int, const float* x, float* y, const int64_t* positions, int64_t offset, double base,
          bool interleaved, int64_t rotary_dim, bool inverse, int64_t rows, int64_t t, int64_t d,
          uintptr_t stream) {
  RopeArgs p{x, y, positions, offset, base, interleaved, inverse, rotary_dim, rows, t, d};
  int64_t work = rows * (rotary_dim / 2 + d - rotary_dim);
  rope_pairs<<<grid_for(work, 256), 256, 0, as_stream(stream)>>>(p);
  check(cudaGetLastError(), "rope (cuda) launch");
}

}  // namespace cuda
}  // namespace kg
