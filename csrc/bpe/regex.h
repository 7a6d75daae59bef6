// The general pre-tokenizer: a small backtracking regular-expression engine for the patterns
// BPE tokenizers split text with, and a pipeline of such patterns (Hugging Face's Sequence of
// Split pre-tokenizers, llama.cpp's `regex_exprs`).
//
// pretokenize.h has one hand-written scanner per hot pattern (cl100k, GPT-2, Llama 3, ...);
// every other pattern (o200k's case-aware words, DeepSeek's literal CJK ranges, Falcon's
// punctuation runs, a tokenizer.json's Split regex) runs here. What the engine reads is the
// regex dialect of those patterns (Perl / Oniguruma / Rust fancy-regex, which agree on it):
//
//   alternation a|b (leftmost first)          groups (...), (?:...), (?<name>...)
//   classes [...] [^...] with ranges          (?i:...) and (?i) (case-insensitive, Unicode
//   \p{L} \p{Lu} \p{M} \p{P} ... \P{..}        simple case folding: 's' also matches 'S', U+017F)
//   \s \S \d \D \w \W . \r \n \t \xHH \x{H}   quantifiers * + ? {n} {n,} {n,m}, each greedy,
//   \uHHHH, escaped punctuation                 lazy (?) or possessive (+)
//   lookahead (?=...) (?!...)                 atomic groups (?>...)
//   lookbehind (?<=...) (?<!...) of fixed length   anchors ^ \A (start), $ \z (end of the
//   \b \B (Unicode word boundary)                 text being split), \Z
//
// Anything else (backreferences, \p{Han} and other scripts, nested classes) is refused with a
// RegexError naming it, never run approximately. `$` is the end of the text being split, as
// in tiktoken (Rust) and in the piece-by-piece splitting of Hugging Face and llama.cpp.
//
// Matching is a backtracking search over the compiled graph: a node is a character set, an
// alternation, a repeat, a lookaround, an atomic group or an assertion, each with the index of
// the node after it. A repeat of a single character set (\p{L}+, \s*, [^\r\n]?: almost every
// repeat in these patterns) is matched by one scan and backs off from its longest run; other
// repeats iterate through continuations. Splitting: at each position, the first match in the
// pattern's priority order that is not empty is a piece; text no match starts in ("gaps")
// becomes pieces too, as Hugging Face's Split(behavior="Isolated") and llama.cpp keep it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bpe/unicode.h"

namespace kg {
namespace bpe {

// Unicode general categories, in the order of the generated tables (unicode_categories.cpp).
enum Category : uint8_t {
  kLu, kLl, kLt, kLm, kLo, kMn, kMc, kMe, kNd, kNl, kNo, kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo, kZs, kZl, kZp, kCc, kCf, kCs, kCo, kCn
};
constexpr uint8_t kCategoryMask = 0x1F;
constexpr uint8_t kWhiteSpaceFlag = 0x20;

extern const uint16_t kCategoryStage1[0x110000 / 128];
extern const uint8_t kCategoryStage2[][128];
extern const uint32_t kCaseOrbitCount;
extern const uint32_t kCaseOrbitStart[];
extern const uint32_t kCaseOrbitMembers[];

// General category | kWhiteSpaceFlag of a code point; a byte that is not valid UTF-8
// (cp 0xFFFFFFFF from char_at) is unassigned (Cn) and not white space.
KG_BPE_INLINE uint8_t category_flags(uint32_t cp) {
  if (cp >= 0x110000) return kCn;
  return kCategoryStage2[kCategoryStage1[cp >> 7]][cp & 127];
}

class RegexError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A set of code points: a [...] class, a \p{..}, a literal, `.`. The union of its items,
// negated if `negated`; code points below 128 are answered from a precomputed bitmap.
struct CharSet {
  struct Item {
    uint32_t categories = 0;  // bit c: general category c is in
    bool space = false;       // \s is in
    bool negated = false;     // the item is the complement (\S, \P{L}, \D, \W)
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // [first, last] code points
  };
  std::vector<Item> items;
  bool negated = false;
  uint64_t ascii[2] = {0, 0};

  bool test_slow(uint32_t cp) const;
  KG_BPE_INLINE bool test(uint32_t cp) const {
    if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
    return test_slow(cp);
  }
  void finalize();  // fills `ascii`
};

class Regex;

// What a split has learned about a top-level greedy repeat of one character set (\s+ in
// "\s+$"): from any start in [start_lo, run_end) its run ends at run_end, and what follows
// the repeat fails at every position in [fail_lo, run_end]. A later start inside the same run
// then fails at once instead of scanning and backing off again, which keeps such patterns
// linear on long runs (a million spaces before a character "\s+$" cannot end at).
struct RepeatMemo {
  size_t start_lo = ~size_t(0), run_end = 0, fail_lo = ~size_t(0);
};

// This thread's matching state, taken once per split (or once per pipeline run: the stages'
// splits of each piece reuse it): in a shared library every thread_local access is a call,
// which per piece would cost more than splitting it. It also starts the thread's budget of
// backtracking steps: 200 per byte of `bytes`, after which a match raises RegexError.
struct RegexContext {
  std::vector<size_t>* stack;  // positions of single-set repeat runs (backing off)
  uintptr_t floor;             // matching refuses to use the stack below this address
  void* budget;                // the thread's step budget (regex.cpp)
  void* memo;                  // the thread's repeat memo slots (regex.cpp)
};
RegexContext regex_context(size_t bytes);

// One split's matcher (a text s[0, n)).
class RegexSearch {
 public:
  RegexSearch(const Regex& re, const RegexContext& ctx, const uint8_t* s, size_t n);
  // The end of the first (highest-priority) match starting at i, or false.
  bool match_at(size_t i, size_t* end);

