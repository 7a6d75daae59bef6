#include "common/threading.h"

#include <atomic>
#include <stdexcept>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace kg {

static int available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

static std::atomic<int> g_num_threads{0};

namespace detail {
thread_local ThreadState tl_thread_state;
}

int num_threads() {
  if (detail::tl_thread_state.serial) return 1;
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  n = available_cpus();
  g_num_threads.store(n, std::memory_order_relaxed);
  return n;
}

void set_num_threads(int n) {
  if (n < 1 || n > 1024)
    throw std::invalid_argument("set_num_threads: n must be between 1 and 1024, got " +
                                std::to_string(n));
  g_num_threads.store(n, std::memory_order_relaxed);
}

}  // namespace kg
