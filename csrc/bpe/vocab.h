// The vocabulary: token byte strings <-> ids (tiktoken calls the ids of mergeable tokens
// "ranks": a lower rank merges first).
//
// Encoding asks "which id has these bytes?" millions of times per second (every piece, and
// every candidate pair inside pieces that are not tokens), so lookups go through an
// open-addressing hash table whose slots keep the first 8 bytes of the token inline: most
// tokens are at most 8 bytes long and compare without touching the byte arena.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/huge_pages.h"

namespace kg {
namespace bpe {

constexpr uint32_t kNoToken = 0xFFFFFFFFu;

// The first min(n, 8) bytes of p as a little-endian integer, zero-padded. `readable` is how
// many bytes may be read from p (a fast 8-byte load when there is room).
inline uint64_t head8(const uint8_t* p, size_t n, size_t readable) {
  uint64_t v = 0;
  if (readable >= 8) {
    std::memcpy(&v, p, 8);
    if (n < 8) v &= (uint64_t(1) << (8 * n)) - 1;
  } else {
    std::memcpy(&v, p, n < 8 ? n : 8);
  }
  return v;
}

inline uint64_t hash_bytes(uint64_t head, const uint8_t* p, size_t n) {
  uint64_t h = head ^ (uint64_t(n) * 0x9E3779B97F4A7C15ull);
  if (n > 8) {  // the rest in 8-byte words; the last word may overlap the previous one
    for (size_t i = 8; i < n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + (i + 8 <= n ? i : n - 8), 8);
      h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 29;
    }
  }
  h *= 0x94D049BB133111EBull;
  h ^= h >> 32;
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 29);
}

// Whether a[8, n) == b[8, n) for n > 8, in 8-byte words (the last one overlapping the one
// before): the rest of two strings whose first 8 bytes are already known to be equal.
inline bool same_after_head(const uint8_t* a, const uint8_t* b, size_t n) {
  for (size_t i = 8; i < n; i += 8) {
    size_t at = i + 8 <= n ? i : n - 8;
    uint64_t x, y;
    std::memcpy(&x, a + at, 8);
    std::memcpy(&y, b + at, 8);
    if (x != y) return false;
  }
  return true;
}

class Vocab {
 public:
  // Adds a token (finalize() checks that ids and byte strings are unique).
  void add(const uint8_t* p, size_t n, uint32_t id);
  // Builds the id table and the hash table; call once after the last add(). Throws
  // std::invalid_argument naming the token if an id or a byte string occurs twice.
  void finalize();

  // The id of the token with bytes p[0, n), or kNoToken. `readable` >= n bytes may be read.
  uint32_t find(const uint8_t* p, size_t n, size_t readable) const {
    if (n <= 2) return n == 2 ? short_[256 + (p[0] | p[1] << 8)] : n == 1 ? short_[p[0]] : find_long(p, n, readable);
    return find_long(p, n, readable);
  }
  uint32_t find(const uint8_t* p, size_t n) const { return find(p, n, n); }

  // The hash-table lookup (find() answers 1- and 2-byte strings from a direct table).
  uint32_t find_long(const uint8_t* p, size_t n, size_t readable) const {
    uint64_t head = head8(p, n, readable);
    uint64_t h = hash_bytes(head, p, n);
    // The slot's line starts loading with the tag's, not after it (when the tag matches);
    // merging asks for strings it has just joined, rarely in cache.
    __builtin_prefetch(&slots_[h >> shift_]);
    return find_hashed(p, n, head, h);
  }
  // Starts loading the hash-table slot for hash h (see Encoder::encode_ordinary).
  void prefetch(uint64_t h) const {
    __builtin_prefetch(&tags_[h >> shift_]);
    __builtin_prefetch(&slots_[h >> shift_]);
  }
  // The lookup when the caller already has head8() and hash_bytes() of the string.
  uint32_t find_hashed(const uint8_t* p, size_t n, uint64_t head, uint64_t h) const {
    size_t i = h >> shift_;
    const uint8_t tag = tag_of(h);
    for (;;) {
      uint8_t t = tags_[i];
      if (t == 0) return kNoToken;
      if (t == tag) {
        const Slot& s = slots_[i];
        if (s.head == head && s.len == n &&
            (n <= 8 || same_after_head(arena_.data() + offset_[s.id], p, n)))
          return s.id;
      }
      i = (i + 1) & mask_;
    }
  }

  bool has(uint32_t id) const { return uint64_t(id) + 1 < offset_.size() && present_[id]; }
  const uint8_t* data(uint32_t id) const { return arena_.data() + offset_[id]; }
  size_t size_of(uint32_t id) const { return offset_[id + 1] - offset_[id]; }
  size_t count() const { return count_; }
  uint32_t max_id() const { return max_id_; }  // kNoToken when empty

 private:
  struct Slot {
    uint64_t head;
    uint32_t len;
    uint32_t id;
  };
  struct Pending {
    uint32_t id;
    uint32_t offset;
    uint32_t len;
  };
  std::vector<Pending> pending_;   // tokens in the order added (until finalize)
  std::vector<uint8_t> staging_;   // their bytes, in that order
  std::vector<uint8_t> arena_;     // token bytes ordered by id
  std::vector<uint64_t> offset_;   // offset_[id], offset_[id + 1]: the token's bytes
  std::vector<uint8_t> present_;   // 1 where an id exists (ids may have holes)
  // One byte per slot: 0 for empty, else 0x80 | 7 bits of the hash. Most lookups BPE makes
  // are for strings that are not tokens; they end in this 256 KB array (it stays in L2)
  // without touching the 4 MB of slots.
  static uint8_t tag_of(uint64_t h) { return static_cast<uint8_t>(0x80 | (h & 0x7F)); }
  std::vector<uint8_t, HugePageAllocator<uint8_t>> tags_;
  std::vector<Slot, HugePageAllocator<Slot>> slots_;
  // Ids of all 1-byte strings (index b) and 2-byte strings (index 256 + b0 + 256 * b1): the
  // lookups BPE merging makes most often, from a 257 KB table that stays in cache.
  std::vector<uint32_t> short_ = std::vector<uint32_t>(256 + 65536, kNoToken);
  size_t mask_ = 0;
  int shift_ = 64;
  size_t count_ = 0;
  uint32_t max_id_ = kNoToken;
};

}  // namespace bpe
}  // namespace kg
