// Each kernel family registers its Python functions from its own file in csrc/bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <string>

namespace kg {
namespace bind {

void register_system(pybind11::module_& m);
void register_matmul(pybind11::module_& m);
void register_peak(pybind11::module_& m);
void register_cuda(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_norm(pybind11::module_& m);
void register_activation(pybind11::module_& m);
void register_embedding(pybind11::module_& m);
void register_rope(pybind11::module_& m);
void register_adamw(pybind11::module_& m);
void register_softmax(pybind11::module_& m);
void register_cross_entropy(pybind11::module_& m);
void register_bpe(pybind11::module_& m);
void register_gguf(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_model(pybind11::module_& m);
void register_sampling(pybind11::module_& m);
void register_bf16(pybind11::module_& m);

// Throws ValueError unless `version` is one of `names` (used to pick naive / fast kernels).
int version_index(const std::string& version, std::initializer_list<const char*> names,
                  const char* fn);

}  // namespace bind
}  // namespace kg
