#include "common/pool.h"

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "common/threading.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define KG_PAUSE() _mm_pause()
#else
#define KG_PAUSE() ((void)0)
#endif

namespace kg {

namespace {

using Clock = std::chrono::steady_clock;

// How long an idle worker spins for the next loop before it sleeps: longer than the gaps
// between a token's loops and between tokens (Python's sampling), short enough that a worker
// of an idle model gives its core back at once.
constexpr auto kSpin = std::chrono::microseconds(200);

constexpr uint64_t kIndexMask = 0xffffffffu;

// Runs with detail::tl_thread_state.serial set (kernels inside a chunk see one thread).
struct SerialScope {
  bool previous;
  SerialScope() : previous(detail::tl_thread_state.serial) { detail::tl_thread_state.serial = true; }
  ~SerialScope() { detail::tl_thread_state.serial = previous; }
};

}  // namespace

ChunkPool::ChunkPool(int threads) {
  if (threads < 1 || threads > 1024)
    throw std::invalid_argument("ChunkPool: threads must be between 1 and 1024, got " +
                                std::to_string(threads));
  workers_.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
}

ChunkPool::~ChunkPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_seq_cst);
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ChunkPool::finish_chunk(uint64_t gen) {
  uint64_t d = done_.load(std::memory_order_acquire);
  while ((d >> 32) == gen &&
         !done_.compare_exchange_weak(d, d + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
  }
}

int64_t ChunkPool::work(uint64_t ticket, bool skip) {
  const uint64_t gen = ticket >> 32;
  // The loop's fields are those of `gen` for as long as one of its chunks is unfinished, so
  // they are valid whenever the claim below succeeds (a claim fails once the generation moves).
  Body body = body_.load(std::memory_order_relaxed);
  void* ctx = ctx_.load(std::memory_order_relaxed);
  const int64_t n = n_.load(std::memory_order_relaxed), chunk = chunk_.load(std::memory_order_relaxed);
  const int64_t chunks = chunks_.load(std::memory_order_relaxed);
  int64_t ran = 0;
  for (;;) {
    if ((ticket >> 32) != gen) return ran;
    const int64_t i = static_cast<int64_t>(ticket & kIndexMask);
    if (i >= chunks) return ran;
    if (!ticket_.compare_exchange_weak(ticket, ticket + 1, std::memory_order_acq_rel,
                                       std::memory_order_acquire))
      continue;  // ticket now holds the current value
    const int64_t begin = i * chunk, end = begin + chunk < n ? begin + chunk : n;
    if (!skip) body(ctx, begin, end);
    ++ran;
    finish_chunk(gen);
    ticket = ticket_.load(std::memory_order_acquire);
  }
}

void ChunkPool::worker_main() {
  detail::tl_thread_state.serial = true;  // kernels in a worker's chunks run on one thread
  uint64_t seen = ticket_.load(std::memory_order_acquire) >> 32;
  for (;;) {
    // spin for the next generation, then sleep
    uint64_t t = ticket_.load(std::memory_order_acquire);
    const auto until = Clock::now() + kSpin;
    for (int spins = 0; (t >> 32) == seen && !stop_.load(std::memory_order_relaxed); ++spins) {
      KG_PAUSE();
      if ((spins & 63) == 63 && Clock::now() > until) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] {
          return stop_.load(std::memory_order_seq_cst) ||
                 (ticket_.load(std::memory_order_seq_cst) >> 32) != seen;
        });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      t = ticket_.load(std::memory_order_acquire);
    }
    if (stop_.load(std::memory_order_relaxed)) return;
    seen = t >> 32;
    const int64_t ran = work(t);
    if (ran) worker_chunks_.fetch_add(ran, std::memory_order_relaxed);
  }
}

