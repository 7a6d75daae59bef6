// CUDA launchers for CuPy arrays. Python (kernelgpt/_cuda.py) checks the arrays and passes
// raw device pointers and CuPy's current stream; nothing here touches host memory.
#include "bindings/args.h"
#include "bindings/registry.h"

#if KG_HAVE_CUDA
#include "cuda/cuda_kernels.h"
#endif

namespace kg {
namespace bind {

void register_cuda(py::module_& m) {
#if KG_HAVE_CUDA
  m.def("cuda_device_count", &cuda::device_count);
  m.def(
      "cuda_matmul",
      [](int version, uintptr_t a, uintptr_t b, uintptr_t bias, uintptr_t c, int64_t batch,
         int64_t mm, int64_t n, int64_t k, int64_t sa, int64_t sb, int64_t sc, bool trans_a,
         bool trans_b, bool accumulate, uintptr_t stream) {
        cuda::matmul(version, reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b),
                     reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(c), batch, mm,
                     n, k, sa, sb, sc, trans_a, trans_b, accumulate, stream);
      });
  m.def("cuda_softmax", [](int version, uintptr_t x, uintptr_t y, int64_t rows, int64_t cols,
                           int64_t t, float scale, bool causal, bool log, uintptr_t stream) {
    cuda::softmax(version, reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), rows,
                  cols, t, scale, causal, log, stream);
  });
#else
  (void)m;
#endif
}

}  // namespace bind
}  // namespace kg
