// The CUDA emulator's scheduler (see emu.h for the model): one fiber per CUDA thread,
// cooperative switching at barriers, strict checks of what CUDA leaves undefined.
#include "cuda_emu/emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "cuda_emu/emu_control.h"

// ---- fibers: a stack and a saved context each -------------------------------------------------
// On x86-64 a context switch is 20 instructions (save the callee-saved registers, MXCSR and the
// x87 control word on the old stack, swap stack pointers, restore): ~10x faster than
// swapcontext, which makes a system call per switch. Elsewhere: ucontext.
#if defined(__x86_64__)
extern "C" void kg_emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.globl kg_emu_switch
.hidden kg_emu_switch
.type kg_emu_switch,@function
kg_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size kg_emu_switch,.-kg_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

namespace kg_emu {
namespace {

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  const void* stack = nullptr;  // the stack this context runs on (for AddressSanitizer)
  size_t stack_bytes = 0;
};

// AddressSanitizer must be told about every switch of stacks (KG_SANITIZE builds): the
// emulator then runs the CUDA kernels with every out-of-bounds read or write of an array
// reported, which is how tools/sanitize.sh checks them.
#if defined(__SANITIZE_ADDRESS__)
#define KG_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KG_EMU_ASAN 1
#endif
#endif
#if KG_EMU_ASAN
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom,
                                               size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                                size_t* size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#endif

// A fresh context that starts `entry` on `stack` (entry must never return).
void context_start(Context& c, char* stack, size_t bytes, void (*entry)()) {
  c.stack = stack;
  c.stack_bytes = bytes;
#if KG_EMU_ASAN
  // a finished fiber never returns from its frames: their redzones are still marked
  __asan_unpoison_memory_region(stack, bytes);
#endif
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                              // entry's "return address" (it never returns)
  *--sp = reinterpret_cast<void*>(entry);       // where kg_emu_switch's `ret` goes
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp, rbx, r12-r15
  --sp;                                         // MXCSR and the x87 control word
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
  c.sp = sp;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

#if KG_EMU_ASAN
// Tells ASan a switch has landed, and learns the stack it came from when that context's stack
// is not known yet (the scheduler's is the OS thread's own).
void switch_finished(void* fake, Context& came_from) {
  const void* bottom = nullptr;
  size_t bytes = 0;
  __sanitizer_finish_switch_fiber(fake, &bottom, &bytes);
  if (!came_from.stack) came_from.stack = bottom, came_from.stack_bytes = bytes;
}
#endif

// `from` saves where it is; `to` resumes. `finished`: `from` will never run again.
void context_switch(Context& from, Context& to, bool finished = false) {
#if KG_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, to.stack, to.stack_bytes);
#else
  (void)finished;
#endif
#if defined(__x86_64__)
  kg_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if KG_EMU_ASAN
  switch_finished(fake, to);  // back in `from`
#endif
}

// The first thing a new fiber does (it arrives here without returning from context_switch).
void context_entered(Context& came_from) {
#if KG_EMU_ASAN
  switch_finished(nullptr, came_from);
#else
  (void)came_from;
#endif
}

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024, kMaxDynamicShared = 227 * 1024;

enum class State { Ready, Waiting, Done };

struct Barrier {
  unsigned expected = 0, arrived = 0, mask = 0;
  uint64_t generation = 0;
};

struct Fiber {
  Context context;
  uint3 tid;
  unsigned linear = 0;
  State state = State::Ready;
  const Barrier* waiting_on = nullptr;
  uint64_t waiting_generation = 0;
};

struct Block {
  dim3 grid, block;
  uint3 bid;
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<unsigned char> slots;  // [warps][32][16] exchange deposits
  std::vector<unsigned> warp_live;   // lanes of each warp that have not returned
  unsigned exited = 0;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  Context scheduler;
  std::string error;
  std::vector<unsigned char> dynamic_shared;  // 128 bytes more than asked, for alignment
  unsigned char* dynamic_base() {
    uintptr_t at = reinterpret_cast<uintptr_t>(dynamic_shared.data());
    return dynamic_shared.data() + ((128 - at % 128) % 128);
  }
};

// Per OS thread (each Python thread that launches gets its own emulator state).
thread_local Block* g_block = nullptr;
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;
thread_local std::string g_last_error;
thread_local uint64_t g_block_serial = 0;  // counts blocks run on this OS thread
thread_local std::map<void*, uint64_t> g_poisoned;
std::string g_order = "forward";
uint64_t g_seed = 0;
std::map<const void*, size_t> g_max_dynamic_shared;
unsigned g_workers = 0;  // OS threads running blocks; 0: one per CPU, at most 8

unsigned default_workers() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : std::min(n, 8u);
}

Block& block() {
  if (!g_block) throw std::runtime_error("cuda emulator: a device function ran outside a kernel");
  return *g_block;
}

std::string where(const Block& b, const Fiber* f) {
  std::string s = "block (" + std::to_string(b.bid.x) + ", " + std::to_string(b.bid.y) + ", " +
                  std::to_string(b.bid.z) + ")";
  if (f)
    s += " thread (" + std::to_string(f->tid.x) + ", " + std::to_string(f->tid.y) + ", " +
         std::to_string(f->tid.z) + ")";
  return s;
}

// Back to the scheduler until the barrier's generation moves on.
void wait(Block& b, Barrier& bar) {
  Fiber* f = b.current;
  f->state = State::Waiting;
  f->waiting_on = &bar;
  f->waiting_generation = bar.generation;
  context_switch(f->context, b.scheduler);
}

void arrive(Block& b, Barrier& bar) {
  if (++bar.arrived == bar.expected) {
    bar.arrived = 0;
    bar.mask = 0;
    ++bar.generation;
    // The waiters are released; this thread goes back to the scheduler too, so that it does
    // not always run ahead of them (a GPU would not order it first).
    context_switch(b.current->context, b.scheduler);
  } else {
    wait(b, bar);
  }
}

void fiber_main() {
  Block& b = *g_block;
  context_entered(b.scheduler);
  Fiber* f = b.current;
  try {
    (*b.body)();
    if (b.block_barrier.arrived > 0)
      fail("returned while " + std::to_string(b.block_barrier.arrived) +
           " other threads wait at __syncthreads() (on a GPU: a hang or undefined)");
    unsigned warp = f->linear / 32, lane = f->linear % 32;
    const Barrier& wb = b.warp_barriers[warp];
    if (wb.arrived > 0 && (wb.mask >> lane & 1u))
      fail("returned while other lanes wait for it in a warp shuffle / sync (mask 0x" +
           [](unsigned m) {
             char buf[16];
             std::snprintf(buf, sizeof buf, "%08x", m);
             return std::string(buf);
           }(wb.mask) + ")");
    b.warp_live[warp] &= ~(1u << lane);
    ++b.exited;
  } catch (const std::exception& e) {
    if (b.error.empty()) b.error = e.what();
  } catch (...) {
    if (b.error.empty()) b.error = "cuda emulator: a kernel threw a non-standard exception";
  }
  f->state = State::Done;
  context_switch(f->context, b.scheduler, true);  // never resumed
  std::abort();
}

std::vector<unsigned> schedule_order(unsigned n, uint64_t block_serial) {
  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  if (g_order == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (g_order == "shuffle") {
    std::mt19937_64 gen(g_seed * 1000003u + block_serial);
    std::shuffle(order.begin(), order.end(), gen);
  }
  return order;
}

void run_block(Block& b, uint64_t serial) {
  ++g_block_serial;
  unsigned n = b.threads;
  while (g_stacks.size() < n) g_stacks.emplace_back(new char[kStackBytes]);
  b.fibers.assign(n, Fiber());
  unsigned warps = (n + 31) / 32;
  b.warp_barriers.assign(warps, Barrier());
  b.warp_live.assign(warps, 0);
  b.slots.assign((size_t)warps * 32 * 16, 0);
  b.block_barrier = Barrier();
  b.block_barrier.expected = n;
  b.exited = 0;
  b.error.clear();
  std::memset(b.dynamic_shared.data(), 0xff, b.dynamic_shared.size());
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.tid = {i % b.block.x, i / b.block.x % b.block.y, i / (b.block.x * b.block.y)};
    b.warp_live[i / 32] |= 1u << (i % 32);
    context_start(f.context, g_stacks[i].get(), kStackBytes, fiber_main);
  }
  std::vector<unsigned> order = schedule_order(n, serial);
  unsigned done = 0;
  while (done < n) {
    bool progressed = false;
    done = 0;
    for (unsigned i : order) {
      Fiber& f = b.fibers[i];
      if (f.state == State::Waiting && f.waiting_on->generation != f.waiting_generation)
        f.state = State::Ready;
      if (f.state == State::Ready) {
        b.current = &f;
        context_switch(b.scheduler, f.context);
        b.current = nullptr;
        progressed = true;
        if (!b.error.empty()) throw std::runtime_error(b.error);  // the other fibers are dropped
      }
      if (f.state == State::Done) ++done;
    }
    if (!progressed && done < n) {
      std::string who;
      for (Fiber& f : b.fibers)
        if (f.state == State::Waiting) {
          who = where(b, &f);
          break;
        }
      std::string msg = "cuda emulator: deadlock in " + where(b, nullptr) + ": " + who +
                        " waits at a barrier that can never complete";
      throw std::runtime_error(msg);
    }
  }
}

}  // namespace

