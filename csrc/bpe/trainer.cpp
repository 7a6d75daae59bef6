#include "bpe/trainer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <queue>
#include <stdexcept>
#include <unordered_set>

#include "bpe/vocab.h"
#include "common/threading.h"

namespace kg {
namespace bpe {

namespace {

// Distinct pieces and how often each occurs: open addressing, keys copied into an arena.
class PieceCounter {
 public:
  struct Entry {
    uint64_t hash = 0;
    uint64_t offset = 0;
    uint64_t count = 0;  // 0: empty slot
    uint32_t len = 0;
  };

  PieceCounter() { slots_.resize(1 << 12); }

  void add(const uint8_t* p, size_t n, uint64_t count) {
    uint64_t h = hash_bytes(head8(p, n, n), p, n);
    size_t mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Entry& e = slots_[i];
      if (e.count == 0) {
        e.hash = h;
        e.offset = arena_.size();
        e.len = static_cast<uint32_t>(n);
        e.count = count;
        arena_.insert(arena_.end(), p, p + n);
        if (++used_ * 2 > slots_.size()) grow();
        return;
      }
      if (e.hash == h && e.len == n && std::memcmp(arena_.data() + e.offset, p, n) == 0) {
        e.count += count;
        return;
      }
    }
  }

  void merge_from(const PieceCounter& other) {
    for (const Entry& e : other.slots_)
      if (e.count) add(other.arena_.data() + e.offset, e.len, e.count);
  }

  template <class F>
  void for_each(F&& f) const {
    for (const Entry& e : slots_)
      if (e.count) f(arena_.data() + e.offset, e.len, e.count);
  }
  size_t size() const { return used_; }

 private:
  void grow() {
    std::vector<Entry> old;
    old.swap(slots_);
    slots_.assign(old.size() * 2, Entry{});
    size_t mask = slots_.size() - 1;
    for (const Entry& e : old) {
      if (!e.count) continue;
      size_t i = e.hash & mask;
      while (slots_[i].count) i = (i + 1) & mask;
      slots_[i] = e;
    }
  }
  std::vector<Entry> slots_;
  std::vector<uint8_t> arena_;
  size_t used_ = 0;
};

std::vector<uint8_t> read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  std::vector<uint8_t> data;
  uint8_t buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + got);
  bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) throw std::runtime_error("cannot read " + path);
  return data;
}

// A share of the corpus for one thread: a slice of an in-memory text, or a whole file.
struct Unit {
  size_t input;
  size_t begin, end;  // for in-memory inputs
};

// Step 1: distinct pieces and their counts.
PieceCounter count_pieces(const std::vector<TrainInput>& inputs, const Splitter& pattern, int threads,
                          TrainResult& result) {
  // Cut large texts at safe positions so that threads can split them independently.
  const size_t chunk = 1 << 20;
  std::vector<Unit> units;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const TrainInput& in = inputs[k];
    if (!in.path.empty()) {
      units.push_back({k, 0, 0});
      continue;
    }
    size_t begin = 0;
    while (begin < in.size) {
      size_t end = in.size - begin > 2 * chunk ? pattern.safe_cut(in.data, begin + chunk, in.size)
                                               : in.size;
      units.push_back({k, begin, end});
      begin = end;
    }
  }
  if (threads < 1) threads = 1;
  if (static_cast<size_t>(threads) > units.size()) threads = std::max<int>(1, units.size());
  std::vector<PieceCounter> counters(threads);
  std::vector<uint64_t> pieces(threads, 0), bytes(threads, 0);
  std::vector<std::string> errors(threads);
  std::atomic<size_t> next_unit{0};
  auto work = [&](int t) {
    try {
      for (size_t u; (u = next_unit.fetch_add(1)) < units.size();) {
        const Unit& unit = units[u];
        const TrainInput& in = inputs[unit.input];
        std::vector<uint8_t> file;
        const uint8_t* s = in.data + unit.begin;
        size_t n = unit.end - unit.begin;
        if (!in.path.empty()) {
          file = read_file(in.path);
          s = file.data();
          n = file.size();
        }
        bytes[t] += n;
        pattern.for_each_piece(s, n, [&](size_t b, size_t e) {
          counters[t].add(s + b, e - b, 1);
          ++pieces[t];
        });
      }
    } catch (const std::exception& e) {
      errors[t] = e.what();
      next_unit.store(units.size());
    }
  };
  kg::parallel_region(threads, [&](int t, int) { work(t); });
  for (const std::string& e : errors)
    if (!e.empty()) throw std::runtime_error(e);
  for (int t = 1; t < threads; ++t) {
    counters[0].merge_from(counters[t]);
    counters[t] = PieceCounter();
  }
  for (int t = 0; t < threads; ++t) result.pieces += pieces[t], result.bytes += bytes[t];
  return std::move(counters[0]);
}

