// Training a byte-level BPE vocabulary, as GPT-2 and minbpe define it.
//
//   1. Split the corpus into pieces with the pattern and count how often each distinct piece
//      occurs (in parallel: each thread counts a share of the inputs, then the tables merge).
//   2. Every piece starts as its bytes (token ids 0..255). Count every adjacent pair of
//      tokens over all pieces, weighted by the piece's frequency (overlapping pairs count
//      separately, like minbpe's get_stats: "aaa" holds the pair (a, a) twice).
//   3. Repeat until the vocabulary is full or no pair is left: take the most frequent pair,
//      give it the next id (256, 257, ...), and replace its occurrences in every piece left
//      to right. Ties go to the pair whose (left id, right id) is smallest, so the result is
//      deterministic and independent of the thread count.
// Step 3 does not recount: pair counts live in a table updated by the differences each
// replacement makes, each pair remembers the pieces it occurs in, and a max-heap of
// (count, pair) with lazy deletion finds the next pair (counts only ever decrease for old
// pairs, so a popped entry whose count is out of date is pushed back with the true count).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bpe/splitter.h"

namespace kg {
namespace bpe {

struct TrainInput {
  const uint8_t* data = nullptr;  // text in memory, or
  size_t size = 0;
  std::string path;               // a file to read (when non-empty)
};

struct MergeRecord {
  uint32_t left, right, id;
  uint64_t count;  // how often the pair occurred when it was merged
};

struct TrainResult {
  std::vector<MergeRecord> merges;
  std::vector<std::string> tokens;  // bytes of every id: 256 single bytes, then the merges
  uint64_t pieces = 0;              // pieces in the corpus
  uint64_t distinct_pieces = 0;
  uint64_t bytes = 0;               // corpus size
};

// vocab_size counts the 256 byte tokens and the merges (special tokens come on top).
TrainResult train(const std::vector<TrainInput>& inputs, size_t vocab_size, const Splitter& pattern,
                  int threads);

}  // namespace bpe
}  // namespace kg