// ---- what kernels call -------------------------------------------------------------------------

const uint3& thread_idx() { return block().current->tid; }
const uint3& block_idx() { return block().bid; }
const dim3& block_dim() { return block().block; }
const dim3& grid_dim() { return block().grid; }
unsigned lane_id() { return block().current->linear % 32; }
void* dynamic_shared_bytes() { return block().dynamic_base(); }  // 128-byte aligned

void poison_shared(void* address, size_t bytes) {
  block();  // only inside a kernel
  uint64_t& at = g_poisoned[address];
  if (at != g_block_serial) {
    std::memset(address, 0xff, bytes);
    at = g_block_serial;
  }
}

void fail(const std::string& what) {
  Block& b = block();
  throw std::runtime_error("cuda emulator: " + where(b, b.current) + ": " + what);
}

void sync_block() {
  Block& b = block();
  if (b.exited > 0)
    fail("__syncthreads() reached after " + std::to_string(b.exited) +
         " threads of the block returned (on a GPU: a hang or undefined)");
  arrive(b, b.block_barrier);
}

void exchange(unsigned mask, const void* mine, size_t size, void* all) {
  Block& b = block();
  Fiber* f = b.current;
  unsigned warp = f->linear / 32, lane = f->linear % 32;
  if (!(mask >> lane & 1u)) fail("a warp shuffle / sync with a mask that leaves out the caller");
  unsigned exists = warp == (b.threads - 1) / 32 && b.threads % 32
                        ? (1u << (b.threads % 32)) - 1u
                        : 0xffffffffu;
  if (mask & ~exists)
    fail("a warp shuffle / sync names lanes that do not exist (a block of " +
         std::to_string(b.threads) + " threads has a partial last warp)");
  if (mask & ~b.warp_live[warp]) fail("a warp shuffle / sync names lanes that have returned");
  Barrier& bar = b.warp_barriers[warp];
  if (bar.arrived > 0 && bar.mask != mask)
    fail("lanes of one warp meet at shuffles / syncs with different masks");
  bar.mask = mask;
  bar.expected = (unsigned)__builtin_popcount(mask);
  unsigned char* slots = b.slots.data() + (size_t)warp * 32 * 16;
  std::memcpy(slots + lane * 16, mine, size);
  arrive(b, bar);  // every lane of the mask has deposited
  unsigned char* out = static_cast<unsigned char*>(all);
  for (unsigned l = 0; l < 32; ++l) {
    if (mask >> l & 1u)
      std::memcpy(out + l * size, slots + l * 16, size);
    else
      std::memset(out + l * size, 0xff, size);  // NaN bytes
  }
  bar.mask = mask;
  arrive(b, bar);  // every lane has read before the slots are reused
}

