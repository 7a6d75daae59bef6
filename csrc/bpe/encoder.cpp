#include "bpe/encoder.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>

#include "common/huge_pages.h"

namespace kg {
namespace bpe {

namespace {

std::atomic<uint64_t> g_next_encoder_id{1};

// The per-thread cache of merged pieces: a piece of up to 46 bytes that is not a token and the
// (up to 15) tokens its merge produced. Two-way set-associative on the piece's hash, 65,536
// entries (8 MB, allocated on a thread's first merge): a new piece goes to the first way of its
// set and the one there moves to the second, so two pieces that share a set (a direct-mapped
// table of this size made ~20% of the distinct pieces of a play collide) both stay.
struct alignas(64) CacheEntry {
  uint64_t hash;
  uint64_t owner;  // the Encoder's id; 0: empty
  uint8_t len, count;
  uint8_t key[kCacheMaxPiece];
  uint32_t tokens[kCacheMaxTokens + 1];  // the last one pads: a hit copies all 16 at once
};
static_assert(sizeof(CacheEntry) == 128, "two cache lines per entry");
constexpr size_t kCacheEntries = 65536;
constexpr size_t kCacheSetMask = kCacheEntries - 2;  // a set: entries 2k and 2k + 1

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

CacheEntry* thread_cache() {
  thread_local std::unique_ptr<CacheEntry, FreeDeleter> cache;
  if (!cache) {  // on huge pages where the system allows (random lookups: see huge_pages.h)
    cache.reset(static_cast<CacheEntry*>(huge_page_alloc(kCacheEntries * sizeof(CacheEntry))));
    std::memset(static_cast<void*>(cache.get()), 0, kCacheEntries * sizeof(CacheEntry));
  }
  return cache.get();
}

// Longer pieces (47 to 1024 bytes: a sentence of Chinese or Thai, which have no spaces, is one
// piece) in a second, smaller per-thread cache: 4,096 entries holding their bytes and tokens
// (at most ~8 MB). Merging such a piece costs far more than a lookup, and text repeats them.
constexpr size_t kLongCacheEntries = 4096;
constexpr size_t kLongCacheMaxPiece = 1024;
struct LongCacheEntry {
  uint64_t hash = 0;
  uint64_t owner = 0;
  std::string key;
  std::vector<uint32_t> tokens;
};

LongCacheEntry* thread_long_cache() {
  thread_local std::unique_ptr<LongCacheEntry[]> cache;
  if (!cache) cache.reset(new LongCacheEntry[kLongCacheEntries]);
  return cache.get();
}

}  // namespace

Encoder::Encoder(Vocab vocab, std::vector<SpecialToken> specials, Splitter pattern,
                 bool skip_unknown_bytes)
    : id_(g_next_encoder_id.fetch_add(1)),
      vocab_(std::move(vocab)),
      specials_(std::move(specials)),
      pattern_(std::move(pattern)),
      skip_unknown_bytes_(skip_unknown_bytes) {
  for (int b = 0; b < 256; ++b) {
    uint8_t byte = static_cast<uint8_t>(b);
    unknown_byte_[b] = vocab_.find(&byte, 1) == kNoToken;
    has_unknown_byte_ |= unknown_byte_[b];
  }
  max_token_value_ = vocab_.max_id() == kNoToken ? 0 : vocab_.max_id();
  for (size_t k = 0; k < specials_.size(); ++k) {
    const SpecialToken& t = specials_[k];
    if (t.text.empty()) throw std::invalid_argument("special tokens must not be empty strings");
    if (vocab_.has(t.id))
      throw std::invalid_argument("special token '" + t.text + "' has id " +
                                  std::to_string(t.id) + ", which a mergeable token already has");
    has_always_ |= t.always && !t.never;
    // Two names may share an id (o200k_harmony: <|endofprompt|> and <|reserved_200018|>); both
    // encode to it and it decodes to the later one, as in tiktoken.
    special_by_id_[t.id] = k;
    max_token_value_ = std::max(max_token_value_, t.id);
  }
  trie_.build(specials_);
  // The decoding table. Lengths live in 24 bits: longer tokens would not fit (none exist).
  size_t n_ids = size_t(max_token_value_) + 1;
  decode_span_.assign(n_ids, 0);
  auto put = [&](uint32_t id, const uint8_t* d, size_t len) {
    if (len >= (1u << 24)) throw std::invalid_argument("a token longer than 16 MB");
    // Bit 63 marks the id as used (so an empty token is not mistaken for an unused id).
    decode_span_[id] = uint64_t(1) << 63 | uint64_t(decode_arena_.size()) << 24 | len;
    decode_arena_.insert(decode_arena_.end(), d, d + len);
  };
  if (vocab_.max_id() != kNoToken)
    for (uint32_t id = 0; id <= vocab_.max_id(); ++id)
      if (vocab_.has(id)) put(id, vocab_.data(id), vocab_.size_of(id));
  for (const SpecialToken& t : specials_)
    put(t.id, reinterpret_cast<const uint8_t*>(t.text.data()), t.text.size());
  decode_arena_.resize(decode_arena_.size() + kDecodeSlack);
}

uint32_t Encoder::part_token(const uint8_t* p, size_t n, size_t readable) const {
  uint32_t id = vocab_.find(p, n, readable);
  if (id == kNoToken) {
    // Only possible for a vocabulary that lacks some single byte.
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", p[0]);
    throw std::invalid_argument(std::string("cannot encode byte ") + hex +
                                ": the vocabulary has no token for it");
  }
  return id;
}

// Version 1, tiktoken's algorithm. start[k] is where part k begins (start[m-1] == n is a
// sentinel); rank[k] is the rank of part k joined with part k+1, or kNoToken; token[k] is
// part k's id (a merged part's id is the rank that merged it: ranks are ids).
void Encoder::merge_scan(const uint8_t* p, size_t n, size_t readable,
                         std::vector<uint32_t>& out) const {
  uint32_t start[kScanMaxPiece + 2], rank[kScanMaxPiece + 2], token[kScanMaxPiece + 2];
  size_t m = n + 1;
  for (size_t k = 0; k <= n; ++k) start[k] = static_cast<uint32_t>(k);
  for (size_t k = 0; k < n; ++k) token[k] = part_token(p + k, 1, readable - k);
  for (size_t k = 0; k + 1 < n; ++k) rank[k] = vocab_.find(p + k, 2, readable - k);
  rank[n - 1] = rank[n] = kNoToken;
  auto span_rank = [&](size_t first, size_t end_part) {  // parts first .. end_part-1 joined
    return vocab_.find(p + start[first], start[end_part] - start[first], readable - start[first]);
  };
  for (;;) {
    // The lowest rank, leftmost on ties, as the minimum of (rank << 32 | position): no branch
    // per pair for the CPU to mispredict.
    uint64_t lowest = ~uint64_t(0);
    for (size_t k = 0; k + 1 < m; ++k) lowest = std::min(lowest, uint64_t(rank[k]) << 32 | k);
    const uint32_t best = static_cast<uint32_t>(lowest >> 32);
    const size_t i = static_cast<uint32_t>(lowest);
    if (best == kNoToken) break;
    // Join parts i and i+1; the pairs that change are (i-1, i) and (i, i+1).
    token[i] = best;
    if (i > 0) rank[i - 1] = i + 2 < m ? span_rank(i - 1, i + 2) : kNoToken;
    rank[i] = i + 3 < m ? span_rank(i, i + 3) : kNoToken;
    std::memmove(start + i + 1, start + i + 2, (m - i - 2) * sizeof(uint32_t));
    std::memmove(rank + i + 1, rank + i + 2, (m - i - 2) * sizeof(uint32_t));
    std::memmove(token + i + 1, token + i + 2, (m - i - 2) * sizeof(uint32_t));
    --m;
  }
  out.insert(out.end(), token, token + (m - 1));
}

// Version 2: the same merges for medium pieces (a sentence of Chinese or Japanese is one
// piece of 50-250 bytes) in O(n log n) without allocating: parts in a linked list on the
// stack, candidates (rank << 32 | position) in a binary min-heap, stale ones skipped when
// popped (see version 3 for why a stale candidate never looks current).
void Encoder::merge_stack_heap(const uint8_t* p, size_t n, size_t readable,
                               std::vector<uint32_t>& out) const {
  constexpr size_t N = kScanMaxPiece;
  uint32_t next[N], prev[N], rank[N], token[N];
  uint64_t heap[3 * N];
  size_t size = 0;
  const uint32_t end = static_cast<uint32_t>(n);
  auto greater = std::greater<uint64_t>();
  for (uint32_t k = 0; k < end; ++k) {
    next[k] = k + 1;
    prev[k] = k - 1;  // unused for k == 0
    token[k] = part_token(p + k, 1, readable - k);
    rank[k] = k + 1 < end ? vocab_.find(p + k, 2, readable - k) : kNoToken;
    if (rank[k] != kNoToken) heap[size++] = uint64_t(rank[k]) << 32 | k;
  }
  std::make_heap(heap, heap + size, greater);
  auto update = [&](uint32_t k) {  // part k joined with the part after it
    uint32_t j = next[k];
    rank[k] = j < end ? vocab_.find(p + k, next[j] - k, readable - k) : kNoToken;
    if (rank[k] == kNoToken) return;
    heap[size++] = uint64_t(rank[k]) << 32 | k;
    std::push_heap(heap, heap + size, greater);
  };
  while (size) {
    std::pop_heap(heap, heap + size, greater);
    uint64_t top = heap[--size];
    uint32_t k = static_cast<uint32_t>(top), r = static_cast<uint32_t>(top >> 32);
    if (rank[k] != r) continue;
    uint32_t j = next[k];
    token[k] = r;
    next[k] = next[j];
    if (next[j] < end) prev[next[j]] = k;
    rank[j] = kNoToken;
    update(k);
    if (k > 0) update(prev[k]);
  }
  for (uint32_t k = 0; k < end; k = next[k]) out.push_back(token[k]);
}

// Version 3: the same merges in O(n log n). Parts are identified by their first byte k and
// linked through next[]/prev[]; rank[k] is the rank of part k joined with the part after it.
// Candidates (rank, k) wait in a priority queue ordered by rank, then position: a min-heap
// of the distinct ranks, and per rank a bucket of positions sorted when the rank comes up.
// (A long piece repeats few pairs, e.g. a million spaces: one bucket of a million positions,
// already in order, instead of a million heap operations.) A candidate is current while part
// k is alive and rank[k] still equals it (a part's span only grows and distinct byte strings
// have distinct ranks, so a stale candidate never looks current again). Taking the smallest
// (rank, k) each time merges the leftmost pair of lowest rank, exactly as version 1 does;
// a merge can add candidates of any rank, even lower ones, which simply come up next.
void Encoder::merge_heap(const uint8_t* p, size_t n, size_t readable,
                         std::vector<uint32_t>& out) const {
  const uint32_t end = static_cast<uint32_t>(n);
  std::vector<uint32_t> next(n), prev(n), rank(n, kNoToken), token(n);
  struct Bucket {
    std::vector<uint32_t> positions;
    size_t cursor = 0;  // positions before it are done
    bool sorted = true;
    bool queued = false;
  };
  std::vector<Bucket> buckets;
  std::unordered_map<uint32_t, uint32_t> bucket_of;  // rank -> index into buckets
  std::vector<uint32_t> queue;                       // min-heap of ranks with a bucket to do
  auto greater = std::greater<uint32_t>();
  auto add = [&](uint32_t r, uint32_t k) {
    if (r == kNoToken) return;
    auto it = bucket_of.find(r);
    uint32_t bi;
    if (it == bucket_of.end()) {
      bi = static_cast<uint32_t>(buckets.size());
      bucket_of.emplace(r, bi);
      buckets.emplace_back();
    } else {
      bi = it->second;
    }
    Bucket& bk = buckets[bi];
    if (bk.cursor < bk.positions.size() && bk.positions.back() > k) bk.sorted = false;
    bk.positions.push_back(k);
    if (!bk.queued) {
      bk.queued = true;
      queue.push_back(r);
      std::push_heap(queue.begin(), queue.end(), greater);
    }
  };
  for (uint32_t k = 0; k < end; ++k) {
    next[k] = k + 1;
    prev[k] = k - 1;  // unused for k == 0
    token[k] = part_token(p + k, 1, readable - k);
    if (k + 1 < end) add(rank[k] = vocab_.find(p + k, 2, readable - k), k);
  }
  auto join_rank = [&](uint32_t k) -> uint32_t {  // part k joined with the part after it
    uint32_t j = next[k];
    if (j >= end) return kNoToken;
    return vocab_.find(p + k, next[j] - k, readable - k);
  };
  while (!queue.empty()) {
    uint32_t r = queue.front();
    Bucket& bk = buckets[bucket_of[r]];
    if (bk.cursor == bk.positions.size()) {
      std::pop_heap(queue.begin(), queue.end(), greater);
      queue.pop_back();
      bk.queued = false;
      bk.positions.clear();
      bk.cursor = 0;
      bk.sorted = true;
      continue;
    }
    if (!bk.sorted) {
      std::sort(bk.positions.begin() + bk.cursor, bk.positions.end());
      bk.sorted = true;
    }
    uint32_t k = bk.positions[bk.cursor++];
    if (rank[k] != r) continue;  // stale (parts that were absorbed have rank kNoToken)
    uint32_t j = next[k];        // absorb part j into part k
    token[k] = r;
    next[k] = next[j];
    if (next[j] < end) prev[next[j]] = k;
    rank[j] = kNoToken;
    add(rank[k] = join_rank(k), k);  // may reallocate buckets: bk is not used below
    if (k > 0) {
      uint32_t before = prev[k];
      add(rank[before] = join_rank(before), before);
    }
  }
  for (uint32_t k = 0; k < end; k = next[k]) out.push_back(token[k]);
}

void Encoder::encode_piece(const uint8_t* p, size_t n, size_t readable,
                           std::vector<uint32_t>& out, MergeAlgorithm algorithm) const {
  if (n == 0) return;
  uint32_t whole = vocab_.find(p, n, readable);
  if (whole != kNoToken) {
    out.push_back(whole);
    return;
  }
  if (skip_unknown_bytes_ && has_unknown_byte_) {
    // Drop the bytes without a token; their neighbours become adjacent and may merge.
    bool any = false;
    for (size_t k = 0; k < n && !any; ++k) any = unknown_byte_[p[k]];
    if (any) {
      std::vector<uint8_t> kept;
      for (size_t k = 0; k < n; ++k)
        if (!unknown_byte_[p[k]]) kept.push_back(p[k]);
      if (!kept.empty()) encode_piece(kept.data(), kept.size(), kept.size(), out, algorithm);
      return;
    }
  }
  if (n == 1) {
    out.push_back(part_token(p, 1, readable));
    return;
  }
  if (algorithm == MergeAlgorithm::automatic)
    algorithm = n <= kScanSmallPiece ? MergeAlgorithm::scan
              : n <= kScanMaxPiece   ? MergeAlgorithm::stack_heap
                                     : MergeAlgorithm::heap;
  if (algorithm == MergeAlgorithm::scan && n <= kScanMaxPiece)
    merge_scan(p, n, readable, out);
  else if (algorithm == MergeAlgorithm::stack_heap && n <= kScanMaxPiece)
    merge_stack_heap(p, n, readable, out);
  else
    merge_heap(p, n, readable, out);
}

namespace {

// Whether the n <= kCacheMaxPiece bytes of a cached key equal p[0, n), with `head` = head8(p).
KG_BPE_INLINE bool same_key(const uint8_t* key, const uint8_t* p, size_t n, uint64_t head) {
  uint64_t k0;
  std::memcpy(&k0, key, 8);  // the key buffer holds kCacheMaxPiece >= 8 bytes
  if (n < 8) return (k0 & ((uint64_t(1) << (8 * n)) - 1)) == head;
  return k0 == head && same_after_head(key, p, n);
}

}  // namespace

void Encoder::encode_plain(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
  // A piece costs a lookup in the 4 MB vocabulary table and, if it is not a token, one in the
  // 8 MB merge cache: cache misses that, taken one piece at a time, would queue up behind the
  // branchy scanner. So pieces go through a pipeline in batches of 64:
  //   1. as the scanner cuts a piece: hash it, prefetch its vocabulary slot;
  //   2. when a batch is full: look its pieces up, prefetch the merge-cache set of each piece
  //      that is not a token;
  //   3. one batch later (a batch's worth of scanning for those loads to arrive): write the
  //      batch's ids, from the cache or by merging (and caching the merge).
  constexpr size_t kBatch = 64;
  struct Span {
    size_t begin, len;
    uint64_t head, hash;
    uint32_t whole;  // the piece's id if it is a token, else kNoToken
  };
  Span batches[2][kBatch];
  size_t counts[2] = {0, 0};
  int filling = 0;  // batches[filling] is being filled; batches[1 - filling] waits for step 3
  CacheEntry* cache = use_cache_ ? thread_cache() : nullptr;
  auto look_up = [&](Span* batch, size_t count) {  // step 2
    for (size_t k = 0; k < count; ++k) {
      Span& sp = batch[k];
      const uint8_t* p = s + sp.begin;
      sp.whole = sp.len <= 2 ? vocab_.find(p, sp.len, n - sp.begin)
                             : vocab_.find_hashed(p, sp.len, sp.head, sp.hash);
      if (sp.whole != kNoToken || !cache) continue;
      if (sp.len <= 2) {  // not hashed in step 1
        sp.head = head8(p, sp.len, n - sp.begin);
        sp.hash = hash_bytes(sp.head, p, sp.len);
      }
      if (sp.len <= kCacheMaxPiece) {
        const char* c = reinterpret_cast<const char*>(&cache[sp.hash & kCacheSetMask]);
        for (int line = 0; line < 4; ++line) __builtin_prefetch(c + 64 * line);
      }
    }
  };
  // Step 3 writes ids to `ids` (a batch's worth at most, plus slack for whole-entry copies),
  // appended to `out` at the end of the batch or before a merge (which writes to `out`).
  uint32_t ids[kBatch * kCacheMaxTokens + 16];
  auto emit = [&](const Span* batch, size_t count) {  // step 3
    size_t m = 0;
    auto drain = [&] {
      out.insert(out.end(), ids, ids + m);
      m = 0;
    };
    for (size_t k = 0; k < count; ++k) {
      const Span& sp = batch[k];
      const uint8_t* p = s + sp.begin;
      if (sp.whole != kNoToken) {
        ids[m++] = sp.whole;
      } else if (cache && sp.len <= kCacheMaxPiece) {
        // Not a token: merge it, or reuse the last merge of the same piece.
        CacheEntry* set = &cache[sp.hash & kCacheSetMask];
        auto holds = [&](const CacheEntry& c) {
          return c.hash == sp.hash && c.owner == id_ && c.len == sp.len &&
                 same_key(c.key, p, sp.len, sp.head);
        };
        const CacheEntry* hit = holds(set[0]) ? &set[0] : holds(set[1]) ? &set[1] : nullptr;
        if (hit) {
          std::memcpy(ids + m, hit->tokens, sizeof hit->tokens);
          m += hit->count;
          continue;
        }
        drain();
        size_t before = out.size();
        encode_piece(p, sp.len, n - sp.begin, out);
        size_t made = out.size() - before;
        if (made <= kCacheMaxTokens) {
          set[1] = set[0];
          CacheEntry& c = set[0];
          c.hash = sp.hash;
          c.owner = id_;
          c.len = static_cast<uint8_t>(sp.len);
          c.count = static_cast<uint8_t>(made);
          std::memcpy(c.key, p, sp.len);
          std::memcpy(c.tokens, out.data() + before, made * sizeof(uint32_t));
        }
      } else if (cache && sp.len <= kLongCacheMaxPiece) {
        drain();
        LongCacheEntry& c = thread_long_cache()[sp.hash & (kLongCacheEntries - 1)];
        if (c.hash == sp.hash && c.owner == id_ && c.key.size() == sp.len &&
            std::memcmp(c.key.data(), p, sp.len) == 0) {
          out.insert(out.end(), c.tokens.begin(), c.tokens.end());
          continue;
        }
        size_t before = out.size();
        encode_piece(p, sp.len, n - sp.begin, out);
        c.hash = sp.hash;
        c.owner = id_;
        c.key.assign(reinterpret_cast<const char*>(p), sp.len);
        c.tokens.assign(out.begin() + before, out.end());
      } else {
        drain();
        encode_piece(p, sp.len, n - sp.begin, out);
      }
    }
    drain();
  };
  auto batch_full = [&] {
    look_up(batches[filling], counts[filling]);
    emit(batches[1 - filling], counts[1 - filling]);
    filling = 1 - filling;
    counts[filling] = 0;
  };
  // Step 1, inlined into the scanner's loop (with LTO, GCC otherwise called it once a piece).
  pattern_.for_each_piece(s, n, [&](size_t b, size_t e) KG_BPE_INLINE_LAMBDA {
    Span& sp = batches[filling][counts[filling]++];
    sp.begin = b;
    sp.len = e - b;
    if (sp.len > 2) {
      sp.head = head8(s + b, sp.len, n - b);
      sp.hash = hash_bytes(sp.head, s + b, sp.len);
      vocab_.prefetch(sp.hash);
    }
    if (counts[filling] == kBatch) batch_full();
  });
  look_up(batches[filling], counts[filling]);
  emit(batches[1 - filling], counts[1 - filling]);
  emit(batches[filling], counts[filling]);
}

size_t Encoder::find_first(const uint8_t* s, size_t n, size_t from,
                           const std::vector<std::string>& strings, size_t* which) {
  size_t best = n, best_len = 0;
  *which = strings.size();
  for (size_t k = 0; k < strings.size(); ++k) {
    const std::string& t = strings[k];
    if (t.empty()) {  // the empty string occurs everywhere
      if (*which == strings.size() || from < best) best = from, best_len = 0, *which = k;
      continue;
    }
    if (from >= n) continue;
    const void* hit = memmem(s + from, n - from, t.data(), t.size());
    if (!hit) continue;
    size_t pos = static_cast<const uint8_t*>(hit) - s;
    if (*which == strings.size() || pos < best || (pos == best && t.size() > best_len)) best = pos, best_len = t.size(), *which = k;
  }
  return best;
}

void SpecialTrie::build(const std::vector<SpecialToken>& specials) {
  std::vector<std::map<uint8_t, uint32_t>> kids(1);
  std::vector<int32_t> token(1, -1);
  count_ = specials.size();
  for (size_t k = 0; k < specials.size(); ++k) {
    const std::string& t = specials[k].text;
    if (t.empty()) continue;
    first_byte_[static_cast<uint8_t>(t[0]) >> 6] |= uint64_t(1) << (static_cast<uint8_t>(t[0]) & 63);
    uint32_t node = 0;
    for (char ch : t) {
      uint8_t c = static_cast<uint8_t>(ch);
      auto it = kids[node].find(c);
      if (it == kids[node].end()) {
        uint32_t child = static_cast<uint32_t>(kids.size());
        kids[node][c] = child;
        kids.emplace_back();
        token.push_back(-1);
        node = child;
      } else {
        node = it->second;
      }
    }
    if (token[node] < 0) token[node] = static_cast<int32_t>(k);  // the first of equal strings
  }
  nodes_.assign(kids.size(), Node());
  edges_.clear();
  for (size_t v = 0; v < kids.size(); ++v) {
    nodes_[v].first_edge = static_cast<uint32_t>(edges_.size());
    nodes_[v].edge_count = static_cast<uint32_t>(kids[v].size());
    nodes_[v].token = token[v];
    for (const auto& e : kids[v]) edges_.push_back(e);
  }
}

size_t SpecialTrie::find(const uint8_t* s, size_t n, size_t from, const std::vector<uint8_t>& enabled,
                         size_t* which) const {
  for (size_t p = from; p < n; ++p) {
    if (!((first_byte_[s[p] >> 6] >> (s[p] & 63)) & 1)) continue;
    int32_t best = -1;
    uint32_t node = 0;
    for (size_t q = p; q < n; ++q) {
      const Node& v = nodes_[node];
      const auto* b = edges_.data() + v.first_edge;
      const auto* e = b + v.edge_count;
      const auto* it = std::lower_bound(b, e, std::make_pair(s[q], uint32_t(0)));
      if (it == e || it->first != s[q]) break;
      node = it->second;
      int32_t t = nodes_[node].token;
      if (t >= 0 && static_cast<size_t>(t) < enabled.size() && enabled[t]) best = t;
    }
    if (best >= 0) {
      *which = static_cast<size_t>(best);
      return p;
    }
  }
  *which = count_;
  return n;
}

void Encoder::encode(const uint8_t* s, size_t n, const std::vector<uint8_t>& allowed,
                     std::vector<uint32_t>& out) const {
  // Which specials match here: the allowed ones and the added ones, never the decode-only.
  std::vector<uint8_t> enabled(specials_.size(), 0);
  bool any = false;
  for (size_t k = 0; k < specials_.size(); ++k) {
    enabled[k] = ((k < allowed.size() && allowed[k]) || specials_[k].always) && !specials_[k].never;
    any |= enabled[k] != 0;
  }
  if (!any) return encode_plain(s, n, out);
  if (specials_.size() > 8) {  // many: one pass with the trie
    size_t start = 0;
    for (;;) {
      size_t which;
      size_t at = trie_.find(s, n, start, enabled, &which);
      encode_plain(s + start, at - start, out);
      if (at >= n) break;
      out.push_back(specials_[which].id);
      start = at + specials_[which].text.size();
    }
    return;
  }
  std::vector<std::string> texts;
  std::vector<uint32_t> ids;
  for (size_t k = 0; k < specials_.size(); ++k)
    if (enabled[k]) texts.push_back(specials_[k].text), ids.push_back(specials_[k].id);
  // next_at[k]: the next occurrence of texts[k] at or after the current position (n: none).
  std::vector<size_t> next_at(texts.size(), 0);
  std::vector<bool> known(texts.size(), false);
  size_t start = 0;
  for (;;) {
    size_t best = n, which = 0;
    for (size_t k = 0; k < texts.size(); ++k) {
      if (!known[k] || (next_at[k] < start && next_at[k] != n)) {
        const void* hit = start < n ? memmem(s + start, n - start, texts[k].data(), texts[k].size())
                                    : nullptr;
        next_at[k] = hit ? static_cast<size_t>(static_cast<const uint8_t*>(hit) - s) : n;
        known[k] = true;
      }
      if (next_at[k] < best || (next_at[k] == best && best < n && texts[k].size() > texts[which].size()))
        best = next_at[k], which = k;
    }
    // The ordinary text before the special token is split on its own, like tiktoken does.
    encode_plain(s + start, best - start, out);
    if (best == n) break;
    out.push_back(ids[which]);
    start = best + texts[which].size();
  }
}

bool Encoder::decoded_size(const uint32_t* ids, size_t count, size_t* size, size_t* bad) const {
  const uint64_t* span = decode_span_.data();
  const size_t n_ids = decode_span_.size();
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    uint64_t sp = ids[i] < n_ids ? span[ids[i]] : 0;
    if (sp == 0) {
      *bad = i;
      return false;
    }
    total += sp & 0xFFFFFF;
  }
  *size = total;
  return true;
}

void Encoder::decode_into(const uint32_t* ids, size_t count, uint8_t* dst) const {
  const uint64_t* span = decode_span_.data();
  const uint8_t* arena = decode_arena_.data();
  for (size_t i = 0; i < count; ++i) {
    uint64_t sp = span[ids[i]];
    size_t len = sp & 0xFFFFFF;
    const uint8_t* src = arena + ((sp >> 24) & ((uint64_t(1) << 39) - 1));
    if (len <= 16)
      std::memcpy(dst, src, 16);  // both buffers have 16 bytes of slack
    else
      std::memcpy(dst, src, len);
    dst += len;
  }
}

}  // namespace bpe
}  // namespace kg
