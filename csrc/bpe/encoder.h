// Byte-level BPE encoding and decoding with tiktoken's exact semantics.
//
// Encoding a text: split it into pieces (pretokenize.h); a piece that is itself a token
// becomes that token; otherwise its bytes are merged pairwise, always merging the adjacent
// pair whose concatenation has the lowest rank (the leftmost such pair on ties), until no
// adjacent pair is a token. Three implementations give identical output:
//   version 1 "scan" (tiktoken's algorithm): after each merge, scan all pairs for the lowest
//             rank: O(n^2) for a piece of n bytes, the fastest for short pieces (<= 24 B);
//   version 2 "stack_heap": parts in a linked list, candidate pairs in a binary min-heap
//             keyed by (rank, position), stale ones skipped when popped: O(n log n), on
//             stack arrays, for medium pieces (<= 256 B: a Chinese sentence is one piece);
//   version 3 "heap": the same order from a min-heap of ranks with one bucket of positions
//             per rank: O(n log n) with few heap operations, for long pieces (a million
//             spaces is one piece, one bucket).
// Special tokens are matched as literal strings before splitting; the text between two
// special tokens is split on its own (so `$` in a pattern matches before a special token).
//
// A piece that is a token costs one hash lookup; lookups are batched with prefetches
// (encode_ordinary) so that their cache misses overlap. A piece that is not a token costs
// a merge with several lookups, each a likely cache miss in the 4 MB table, so each thread
// keeps a bounded cache (65536 entries, 8 MB) of recently merged pieces: text repeats
// its words. Per thread, so an Encoder is shared by many threads without locks.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpe/splitter.h"
#include "bpe/vocab.h"

namespace kg {
namespace bpe {

struct SpecialToken {
  std::string text;
  uint32_t id;
  // An added token (Hugging Face's added tokens that are not special, llama.cpp's
  // USER_DEFINED tokens): matched in every text, encode_ordinary's included, whatever is
  // allowed.
  bool always = false;
  // A token that only decodes (a GGUF byte-level vocabulary's normal token not written in the
  // byte-to-unicode alphabet, which llama.cpp's encoder can never produce): never matched.
  bool never = false;
};

// The special and added tokens of a vocabulary as a byte trie, to find them in a text in one
// pass however many there are (Qwen 2 has 290 added tokens, DeepSeek LLM 2,398: a search per
// token string would read the text that many times).
class SpecialTrie {
 public:
  void build(const std::vector<SpecialToken>& specials);
  // The earliest position >= from where a token k with enabled[k] starts (the longest one
  // there), with k in *which; n (and *which = specials.size()) when there is none.
  size_t find(const uint8_t* s, size_t n, size_t from, const std::vector<uint8_t>& enabled,
              size_t* which) const;

 private:
  struct Node {
    uint32_t first_edge = 0, edge_count = 0;
    int32_t token = -1;  // the special that ends here
  };
  std::vector<Node> nodes_;
  std::vector<std::pair<uint8_t, uint32_t>> edges_;  // (byte, child), sorted per node
  uint64_t first_byte_[4] = {0, 0, 0, 0};
  size_t count_ = 0;
};

enum class MergeAlgorithm : int { automatic = 0, scan = 1, heap = 2, stack_heap = 3 };

// Pieces of up to kScanSmallPiece bytes use the "scan" merge, up to kScanMaxPiece the
// "stack_heap" merge, longer ones the "heap" merge.
constexpr size_t kScanSmallPiece = 24;
constexpr size_t kScanMaxPiece = 256;
// The merge cache keeps pieces of up to this many bytes and tokens.
constexpr size_t kCacheMaxPiece = 46;
constexpr size_t kCacheMaxTokens = 15;

class Encoder {
 public:
  // Throws std::invalid_argument for duplicate ids or byte strings, empty special tokens, or
  // a special token id that is also a mergeable token id.
  // skip_unknown_bytes: a byte that has no token of its own is dropped from the piece before
  // merging (what Hugging Face tokenizers and llama.cpp do for a GGUF byte-level vocabulary
  // that lacks some bytes, e.g. SmolLM2's has no \x04); otherwise encoding it throws.
  Encoder(Vocab vocab, std::vector<SpecialToken> specials, Splitter pattern,
          bool skip_unknown_bytes = false);

