// embedding: out[i] = table[ids[i]] and its backward dtable[ids[i]] += dout[i].  See embedding.h.
//
// version 1 (naive): one loop over ids, copying (or adding) one row of C floats at a time.
// version 2 (fast):
//   forward  - a gather of rows, limited by memory: the ids are split into equal contiguous
//              ranges over the threads; each row is copied with full vectors (masked tail), and
//              the row a few ids ahead is prefetched so the random row reads overlap.
//   backward - a scatter-add where two ids may name the same row, so two threads adding rows
//              at once could race. Instead every thread owns a disjoint range of columns
//              (whole cache lines) and walks all ids in order, adding only its columns: no
//              races, no atomics, and each element receives its additions in id order, so the
//              result is bit-identical to the naive version for any thread count.
#include "kernels/embedding.h"

#include "common/simd.h"
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
constexpr int64_t kPrefetchAhead = 4;  // rows

inline void prefetch_row(const float* row, int64_t floats) {
  for (int64_t c = 0; c < floats; c += 16) __builtin_prefetch(row + c, 0, 3);
}

void forward_fast(const EmbeddingArgs& p) {
  const int64_t C = p.channels;
  int64_t min_rows = (1 << 14) / C + 1;  // ~64 KiB of rows per thread
  parallel_for(p.n, min_rows, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kPrefetchAhead < i1) prefetch_row(p.table + p.ids[i + kPrefetchAhead] * C, C);
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

void backward_fast(const EmbeddingArgs& p) {
  const int64_t C = p.channels;
  // Column ranges of whole cache lines (16 floats), so no two threads write the same line.
  const int64_t lines = (C + 15) / 16;
  int64_t work = (p.n + (p.accumulate ? 0 : p.vocab)) * C;
  int nt = threads_for(work, 1 << 15);
  if (nt > lines) nt = static_cast<int>(lines);
  parallel_region(nt, [&](int t, int count) {
    int64_t c0 = lines * t / count * 16, c1 = lines * (t + 1) / count * 16;
    if (c1 > C) c1 = C;
    if (c0 >= c1) return;
    const int64_t w = c1 - c0;
    if (!p.accumulate) {
      vfloat z = zero();
      for (int64_t r = 0; r < p.vocab; ++r) {
        float* row = p.dtable + r * C + c0;
        int64_t c = 0;
        for (; c + kWidth <= w; c += kWidth) store(row + c, z);
        if (c < w) store_partial(row + c, z, w - c);
      }
    }
    for (int64_t i = 0; i < p.n; ++i) {
      if (i + kPrefetchAhead < p.n)
        prefetch_row(p.dtable + p.ids[i + kPrefetchAhead] * C + c0, w);
      add_row(p.dtable + p.ids[i] * C + c0, p.dout + i * C + c0, w);
    }
  });
}

}  // namespace

extern const EmbeddingKernels embedding_kernels = {
    forward_naive, forward_fast, backward_naive, backward_fast,
#if defined(__AVX512F__)
    "row gather / column-split scatter-add, AVX-512, prefetch"
#elif defined(__AVX2__)
    "row gather / column-split scatter-add, AVX2, prefetch"
#else
    "row gather / column-split scatter-add, SSE2, prefetch"
#endif
};

KG_END_ISA_NAMESPACE
