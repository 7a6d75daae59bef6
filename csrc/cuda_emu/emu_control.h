// Host-side controls of the CUDA emulator (bound in csrc/cuda_emu/module.cpp).
#pragma once
#include <cstdint>
#include <string>

namespace kg_emu {
// The order in which the fibers of a block run between barriers: "forward" (thread 0 first),
// "reverse" or "shuffle" (a permutation drawn from `seed` and the block's index).
void set_order(const std::string& order, uint64_t seed);
std::string get_order();
}  // namespace kg_emu