 private:
  const Regex& re_;
  const RegexContext& ctx_;
  const uint8_t* s_;
  size_t n_;
  uint64_t scope_;  // tags this split's repeat memo entries
};

class Regex {
 public:
  // Throws RegexError naming what it cannot read.
  explicit Regex(const std::string& pattern);
  const std::string& pattern() const { return pattern_; }

  // Calls f(begin, end) for every piece of s[0, n): the matches and the gaps between them.
  template <class F>
  void for_each_piece(const uint8_t* s, size_t n, F&& f) const {
    RegexContext ctx = regex_context(n);
    split_with(ctx, s, n, f);
  }
  // The same with a context already taken (a pipeline's later stages).
  template <class F>
  void split_with(const RegexContext& ctx, const uint8_t* s, size_t n, F&& f) const;

  // The end of the first (highest-priority) match starting at i, or false. Lookbehind and \b
  // see s[0, i); $ and lookahead see up to n.
  bool match_at(const uint8_t* s, size_t n, size_t i, size_t* end) const;

  enum NodeKind : uint8_t { kSet, kEmpty, kAlt, kRepeat, kLook, kAtomic, kAssert };
  enum RepeatMode : uint8_t { kGreedy, kLazy, kPossessive };
  enum AssertKind : uint8_t { kStart, kEnd, kEndZ, kLineStart, kLineEnd, kWordBoundary,
                              kNotWordBoundary };
  struct Node {
    NodeKind kind = kEmpty;
    int next = -1;   // the node after this one; -1: the end of the enclosing sub-expression
    int set = -1;    // kSet; kRepeat whose body is one character set
    int body = -1;   // kRepeat, kLook, kAtomic: the first node of the body
    std::vector<int> alts;  // kAlt: the first node of each alternative, in priority order
    int min = 0, max = -1;  // kRepeat; max -1: unbounded
    RepeatMode mode = kGreedy;
    bool ahead = true, negate = false;  // kLook
    int behind = 0;  // kLook behind: the body's length in characters
    // kRepeat whose body is a straight chain of character sets and one-character lookaheads
    // (\d{3} in (?:\d{3})*, (?=[\p{L}])[^a-z]): matched iteration by iteration in a loop,
    // like a single-set repeat, instead of through continuations (no stack depth per
    // iteration). step: the set; peek: 0 consumes a character, 1 checks the next one is in
    // the set, 2 that it is not.
    struct ChainStep {
      int set;
      uint8_t peek;
    };
    std::vector<ChainStep> chain;
    AssertKind assert_kind = kStart;
  };

 private:
  friend struct RegexParser;
  friend struct RegexMatcher;
  friend class RegexSearch;
  std::string pattern_;
  std::vector<Node> nodes_;
  std::vector<CharSet> sets_;
  int start_ = -1;
  // The set every non-empty match starts with, when the pattern can only match by consuming
  // a character first (no assertion or lookaround before it); positions outside it are
  // skipped without running the matcher.
  bool has_first_ = false;
  uint64_t first_ascii_[2] = {0, 0};
  std::vector<int> first_sets_;
  KG_BPE_INLINE bool may_start(uint32_t cp) const {
    if (!has_first_) return true;
    if (cp < 128) return (first_ascii_[cp >> 6] >> (cp & 63)) & 1;
    for (int s : first_sets_)
      if (sets_[s].test(cp)) return true;
    return false;
  }
};

// Patterns applied one after the other: the first splits the text, the second splits each of
// those pieces as a text of its own, and so on (Hugging Face's Sequence of Splits).
class RegexPipeline {
 public:
  explicit RegexPipeline(const std::vector<std::string>& patterns);
  const std::vector<Regex>& stages() const { return stages_; }
  std::vector<std::string> patterns() const;

  template <class F>
  void for_each_piece(const uint8_t* s, size_t n, F&& f) const {
    RegexContext ctx = regex_context(n * stages_.size());
    split(ctx, 0, s, 0, n, f);
  }

 private:
  template <class F>
  void split(const RegexContext& ctx, size_t stage, const uint8_t* s, size_t b, size_t e,
             F& f) const {
    if (stage == stages_.size()) {
      f(b, e);
      return;
    }
    stages_[stage].split_with(ctx, s + b, e - b, [&](size_t pb, size_t pe) {
      split(ctx, stage + 1, s, b + pb, b + pe, f);
    });
  }
  std::vector<Regex> stages_;
};

template <class F>
void Regex::split_with(const RegexContext& ctx, const uint8_t* s, size_t n, F&& f) const {
  RegexSearch search(*this, ctx, s, n);
  size_t i = 0, gap = 0;
  while (i < n) {
    Char c = char_at(s, i, n);
    size_t end;
    if (may_start(c.cp) && search.match_at(i, &end) && end > i) {
      if (gap < i) f(gap, i);
      f(i, end);
      i = gap = end;
    } else {
      i += c.len;
    }
  }
  if (gap < n) f(gap, n);
}

}  // namespace bpe
}  // namespace kg