namespace {
struct RecordedLaunch {
  const void* kernel;
  dim3 grid, block;
  size_t shared;
  std::function<void()> body;
};
thread_local std::vector<RecordedLaunch>* g_capture = nullptr;
std::mutex g_graphs_mutex;
std::map<uint64_t, std::vector<RecordedLaunch>> g_graphs;
uint64_t g_next_graph = 1;
}  // namespace

void run_grid(const void* kernel, dim3 grid, dim3 blk, size_t shared,
              std::function<void()> body) {
  if (g_capture) {  // a CUDA graph being captured: the launch is recorded, not run
    g_capture->push_back({kernel, grid, blk, shared, std::move(body)});
    return;
  }
  auto bad = [](const std::string& what) {
    g_last_error = what;
    throw std::runtime_error("cuda emulator: invalid launch: " + what);
  };
  uint64_t threads = (uint64_t)blk.x * blk.y * blk.z;
  if (threads == 0 || (uint64_t)grid.x * grid.y * grid.z == 0)
    bad("a grid or block dimension is 0");
  if (threads > 1024 || blk.z > 64) bad("more than 1024 threads per block (or block z > 64)");
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    bad("grid dimensions above (2^31 - 1, 65535, 65535)");
  size_t limit = kDefaultDynamicShared;
  auto it = g_max_dynamic_shared.find(kernel);
  if (it != g_max_dynamic_shared.end()) limit = it->second;
  if (shared > limit)
    bad(std::to_string(shared) + " bytes of dynamic shared memory, the limit is " +
        std::to_string(limit) + " (raise it with cudaFuncSetAttribute, at most 227 KiB)");
  if (g_block) bad("a kernel launched from inside a kernel");
  // Blocks are independent (as on a GPU): worker threads take them in turn, each with its own
  // Block state, fiber stacks and copies of the static __shared__ variables (thread_local).
  uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
  unsigned workers =
      (unsigned)std::min<uint64_t>(blocks, g_workers ? g_workers : default_workers());
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string first_error;
  auto work = [&]() {
    Block b;
    b.grid = grid;
    b.block = blk;
    b.threads = (unsigned)threads;
    b.body = &body;
    b.dynamic_shared.resize(shared + 128);
    g_block = &b;
    try {
      for (uint64_t s; !failed.load() && (s = next.fetch_add(1)) < blocks;) {
        b.bid = {(unsigned)(s % grid.x), (unsigned)(s / grid.x % grid.y),
                 (unsigned)(s / ((uint64_t)grid.x * grid.y))};
        run_block(b, s);
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (first_error.empty()) first_error = e.what();
      failed = true;
    }
    g_block = nullptr;
  };
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (failed) throw std::runtime_error(first_error);
}

void begin_capture() {
  if (g_capture) throw std::runtime_error("cuda emulator: a capture is already under way");
  g_capture = new std::vector<RecordedLaunch>();
}

uint64_t end_capture() {
  if (!g_capture) throw std::runtime_error("cuda emulator: end_capture without begin_capture");
  std::unique_ptr<std::vector<RecordedLaunch>> launches(g_capture);
  g_capture = nullptr;
  std::lock_guard<std::mutex> lock(g_graphs_mutex);
  uint64_t id = g_next_graph++;
  g_graphs[id] = std::move(*launches);
  return id;
}

void launch_graph(uint64_t id) {
  std::vector<RecordedLaunch>* launches;
  {
    std::lock_guard<std::mutex> lock(g_graphs_mutex);
    auto it = g_graphs.find(id);
    if (it == g_graphs.end()) throw std::runtime_error("cuda emulator: no such graph");
    launches = &it->second;
  }
  for (const RecordedLaunch& l : *launches) run_grid(l.kernel, l.grid, l.block, l.shared, l.body);
}

size_t graph_size(uint64_t id) {
  std::lock_guard<std::mutex> lock(g_graphs_mutex);
  auto it = g_graphs.find(id);
  return it == g_graphs.end() ? 0 : it->second.size();
}

void free_graph(uint64_t id) {
  std::lock_guard<std::mutex> lock(g_graphs_mutex);
  g_graphs.erase(id);
}

void set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || (size_t)bytes > kMaxDynamicShared)
    throw std::runtime_error("cuda emulator: cudaFuncSetAttribute: at most 227 KiB of dynamic "
                             "shared memory per block");
  g_max_dynamic_shared[kernel] = (size_t)bytes;
}

void set_order(const std::string& order, uint64_t seed) {
  if (order != "forward" && order != "reverse" && order != "shuffle")
    throw std::invalid_argument("cuda emulator: order must be 'forward', 'reverse' or 'shuffle', "
                                "got '" + order + "'");
  g_order = order;
  g_seed = seed;
}
std::string get_order() { return g_order; }

void set_workers(unsigned n) {
  if (n > 256) throw std::invalid_argument("cuda emulator: at most 256 workers");
  g_workers = n;
}
unsigned get_workers() { return g_workers ? g_workers : default_workers(); }

}  // namespace kg_emu

const char* cudaGetErrorString(cudaError_t err) {
  return err == cudaSuccess ? "no error" : "cuda emulator error";
}
cudaError_t cudaGetLastError() { return cudaSuccess; }  // launch errors throw instead
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
