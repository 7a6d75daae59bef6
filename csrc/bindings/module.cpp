// kernelgpt._C: validate arguments -> release the GIL -> call the kernel for this CPU.
#include "bindings/registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "kernelgpt native kernels (C++, runtime-dispatched SIMD, OpenMP threads)";
  kg::bind::register_system(m);
  kg::bind::register_matmul(m);
  kg::bind::register_peak(m);
  kg::bind::register_cuda(m);
  kg::bind::register_attention(m);
  kg::bind::register_norm(m);
  kg::bind::register_activation(m);
  kg::bind::register_embedding(m);
  kg::bind::register_rope(m);
  kg::bind::register_adamw(m);
  kg::bind::register_softmax(m);
  kg::bind::register_ssm(m);
  kg::bind::register_cross_entropy(m);
  kg::bind::register_bpe(m);
  kg::bind::register_gguf(m);
  kg::bind::register_quant(m);
  kg::bind::register_model(m);
  kg::bind::register_sampling(m);
  kg::bind::register_bf16(m);
}
