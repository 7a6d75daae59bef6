// How an Encoder cuts text into pieces: one of the hand-written scanners (pretokenize.h) or a
// pipeline of regular expressions run by the general engine (regex.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "bpe/pretokenize.h"
#include "bpe/regex.h"

namespace kg {
namespace bpe {

struct Splitter {
  Pattern pattern = Pattern::cl100k;            // when `regex` is null
  std::shared_ptr<const RegexPipeline> regex;   // the general engine, when set

  Splitter() = default;
  Splitter(Pattern p) : pattern(p) {}  // NOLINT: a scanner is a splitter
  explicit Splitter(std::shared_ptr<const RegexPipeline> r) : regex(std::move(r)) {}

  // Calls f(begin, end) for every piece of s[0, n), in order.
  template <class F>
  void for_each_piece(const uint8_t* s, size_t n, F&& f) const {
    if (regex) regex->for_each_piece(s, n, f);
    else bpe::for_each_piece(pattern, s, n, f);
  }

  // A position at or after `from` where a chunk may end and split exactly like the whole text
  // (next_safe_cut), or n. Arbitrary patterns give no such guarantee: n.
  size_t safe_cut(const uint8_t* s, size_t from, size_t n) const {
    return regex ? n : next_safe_cut(s, from, n);
  }
};

}  // namespace bpe
}  // namespace kg
