// Small kernels with (and without) the bugs the emulator must catch; tests/test_cuda_emu.py runs
// them through kernelgpt._cuda_emu.selftest(name, ...). Written as CUDA device code, launched
// with kg_emu::launch directly (this file is not a .cu, so nothing rewrites `<<<...>>>`).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_emu/emu.h"

namespace py = pybind11;

namespace {

// out[i] = in[(i + 1) % n] through shared memory; `synced` puts the barrier in between.
__global__ void rotate(const float* in, float* out, int n, bool synced) {
  __shared__ float s[1024];
  kg_emu::poison_shared(&s, sizeof(s));  // what CMake adds to the kernels of csrc/cuda
  int i = threadIdx.x;
  s[i] = in[i];
  if (synced) __syncthreads();
  out[i] = s[(i + 1) % n];
}

__global__ void divergent_sync(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void return_then_sync(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void warp_sum(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

__global__ void shuffle_after_return(const float* in, float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], 1);
}

__global__ void dynamic_shared_sum(const float* in, float* out) {
  float* s = kg_emu::dynamic_shared<float>();
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned j = 0; j < blockDim.x; ++j) t += s[j];
    out[blockIdx.x] = t;
  }
}

const float* in_ptr(const py::array_t<float, py::array::c_style>& a) { return a.data(); }

}  // namespace

void register_selftest(py::module_& m) {
  m.def(
      "selftest",
      [](const std::string& name, py::array_t<float, py::array::c_style> in, int threads,
         int blocks, size_t shared) {
        py::array_t<float> out(std::vector<py::ssize_t>{(py::ssize_t)threads * blocks});
        float* o = out.mutable_data();
        for (py::ssize_t i = 0; i < out.size(); ++i) o[i] = 0.0f;
        const float* x = in_ptr(in);
        if ((py::ssize_t)threads * blocks > in.size())
          throw std::invalid_argument("selftest: `in` needs threads * blocks values");
        if (name == "rotate" || name == "rotate_unsynced")
          kg_emu::launch(rotate, blocks, threads)(x, o, threads, name == "rotate");
        else if (name == "divergent_sync")
          kg_emu::launch(divergent_sync, blocks, threads)(o);
        else if (name == "return_then_sync")
          kg_emu::launch(return_then_sync, blocks, threads)(o);
        else if (name == "warp_sum")
          kg_emu::launch(warp_sum, blocks, threads)(x, o);
        else if (name == "shuffle_after_return")
          kg_emu::launch(shuffle_after_return, blocks, threads)(x, o);
        else if (name == "dynamic_shared_sum")
          kg_emu::launch(dynamic_shared_sum, blocks, threads, shared)(x, o);
        else
          throw std::invalid_argument("selftest: unknown kernel '" + name + "'");
        return out;
      },
      py::arg("name"), py::arg("input"), py::arg("threads"), py::arg("blocks") = 1,
      py::arg("shared") = 0);
}