// Pair -> index into the per-pair arrays (open addressing on the 64-bit key left<<32|right).
class PairIndex {
 public:
  PairIndex() { keys_.assign(1 << 16, kEmpty), values_.assign(1 << 16, 0); }
  // Index of `key`, inserting it as `next_index` when absent (then *inserted = true).
  uint32_t get(uint64_t key, uint32_t next_index, bool* inserted) {
    size_t mask = keys_.size() - 1;
    for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
      if (keys_[i] == key) return *inserted = false, values_[i];
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = next_index;
        *inserted = true;
        if (++used_ * 2 > keys_.size()) grow();
        return next_index;
      }
    }
  }
  uint32_t find(uint64_t key) const {
    size_t mask = keys_.size() - 1;
    for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
      if (keys_[i] == key) return values_[i];
      if (keys_[i] == kEmpty) return kNoToken;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return k;
  }
  void grow() {
    std::vector<uint64_t> old_keys;
    std::vector<uint32_t> old_values;
    old_keys.swap(keys_);
    old_values.swap(values_);
    keys_.assign(old_keys.size() * 2, kEmpty);
    values_.assign(old_keys.size() * 2, 0);
    size_t mask = keys_.size() - 1;
    for (size_t j = 0; j < old_keys.size(); ++j) {
      if (old_keys[j] == kEmpty) continue;
      size_t i = mix(old_keys[j]) & mask;
      while (keys_[i] != kEmpty) i = (i + 1) & mask;
      keys_[i] = old_keys[j];
      values_[i] = old_values[j];
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> values_;
  size_t used_ = 0;
};

inline uint64_t pair_key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }

struct HeapEntry {
  uint64_t count;
  uint64_t key;
  // std::priority_queue pops the "largest": the highest count, then the smallest pair.
  bool operator<(const HeapEntry& o) const {
    return count != o.count ? count < o.count : key > o.key;
  }
};

class Merger {
 public:
  explicit Merger(const PieceCounter& pieces) {
    word_begin_.reserve(pieces.size());
    pieces.for_each([&](const uint8_t* p, size_t n, uint64_t count) {
      word_begin_.push_back(symbols_.size());
      word_len_.push_back(static_cast<uint32_t>(n));
      word_freq_.push_back(count);
      for (size_t i = 0; i < n; ++i) symbols_.push_back(p[i]);
    });
    word_stamp_.assign(word_len_.size(), kNoToken);
    for (uint32_t w = 0; w < word_len_.size(); ++w) {
      const uint32_t* s = symbols_.data() + word_begin_[w];
      for (uint32_t i = 0; i + 1 < word_len_[w]; ++i) add(s[i], s[i + 1], word_freq_[w], w);
    }
    for (uint32_t p = 0; p < pair_key_.size(); ++p)
      if (pair_count_[p] > 0) heap_.push({static_cast<uint64_t>(pair_count_[p]), pair_key_[p]});
  }

  // The most frequent pair (ties: the smallest), or false when no pair is left.
  bool best(uint64_t* key, uint64_t* count) {
    while (!heap_.empty()) {
      HeapEntry top = heap_.top();
      heap_.pop();
      int64_t now = pair_count_[index_.find(top.key)];
      if (static_cast<uint64_t>(now) == top.count) {
        *key = top.key;
        *count = top.count;
        return true;
      }
      if (now > 0) heap_.push({static_cast<uint64_t>(now), top.key});
    }
    return false;
  }

