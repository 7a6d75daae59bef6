// ChunkPool: persistent threads for many short parallel steps, the decode runner's ~120
// matrix-vector products per token.
//
// OpenMP splits a parallel loop into static halves and ends it at a barrier. When another
// process holds one of the cores, every one of a token's ~120 loops waits at its barrier for
// a thread that is not running, and decode falls to a tenth of its one-thread speed. Here a
// loop is cut into chunks handed out one at a time from an atomic counter; the caller takes
// chunks too and returns as soon as every chunk is done. It never waits for a worker to arrive:
// a worker that has no core takes no chunks, and the caller does them.
//
// It can still wait for a chunk that a worker took and then lost its core in the middle of.
// When such a wait passes kLagWait the pool notices the lagging worker and runs the next loops
// on the caller alone (the workers sleep, so the caller keeps a core to itself), then tries the
// workers again; the solo stretch doubles each time the lag persists. A caller can also ask
// for solo loops outright (set_solo): the decode runner does when its own timings of the two
// ways say so (model/transformer.cpp).
//
// Chunks change who computes an output, never how: the kernels compute each row the same way
// whatever range it falls in, so results do not depend on the schedule or the thread count.
//
// Kernels reach the pool through kg::parallel_for (threading.h): while a ScopedPool is alive on
// a thread, that thread's parallel_for calls run on the pool, and code running inside a chunk
// sees one thread (num_threads() == 1), so nested loops run serially.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace kg {

class ChunkPool {
 public:
  using Body = void (*)(void* ctx, int64_t begin, int64_t end);

  // `threads` in all: the calling thread plus threads - 1 workers (threads >= 1).
  explicit ChunkPool(int threads);
  ~ChunkPool();
  ChunkPool(const ChunkPool&) = delete;
  ChunkPool& operator=(const ChunkPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // body(ctx, begin, end) over [0, n) in chunks of `chunk` items (the last one shorter);
  // returns when all are done. One caller at a time; body must not throw.
  void run(int64_t n, int64_t chunk, Body body, void* ctx);

  template <class F>
  void run(int64_t n, int64_t chunk, F& f) {
    run(n, chunk, [](void* c, int64_t b, int64_t e) { (*static_cast<F*>(c))(b, e); }, &f);
  }

  // While set, every loop runs on the caller alone (the workers sleep): the decode runner's
  // choice when its measurements say that is faster (another process busy on a core).
  void set_solo(bool solo) { forced_solo_ = solo; }
  bool solo() const { return forced_solo_; }

  struct Stats {
    int64_t loops = 0;        // run() calls
    int64_t solo_loops = 0;   // of which run on the caller alone
    int64_t lag_events = 0;   // times a worker was noticed lagging
    int64_t worker_chunks = 0, caller_chunks = 0;
    double wait_s = 0.0;  // the caller's time waiting for workers' chunks at the ends of loops
  };
  Stats stats() const;

  // A wait for a worker's chunk longer than this switches to solo loops.
  static constexpr double kLagWait = 300e-6;
  static constexpr int64_t kMinSolo = 256, kMaxSolo = 1 << 16;  // loops

 private:
  void worker_main();
  // Claims and runs chunks of the loop published as `ticket`'s generation; returns how many.
  // skip: claim them without running them (the caller's body threw: let the loop end).
  int64_t work(uint64_t ticket, bool skip = false);
  void finish_chunk(uint64_t gen);  // counts one chunk of generation gen done

  // generation << 32 | index of the next unclaimed chunk
  std::atomic<uint64_t> ticket_{0};
  std::atomic<Body> body_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0}, chunk_{1}, chunks_{0};
  // generation << 32 | chunks done: a count carries its loop's generation, so nothing late from
  // an earlier loop can ever count toward a later one
  std::atomic<uint64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> worker_chunks_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  // caller-side state (one caller at a time)
  int64_t solo_left_ = 0, solo_next_ = kMinSolo, clean_loops_ = 0;
  bool forced_solo_ = false;
  Stats stats_;
};

// While alive, this thread's parallel_for calls run on `pool` (null: on OpenMP, as without).
class ScopedPool {
 public:
  explicit ScopedPool(ChunkPool* pool);
  ~ScopedPool();
  ScopedPool(const ScopedPool&) = delete;
  ScopedPool& operator=(const ScopedPool&) = delete;

 private:
  ChunkPool* previous_;
};

}  // namespace kg
