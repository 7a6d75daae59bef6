#include "bpe/vocab.h"

#include <algorithm>
#include <stdexcept>

namespace kg {
namespace bpe {

void Vocab::add(const uint8_t* p, size_t n, uint32_t id) {
  if (id == kNoToken) throw std::invalid_argument("token id 4294967295 is out of range");
  pending_.push_back({id, static_cast<uint32_t>(staging_.size()), static_cast<uint32_t>(n)});
  staging_.insert(staging_.end(), p, p + n);
}

static std::string printable(const uint8_t* p, size_t n) {
  std::string out = "b'";
  static const char* hex = "0123456789abcdef";
  for (size_t i = 0; i < n && i < 64; ++i) {
    uint8_t c = p[i];
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out + (n > 64 ? "...'" : "'");
}

void Vocab::finalize() {
  count_ = pending_.size();
  max_id_ = kNoToken;
  uint32_t max_id = 0;
  for (const Pending& t : pending_) max_id = std::max(max_id, t.id);
  if (!pending_.empty()) max_id_ = max_id;
  size_t ids = pending_.empty() ? 0 : size_t(max_id) + 1;

  // Arena ordered by id; holes (unused ids) have zero length.
  std::vector<uint32_t> len(ids, 0), where(ids, 0);
  present_.assign(ids, 0);
  for (const Pending& t : pending_) {
    if (present_[t.id])
      throw std::invalid_argument("token id " + std::to_string(t.id) + " is used twice");
    present_[t.id] = 1;
    len[t.id] = t.len;
    where[t.id] = t.offset;
  }
  offset_.assign(ids + 1, 0);
  for (size_t id = 0; id < ids; ++id) offset_[id + 1] = offset_[id] + len[id];
  arena_.resize(offset_[ids] + 8);  // 8 bytes of slack: head8 may load a full word
  for (size_t id = 0; id < ids; ++id)
    if (len[id]) std::memcpy(arena_.data() + offset_[id], staging_.data() + where[id], len[id]);

  // Hash table at most ~40% full.
  size_t cap = 1024;
  while (cap < count_ * 5 / 2) cap *= 2;
  slots_.assign(cap, Slot{0, 0, kNoToken});
  tags_.assign(cap, 0);
  mask_ = cap - 1;
  shift_ = 64;
  for (size_t c = cap; c > 1; c >>= 1) --shift_;
  short_.assign(256 + 65536, kNoToken);
  for (const Pending& t : pending_) {
    const uint8_t* p = arena_.data() + offset_[t.id];
    if (t.len == 1) short_[p[0]] = t.id;
    if (t.len == 2) short_[256 + (p[0] | p[1] << 8)] = t.id;
    uint64_t head = head8(p, t.len, t.len + 8);
    uint64_t h = hash_bytes(head, p, t.len);
    size_t i = h >> shift_;
    for (;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.id == kNoToken) {
        s = Slot{head, t.len, t.id};
        tags_[i] = tag_of(h);
        break;
      }
      if (s.head == head && s.len == t.len &&
          std::memcmp(arena_.data() + offset_[s.id], p, t.len) == 0)
        throw std::invalid_argument("the byte string " + printable(p, t.len) +
                                    " has two ids: " + std::to_string(s.id) + " and " +
                                    std::to_string(t.id));
    }
  }
  pending_.clear();
  pending_.shrink_to_fit();
  staging_.clear();
  staging_.shrink_to_fit();
}

}  // namespace bpe
}  // namespace kg
