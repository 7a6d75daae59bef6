// Scratch memory for kernels: a grow-only, 64-byte aligned buffer, usually one per thread
// (`thread_local`), reused across calls so that a kernel called in a loop does not pay for
// fresh pages every time. Include only from csrc/kernels/*.cpp (it opens namespace kg::<level>).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#include "common/isa.h"

KG_BEGIN_ISA_NAMESPACE

template <class T>
struct GrowBuffer {
  T* data = nullptr;
  size_t capacity = 0;
  GrowBuffer() = default;
  GrowBuffer(const GrowBuffer&) = delete;
  GrowBuffer& operator=(const GrowBuffer&) = delete;
  ~GrowBuffer() { std::free(data); }
  // At least `count` elements, or nullptr if memory is exhausted (for use inside a parallel
  // region, where an exception must not escape).
  T* try_get(size_t count) {
    if (count > capacity) {
      std::free(data);
      size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
      data = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
      capacity = data ? count : 0;
    }
    return data;
  }
  // The same, throwing std::bad_alloc (Python MemoryError): call outside parallel regions.
  T* get(size_t count) {
    T* p = try_get(count);
    if (!p) throw std::bad_alloc();
    return p;
  }
};

using Workspace = GrowBuffer<float>;

KG_END_ISA_NAMESPACE