  // Replaces (a, b) by c in every piece, left to right, updating the pair counts.
  void merge(uint64_t key, uint32_t c) {
    uint32_t a = static_cast<uint32_t>(key >> 32), b = static_cast<uint32_t>(key);
    uint32_t p = index_.find(key);
    std::vector<uint32_t> words;
    words.swap(pair_words_[p]);
    touched_.clear();
    for (uint32_t w : words) {
      if (word_stamp_[w] == c) continue;  // the list may name a piece twice
      word_stamp_[w] = c;
      uint32_t* s = symbols_.data() + word_begin_[w];
      uint32_t len = word_len_[w], out = 0;
      int64_t f = static_cast<int64_t>(word_freq_[w]);
      for (uint32_t i = 0; i < len;) {
        if (i + 1 < len && s[i] == a && s[i + 1] == b) {
          add(a, b, -f, w);
          if (out > 0) add(s[out - 1], a, -f, w), add(s[out - 1], c, f, w);
          if (i + 2 < len) add(b, s[i + 2], -f, w), add(c, s[i + 2], f, w);
          s[out++] = c;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      word_len_[w] = out;
    }
    for (uint32_t q : touched_)
      if (pair_count_[q] > 0) heap_.push({static_cast<uint64_t>(pair_count_[q]), pair_key_[q]});
  }

 private:
  void add(uint32_t a, uint32_t b, int64_t delta, uint32_t w) {
    bool inserted;
    uint64_t key = pair_key(a, b);
    uint32_t p = index_.get(key, static_cast<uint32_t>(pair_key_.size()), &inserted);
    if (inserted) {
      pair_key_.push_back(key);
      pair_count_.push_back(0);
      pair_words_.emplace_back();
      pair_stamp_.push_back(kNoToken);
    }
    pair_count_[p] += delta;
    if (delta > 0) {
      std::vector<uint32_t>& list = pair_words_[p];
      if (list.empty() || list.back() != w) list.push_back(w);
      if (pair_stamp_[p] != stamp_) {  // remember new pairs once per merge
        pair_stamp_[p] = stamp_;
        touched_.push_back(p);
      }
    }
  }

 public:
  uint32_t stamp_ = kNoToken;  // the id being created (pairs touched during this merge)

 private:
  std::vector<uint64_t> word_begin_;
  std::vector<uint32_t> word_len_;
  std::vector<uint64_t> word_freq_;
  std::vector<uint32_t> word_stamp_;
  std::vector<uint32_t> symbols_;
  PairIndex index_;
  std::vector<uint64_t> pair_key_;
  std::vector<int64_t> pair_count_;
  std::vector<std::vector<uint32_t>> pair_words_;
  std::vector<uint32_t> pair_stamp_;
  std::vector<uint32_t> touched_;
  std::priority_queue<HeapEntry> heap_;
};

}  // namespace

TrainResult train(const std::vector<TrainInput>& inputs, size_t vocab_size, const Splitter& pattern,
                  int threads) {
  if (vocab_size < 256)
    throw std::invalid_argument("vocab_size must be at least 256 (the byte tokens), got " +
                                std::to_string(vocab_size));
  if (vocab_size > 0x7FFFFFFF)
    throw std::invalid_argument("vocab_size is too large: " + std::to_string(vocab_size));
  TrainResult result;
  PieceCounter pieces = count_pieces(inputs, pattern, threads, result);
  result.distinct_pieces = pieces.size();
  for (int b = 0; b < 256; ++b) result.tokens.emplace_back(1, static_cast<char>(b));
  std::unordered_set<std::string> seen(result.tokens.begin(), result.tokens.end());

  Merger merger(pieces);
  pieces = PieceCounter();
  for (uint32_t id = 256; id < vocab_size; ++id) {
    uint64_t key, count;
    if (!merger.best(&key, &count)) break;
    uint32_t a = static_cast<uint32_t>(key >> 32), b = static_cast<uint32_t>(key);
    merger.stamp_ = id;
    merger.merge(key, id);
    result.merges.push_back({a, b, id, count});
    std::string bytes = result.tokens[a] + result.tokens[b];
    if (!seen.insert(bytes).second)  // cannot happen with a single global merge order
      throw std::logic_error("BPE training produced the same byte string twice (id " +
                             std::to_string(id) + "); please report this input");
    result.tokens.push_back(std::move(bytes));
  }
  return result;
}

}  // namespace bpe
}  // namespace kg
