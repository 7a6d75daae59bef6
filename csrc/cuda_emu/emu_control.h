// Host-side controls of the CUDA emulator (bound in csrc/cuda_emu/module.cpp).
#pragma once
#include <cstdint>
#include <string>

namespace kg_emu {
// The order in which the fibers of a block run between barriers: "forward" (thread 0 first),
// "reverse" or "shuffle" (a permutation drawn from `seed` and the block's index).
void set_order(const std::string& order, uint64_t seed);
std::string get_order();
// OS threads that run blocks in parallel (0: one per CPU, at most 8). Blocks are independent on
// a GPU, so this changes nothing but speed (and the order of atomics between blocks).
void set_workers(unsigned n);
unsigned get_workers();
}  // namespace kg_emu