void ChunkPool::run(int64_t n, int64_t chunk, Body body, void* ctx) {
  if (n <= 0) return;
  if (chunk < 1) chunk = 1;
  ++stats_.loops;
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (workers_.empty() || chunks == 1 || solo_left_ > 0 || forced_solo_) {
    if ((solo_left_ > 0 || forced_solo_) && chunks > 1) {
      if (solo_left_ > 0) --solo_left_;
      ++stats_.solo_loops;
    }
    SerialScope serial;
    body(ctx, 0, n);
    return;
  }
  if (chunks > static_cast<int64_t>(kIndexMask))
    throw std::invalid_argument("ChunkPool.run: too many chunks");
  // publish the loop: fields first, then the new generation
  body_.store(body, std::memory_order_relaxed);
  ctx_.store(ctx, std::memory_order_relaxed);
  n_.store(n, std::memory_order_relaxed);
  chunk_.store(chunk, std::memory_order_relaxed);
  chunks_.store(chunks, std::memory_order_relaxed);
  const uint64_t gen = (ticket_.load(std::memory_order_relaxed) >> 32) + 1;
  done_.store(gen << 32, std::memory_order_relaxed);
  ticket_.store(gen << 32, std::memory_order_seq_cst);
  const uint64_t all_done = (gen << 32) | static_cast<uint64_t>(chunks);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  int64_t mine = 0;
  try {
    SerialScope serial;
    mine = work(gen << 32);
  } catch (...) {
    // The body threw: hand out no more chunks, wait for the workers' (they use the caller's
    // stack), then let the exception go on.
    work(ticket_.load(std::memory_order_acquire), true);
    while (done_.load(std::memory_order_acquire) != all_done) std::this_thread::yield();
    throw;
  }
  stats_.caller_chunks += mine;
  if (done_.load(std::memory_order_acquire) == all_done) {
    if (++clean_loops_ >= 16 * kMinSolo) solo_next_ = kMinSolo;  // a quiet stretch: forgive
    return;
  }
  // Wait for chunks that workers hold. A worker that lost its core mid-chunk makes this wait
  // last a scheduler time slice: notice it and go solo for a while.
  const auto start = Clock::now();
  bool lagged = false, reported = false;
  for (int spins = 0; done_.load(std::memory_order_acquire) != all_done; ++spins) {
    KG_PAUSE();
    if ((spins & 255) == 255) {
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (waited > kLagWait) {
        lagged = true;
        std::this_thread::yield();  // the lagging worker may be waiting for this very core
      }
      if (waited > 10.0 && !reported) {  // never seen since the counts carry generations
        reported = true;
        const uint64_t d = done_.load(), t = ticket_.load();
        std::fprintf(stderr,
                     "kernelgpt ChunkPool: waited 10 s for a loop's chunks (generation %llu: "
                     "%llu of %lld done, ticket %llu:%llu, %d sleeping of %d workers); please "
                     "report this\n",
                     (unsigned long long)gen, (unsigned long long)(d & kIndexMask),
                     (long long)chunks, (unsigned long long)(t >> 32),
                     (unsigned long long)(t & kIndexMask), sleepers_.load(),
                     (int)workers_.size());
      }
    }
  }
  stats_.wait_s += std::chrono::duration<double>(Clock::now() - start).count();
  if (lagged) {
    ++stats_.lag_events;
    solo_left_ = solo_next_;
    solo_next_ = solo_next_ * 2 < kMaxSolo ? solo_next_ * 2 : kMaxSolo;
    clean_loops_ = 0;
  } else if (++clean_loops_ >= 16 * kMinSolo) {
    solo_next_ = kMinSolo;
  }
}

ChunkPool::Stats ChunkPool::stats() const {
  Stats s = stats_;
  s.worker_chunks = worker_chunks_.load(std::memory_order_relaxed);
  return s;
}

ScopedPool::ScopedPool(ChunkPool* pool) : previous_(detail::tl_thread_state.pool) {
  detail::tl_thread_state.pool = pool;
}

ScopedPool::~ScopedPool() { detail::tl_thread_state.pool = previous_; }

namespace detail {

void pool_for(ChunkPool* pool, int64_t n, int64_t chunk, void (*body)(void*, int64_t, int64_t),
              void* ctx) {
  // at least the caller's minimum; at most ~8 chunks per thread for a long loop (each chunk
  // is one atomic claim, and contiguous rows keep the hardware prefetcher streaming)
  const int64_t few = n / (8 * pool->threads());
  pool->run(n, chunk > few ? chunk : few, body, ctx);
}

}  // namespace detail

}  // namespace kg
