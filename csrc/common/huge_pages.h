// Memory for large tables read at random addresses (the tokenizer's vocabulary hash table and
// its per-thread merge cache). With 4 KB pages, a lookup in a table of several MB misses the
// TLB almost every time, a page walk on top of the cache miss; on Linux these tables are
// 2 MB-aligned and advised to use transparent huge pages (where the system allows them:
// `madvise` mode is common), so one TLB entry covers 2 MB. Elsewhere it is plain aligned memory.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace kg {

constexpr size_t kHugePage = size_t(2) << 20;

// Bytes of at least `bytes` (rounded up to whole huge pages), 2 MB-aligned; free with std::free.
inline void* huge_page_alloc(size_t bytes) {
  size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded ? rounded : kHugePage);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
#endif
  return p;
}

// A std::allocator for containers that may grow to megabytes: allocations of 1 MB or more come
// from huge_page_alloc, smaller ones from operator new.
template <class T>
struct HugePageAllocator {
  using value_type = T;
  static constexpr size_t kThreshold = kHugePage / 2;
  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT: allocators convert implicitly
  T* allocate(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes < kThreshold) return static_cast<T*>(::operator new(bytes));
    return static_cast<T*>(huge_page_alloc(bytes));
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kThreshold) ::operator delete(p);
    else std::free(p);
  }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const HugePageAllocator<U>&) const { return false; }
};

}  // namespace kg
