// embedding: out[i] = table[ids[i]] and its backward dtable[ids[i]] += dout[i].  See embedding.h.
//
// version 1 (naive): one loop over ids, copying (or adding) one row of C floats at a time.
// version 2 (fast):
//   forward  - a gather of rows, limited by memory: the ids are split into equal contiguous
//              ranges over the threads; each row is copied with full vectors (masked tail);
//              for short rows the row ~2 KiB ahead is prefetched so the random reads overlap.
//   backward - first zero the table (unless accumulating): memset on equal contiguous slices
//              per thread. Then the scatter-add, where two ids may name the same row, so two
//              threads adding rows at once could race. Instead every thread owns a disjoint
//              range of table rows and walks all ids in order, adding only the rows it owns:
//              no races, no atomics, and each row receives its additions in id order, so the
//              result is bit-identical to the naive version for any thread count. The row
//              ranges are cut from a histogram of the ids so that each thread adds about the
//              same number of rows, however skewed the ids (one id repeated: one thread works).
//              (Measured: owning column ranges instead is race-free too, but then both threads
//              read every dout row in halves, which ran up to 2x slower than one thread.)
#include "kernels/embedding.h"

#include <cstdlib>

#include "common/simd.h"
#include "common/workspace.h"
#include "common/threading.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// ---- version 1: naive ------------------------------------------------------------------
void forward_naive(const EmbeddingArgs& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float* row = p.table + p.ids[i] * p.channels;
    float* dst = p.out + i * p.channels;
    for (int64_t c = 0; c < p.channels; ++c) dst[c] = row[c];
  }
}

void backward_naive(const EmbeddingArgs& p) {
  if (!p.accumulate)
    for (int64_t j = 0; j < p.vocab * p.channels; ++j) p.dtable[j] = 0.0f;
  for (int64_t i = 0; i < p.n; ++i) {
    const float* src = p.dout + i * p.channels;
    float* row = p.dtable + p.ids[i] * p.channels;
    for (int64_t c = 0; c < p.channels; ++c) row[c] += src[c];
  }
}

// ---- version 2: fast -------------------------------------------------------------------
inline void prefetch_row(const float* row, int64_t floats) {
  for (int64_t c = 0; c < floats; c += 16) __builtin_prefetch(row + c, 0, 3);
}

void forward_fast(const EmbeddingArgs& p) {
  const int64_t C = p.channels;
  // Short rows (<= 1 KiB) end before the hardware prefetcher gets going: ask for the row
  // ~2 KiB of output ahead. Long rows are streamed well without help (measured).
  const int64_t ahead = C <= 256 ? 2048 / (4 * C) : 0;
  int64_t min_rows = (1 << 14) / C + 1;  // ~64 KiB of rows per thread
  parallel_for(p.n, min_rows, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (ahead && i + ahead < i1) prefetch_row(p.table + p.ids[i + ahead] * C, C);
      const float* src = p.table + p.ids[i] * C;
      float* dst = p.out + i * C;
      int64_t c = 0;
      for (; c + 4 * kWidth <= C; c += 4 * kWidth) {
        vfloat a = load(src + c), b = load(src + c + kWidth);
        vfloat d = load(src + c + 2 * kWidth), e = load(src + c + 3 * kWidth);
        store(dst + c, a);
        store(dst + c + kWidth, b);
        store(dst + c + 2 * kWidth, d);
        store(dst + c + 3 * kWidth, e);
      }
      for (; c + kWidth <= C; c += kWidth) store(dst + c, load(src + c));
      if (c < C) store_partial(dst + c, load_partial(src + c, C - c), C - c);
    }
  });
}

// dst[0:w] += src[0:w]
inline void add_row(float* dst, const float* src, int64_t w) {
  int64_t c = 0;
  for (; c + 2 * kWidth <= w; c += 2 * kWidth) {
    vfloat a = load(dst + c) + load(src + c);
    vfloat b = load(dst + c + kWidth) + load(src + c + kWidth);
    store(dst + c, a);
    store(dst + c + kWidth, b);
  }
  for (; c + kWidth <= w; c += kWidth) store(dst + c, load(dst + c) + load(src + c));
  if (c < w) store_partial(dst + c, load_partial(dst + c, w - c) + load_partial(src + c, w - c), w - c);
}

thread_local GrowBuffer<int64_t> tl_counts;

void backward_fast(const EmbeddingArgs& p) {
  const int64_t C = p.channels, V = p.vocab;
  if (!p.accumulate) {  // zero the table first: contiguous slices per thread (memset streams)
    parallel_for(V * C, 1 << 16, [&](int64_t j0, int64_t j1) {
      std::memset(p.dtable + j0, 0, (j1 - j0) * sizeof(float));
    });
  }
  constexpr int kMaxThreads = 256;
  int nt = threads_for(p.n * C, 1 << 16);
  if (nt > kMaxThreads) nt = kMaxThreads;
  // Row ranges [first[t], first[t + 1]) holding about n / nt of the ids each: a histogram of
  // the ids, then cut its running sum into equal parts. (For a table much larger than the
  // number of ids the histogram would cost more than the scatter: then equal slices of the
  // range of ids that occur.)
  int64_t first[kMaxThreads + 1];
  first[0] = 0;
  first[nt] = V;
  if (nt > 1 && V <= 8 * p.n && tl_counts.try_get(V)) {
    int64_t* counts = tl_counts.try_get(V);
    for (int64_t v = 0; v < V; ++v) counts[v] = 0;
    for (int64_t i = 0; i < p.n; ++i) ++counts[p.ids[i]];
    int64_t running = 0, v = 0;
    for (int t = 1; t < nt; ++t) {
      int64_t target = p.n * t / nt;
      while (v < V && running + counts[v] <= target) running += counts[v++];
      first[t] = v;
    }
  } else if (nt > 1) {
    int64_t lo = p.ids[0], hi = p.ids[0];
    for (int64_t i = 1; i < p.n; ++i) {
      lo = p.ids[i] < lo ? p.ids[i] : lo;
      hi = p.ids[i] > hi ? p.ids[i] : hi;
    }
    for (int t = 1; t < nt; ++t) first[t] = lo + (hi + 1 - lo) * t / nt;
  }
  parallel_region(nt, [&](int t, int count) {
    for (int part = t; part < nt; part += count) {  // (count < nt if OpenMP gave fewer threads)
      const int64_t v0 = first[part], v1 = first[part + 1];
      for (int64_t i = 0; i < p.n; ++i) {
        const int64_t id = p.ids[i];
        if (id >= v0 && id < v1) add_row(p.dtable + id * C, p.dout + i * C, C);
      }
    }
  });
}

}  // namespace

extern const EmbeddingKernels embedding_kernels = {
    forward_naive, forward_fast, backward_naive, backward_fast,
#if defined(__AVX512F__)
    "row gather / row-owner scatter-add (id histogram split), AVX-512"
#elif defined(__AVX2__)
    "row gather / row-owner scatter-add (id histogram split), AVX2"
#else
    "row gather / row-owner scatter-add (id histogram split), SSE2"
#endif
};

KG_END_ISA_NAMESPACE
