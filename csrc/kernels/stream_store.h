// Streaming (non-temporal) stores for the memory-bound kernels (norm.cpp, activation.cpp).
//
// A normal store first reads the destination line into the cache ("read for ownership"), so
// writing an array that is far larger than the caches costs a read and a write of it: a
// kernel like y = f(x) moves 3 bytes over the memory bus per 2 it needs. A streaming store
// writes whole lines straight to memory. It only pays when the output will not be read
// from cache soon anyway, so the kernels stream only outputs larger than kStreamMinBytes,
// the size of this machine's last-level cache (32 MiB; an output that large cannot stay in
// cache). Streaming stores need vector-aligned addresses: store_range peels a head piece.
// Each thread that streamed must call stream_fence() before its results are read by others.
//
// Include only from csrc/kernels/*.cpp, after common/simd.h.
#pragma once
#include <cstdint>

#include "common/simd.h"

KG_BEGIN_ISA_NAMESPACE
namespace simd {

constexpr int64_t kStreamMinBytes = int64_t(32) << 20;

// Whether to stream an output of `bytes` bytes at `out` (float aligned, as numpy gives).
inline bool use_streaming(const float* out, int64_t bytes) {
  return bytes > kStreamMinBytes && reinterpret_cast<uintptr_t>(out) % sizeof(float) == 0;
}

inline void store_stream(float* p, vfloat v) {  // p must be kWidth * 4 byte aligned
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
  _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE2__)
  _mm_stream_ps(p, (__m128)v);
#else
  store(p, v);
#endif
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[i:i1] = value(j, n) piece by piece, n <= kWidth floats starting at j; when n < kWidth,
// value must read only n floats at each of its inputs + j (load_upto does that). With
// `stream`, a head piece reaches the first vector-aligned address of out, whole vectors are
// streamed, and the tail is stored normally.
template <class Value>
inline void store_range(float* out, int64_t i, int64_t i1, bool stream, Value value) {
  if (stream) {
    int64_t head = (-(int64_t)(reinterpret_cast<uintptr_t>(out + i) / sizeof(float))) &
                   (kWidth - 1);
    if (head > i1 - i) head = i1 - i;
    if (head > 0) {
      store_partial(out + i, value(i, head), head);
      i += head;
    }
    for (; i + kWidth <= i1; i += kWidth) store_stream(out + i, value(i, kWidth));
  } else {
    for (; i + kWidth <= i1; i += kWidth) store(out + i, value(i, kWidth));
  }
  if (i < i1) store_partial(out + i, value(i, i1 - i), i1 - i);
}

// A whole vector when n >= kWidth, else the first n lanes (zeros after).
inline vfloat load_upto(const float* p, int64_t n) {
  return n >= kWidth ? load(p) : load_partial(p, n);
}

}  // namespace simd
KG_END_ISA_NAMESPACE
