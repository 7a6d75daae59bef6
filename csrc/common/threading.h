// Threads: one process-wide thread count (set_num_threads), static partitions so that a
// given thread count always splits work the same way (deterministic results). A thread that
// holds a ScopedPool (pool.h) runs its parallel_for loops on that pool's dynamic chunks
// instead; kernels compute each output the same way whatever range it falls in, so the
// results are the same.
#pragma once
#include <cstdint>

#if KG_HAVE_OPENMP || defined(_OPENMP)
#include <omp.h>
#endif

namespace kg {

class ChunkPool;

namespace detail {
struct ThreadState {
  ChunkPool* pool = nullptr;  // parallel_for runs on this pool (ScopedPool)
  bool serial = false;        // inside a pool chunk: one thread, nested loops run serially
};
extern thread_local ThreadState tl_thread_state;
// body(ctx, begin, end) over [0, n) on `pool`, in chunks of `chunk` items.
void pool_for(ChunkPool* pool, int64_t n, int64_t chunk, void (*body)(void*, int64_t, int64_t),
              void* ctx);
}  // namespace detail

int num_threads();            // defaults to the CPUs this process may run on
void set_num_threads(int n);  // throws std::invalid_argument unless 1 <= n <= 1024

// Runs f(thread_index, thread_count) on `threads` threads (the caller is thread 0).
template <class F>
inline void parallel_region(int threads, F&& f) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    f(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  f(0, 1);
}

// How many threads are worth using for `work` units when each thread needs at least
// `min_work_per_thread` of them to pay for waking it.
inline int threads_for(int64_t work, int64_t min_work_per_thread) {
  int nt = num_threads();
  if (min_work_per_thread < 1) min_work_per_thread = 1;
  int64_t useful = work / min_work_per_thread;
  if (useful < nt) nt = useful < 1 ? 1 : static_cast<int>(useful);
  return nt;
}

// Calls f(begin, end) on contiguous, equal slices of [0, n).
template <class F>
inline void parallel_for(int64_t n, int64_t min_per_thread, F&& f) {
  const detail::ThreadState& ts = detail::tl_thread_state;
  if (ts.pool && !ts.serial) {
    auto body = [&f](int64_t b, int64_t e) { f(b, e); };
    if (n > 0)
      detail::pool_for(ts.pool, n, min_per_thread, [](void* c, int64_t b, int64_t e) {
        (*static_cast<decltype(body)*>(c))(b, e);
      }, &body);
    return;
  }
  int nt = threads_for(n, min_per_thread);
  parallel_region(nt, [&](int t, int count) {
    int64_t begin = n * t / count, end = n * (t + 1) / count;
    if (begin < end) f(begin, end);
  });
}

}  // namespace kg