  const Vocab& vocab() const { return vocab_; }
  const std::vector<SpecialToken>& specials() const { return specials_; }
  const Splitter& pattern() const { return pattern_; }
  bool skip_unknown_bytes() const { return skip_unknown_bytes_; }
  uint32_t max_token_value() const { return max_token_value_; }

  // Turns the per-thread merge cache off (tests check that it changes nothing).
  void set_cache(bool enabled) { use_cache_.store(enabled); }

  // Ordinary text only: special-token strings are encoded like any other text (added tokens,
  // `always`, are still matched).
  void encode_ordinary(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
    if (has_always_) encode(s, n, {}, out);
    else encode_plain(s, n, out);
  }
  // Splitting and merging only: no special or added token is matched.
  void encode_plain(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const;
  bool has_added_tokens() const { return has_always_; }
  // `allowed[k]` says whether specials()[k] is encoded as its special token when it occurs.
  void encode(const uint8_t* s, size_t n, const std::vector<uint8_t>& allowed,
              std::vector<uint32_t>& out) const;
  // BPE on one piece (no splitting). `readable` >= n bytes may be read from p.
  void encode_piece(const uint8_t* p, size_t n, size_t readable, std::vector<uint32_t>& out,
                    MergeAlgorithm algorithm = MergeAlgorithm::automatic) const;

  // Decoding: the bytes of token `id`, mergeable or special; false if there is no such id.
  bool token_bytes(uint32_t id, const uint8_t** data, size_t* size) const {
    if (vocab_.has(id)) {
      *data = vocab_.data(id);
      *size = vocab_.size_of(id);
      return true;
    }
    if (specials_.empty()) return false;
    auto it = special_by_id_.find(id);
    if (it == special_by_id_.end()) return false;
    const std::string& t = specials_[it->second].text;
    *data = reinterpret_cast<const uint8_t*>(t.data());
    *size = t.size();
    return true;
  }
  // Decoding in two passes: decoded_size() checks the ids and sums their lengths (returns
  // false and the index of the first unknown id in *bad), decode_into() writes the bytes to
  // dst, which must hold decoded_size() + kDecodeSlack bytes (short tokens are copied as one
  // 16-byte move).
  static constexpr size_t kDecodeSlack = 16;
  bool decoded_size(const uint32_t* ids, size_t count, size_t* size, size_t* bad) const;
  void decode_into(const uint32_t* ids, size_t count, uint8_t* dst) const;

  // The earliest occurrence at or after `from` of any of `strings` (the longest one when
  // several start there): its position, and its index in *which (strings.size() if none).
  static size_t find_first(const uint8_t* s, size_t n, size_t from,
                           const std::vector<std::string>& strings, size_t* which);

 private:
  void merge_scan(const uint8_t* p, size_t n, size_t readable, std::vector<uint32_t>& out) const;
  void merge_heap(const uint8_t* p, size_t n, size_t readable, std::vector<uint32_t>& out) const;
  void merge_stack_heap(const uint8_t* p, size_t n, size_t readable,
                        std::vector<uint32_t>& out) const;
  uint32_t part_token(const uint8_t* p, size_t n, size_t readable) const;

  // Every id (mergeable and special) -> (offset into decode_arena_ << 24) | length, or 0 for
  // an unused id: one load per token when decoding.
  std::vector<uint64_t> decode_span_;
  std::vector<uint8_t> decode_arena_;
  uint64_t id_;  // names this Encoder's entries in the per-thread merge cache
  std::atomic<bool> use_cache_{true};
  Vocab vocab_;
  std::vector<SpecialToken> specials_;
  std::unordered_map<uint32_t, size_t> special_by_id_;
  SpecialTrie trie_;
  Splitter pattern_;
  uint32_t max_token_value_ = 0;
  bool skip_unknown_bytes_ = false;
  bool has_unknown_byte_ = false;  // some byte value has no token
  bool has_always_ = false;        // some special token is an added token (always matched)
  uint8_t unknown_byte_[256] = {};  // 1 for the byte values without a token
};

}  // namespace bpe
}  // namespace kg
