// Each kernel family registers its Python functions from its own file in csrc/bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <stdexcept>
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
void register_ssm(pybind11::module_& m);

// One version of a kernel: its number in the family's table (the Versions(...) of
// python/kernelgpt/kernels/<family>.py, the one numbering of C++, CUDA and backend= names)
// and its name there.
struct VersionName {
  int number;
  const char* name;
};

// Returns `version` if it is one of `versions` (the numbers this binding or launcher runs);
// otherwise throws ValueError naming them, e.g. "matmul: unknown version 3 for the C++ kernel,
// expected one of 1 (naive), 5 (blocked)". `processor` is "C++" or "CUDA". Inline and
// std::invalid_argument (pybind11 turns it into ValueError), because the CUDA emulator module
// compiles csrc/bindings/cuda.cpp without the rest of _C.
inline int check_version(const char* fn, int version, std::initializer_list<VersionName> versions,
                         const char* processor = "C++") {
  std::string known;
  for (const VersionName& v : versions) {
    if (v.number == version) return version;
    known += (known.empty() ? "" : ", ") + std::to_string(v.number) + " (" + v.name + ")";
  }
  throw std::invalid_argument(std::string(fn) + ": unknown version " + std::to_string(version) +
                              " for the " + processor + " kernel, expected one of " + known);
}

}  // namespace bind
}  // namespace kg
