// Activation names as the Python API spells them, shared by the bindings that take one.
#pragma once
#include <string>

#include "kernels/activation.h"

namespace kg {
namespace bind {

// "relu", "sigmoid", "tanh", "silu", or "gelu" with approximate "tanh" / "none"; ValueError
// naming fn otherwise.
Activation parse_activation(const std::string& name, const std::string& approximate,
                            const std::string& fn);

}  // namespace bind
}  // namespace kg
