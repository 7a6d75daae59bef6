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
// CUDA graphs, emulated: between begin_capture and end_capture the launches of this OS thread
// are recorded (with their arguments as they were), not run; launch_graph replays them.
void begin_capture();
uint64_t end_capture();
void launch_graph(uint64_t id);
size_t graph_size(uint64_t id);
void free_graph(uint64_t id);
}  // namespace kg_emu
