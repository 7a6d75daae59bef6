// Host-side launchers of the CUDA kernels. Pointers are device pointers (CuPy arrays'
// data.ptr); `stream` is a cudaStream_t (CuPy's current stream) passed as an integer so that
// the bindings do not need CUDA headers. Launch errors throw std::runtime_error.
#pragma once
#include <cstdint>

namespace kg {
namespace cuda {

int device_count();  // 0 when there is no driver or no GPU

// version 0: naive (one thread per output), 1: shared-memory tiled.
void matmul(int version, const float* a, const float* b, const float* bias, float* c,
            int64_t batch, int64_t m, int64_t n, int64_t k, int64_t batch_stride_a,
            int64_t batch_stride_b, int64_t batch_stride_c, bool trans_a, bool trans_b,
            bool accumulate, uintptr_t stream);

// Softmax (or log-softmax) over rows of length cols; rows are grouped into matrices of
// t rows for the causal mask (row i of a matrix keeps columns j <= i + cols - t).
// version 0: one thread per row, 1: one block per row with warp reductions, online max/sum.
void softmax(int version, const float* x, float* y, int64_t rows, int64_t cols, int64_t t,
             float scale, bool causal, bool log, uintptr_t stream);

}  // namespace cuda
}  // namespace kg
