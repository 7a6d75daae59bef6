// Pre-tokenization: splitting text into the pieces that BPE merges inside.
//
// tiktoken runs a regular expression (fancy-regex, leftmost-first alternation, possessive
// quantifiers) over the text; every match is a piece. A general regex engine backtracks and
// re-tries alternatives at each position; for the two patterns that matter the alternatives
// can be decided by looking at one or two characters, so each pattern gets a hand-written
// scanner here: `piece_end(s, i, n)` returns where the piece starting at i ends. Each
// scanner is commented with the alternative it implements, in the regex's order, so it can
// be read against the pattern. tests/test_tokenizer_pretokenize.py checks the splits against
// tiktoken's regex engine.
//
// cl100k_base:
//   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//   |\s++$|\s*[\r\n]|\s+(?!\S)|\s
// GPT-2 (r50k_base, p50k_base):
//   '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
// Llama 3 (cl100k_base's pattern as tiktoken first published it, which Llama 3's and Hugging
// Face conversions' tokenizer.json carry):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
//   |\s*[\r\n]+|\s+(?!\S)|\s+
// It splits as cl100k except at the end of the text: without `\s++$`, white space that holds a
// CR or LF and runs to the end is cut after its last CR/LF (" \n " -> " \n", " ").
// Qwen 2: Llama 3's pattern with \p{N} (one number character per piece) for \p{N}{1,3}.
// whitespace (for the explainer's training walk-through):
//   \S+|\s+
// SmolLM2 ("smollm" in GGUF files; Digits(individual_digits=True) then ByteLevel in its
// tokenizer.json, two regexes in llama.cpp): every \p{N} character is a piece of its own, and
// the text between two of them is split by the GPT-2 pattern as a text of its own, so that
// white space before a digit is "at the end" ($, (?!\S)). As one regex (SMOLLM_PATTERN in
// kernelgpt/tokenizer/patterns.py; the tests check the scanner against it):
//   \p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s++(?:$|(?=\p{N}))|\s+(?!\S)|\s
//
// `$` is the end of the text being split (encode() splits the text between special tokens
// separately, as tiktoken does). Every character belongs to some piece: the pieces of a text
// concatenate to the text, which the scanners rely on (no unmatched gaps).
#pragma once
#include <cstddef>
#include <cstdint>

#include "bpe/regex.h"
#include "bpe/unicode.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace kg {
namespace bpe {

// `regex`: not a scanner; the Splitter runs its regular expressions (splitter.h).
enum class Pattern : int { cl100k = 0, gpt2 = 1, whitespace = 2, smollm = 3, llama3 = 4, qwen2 = 5,
                           regex = 6, o200k = 7 };

namespace detail {

// The end of the run of ASCII bytes c with kLo <= c <= kHi (c | 0x20 when kFold: A-Z counts
// as a-z) that starts at j (kHi < 0x80, so no byte of a multi-byte character is in the run).
// 16 bytes per step with SSE2 (every x86-64) or NEON: a word's end is found from a bit mask,
// without the branch per byte whose exit a CPU mispredicts at nearly every word.
// Whether byte c is in [kLo, kHi] (c | 0x20 when kFold); kHi < 0x80.
template <uint8_t kLo, uint8_t kHi, bool kFold>
KG_BPE_INLINE bool in_ascii_range(uint8_t c) {
  return static_cast<uint8_t>((kFold ? (c | 0x20) : c) - kLo) <= kHi - kLo;
}

template <uint8_t kLo, uint8_t kHi, bool kFold>
KG_BPE_INLINE size_t ascii_run_end(const uint8_t* s, size_t j, size_t n) {
  static_assert(kLo <= kHi && kHi < 0x80, "an ASCII range");
#if defined(__SSE2__)
  // c in [kLo, kHi] <=> int8(c - kLo + 0x80) < -128 + (kHi - kLo + 1) (SSE2 compares signed).
  const __m128i fold = _mm_set1_epi8(kFold ? 0x20 : 0);
  const __m128i shift = _mm_set1_epi8(static_cast<char>(0x80 - kLo));
  const __m128i limit = _mm_set1_epi8(static_cast<char>(-128 + (kHi - kLo + 1)));
  for (; j + 16 <= n; j += 16) {
    __m128i v = _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j)), fold);
    unsigned in = static_cast<unsigned>(
        _mm_movemask_epi8(_mm_cmplt_epi8(_mm_add_epi8(v, shift), limit)));
    if (in != 0xFFFFu) return j + static_cast<size_t>(__builtin_ctz(~in));
  }
#elif defined(__ARM_NEON)
  const uint8x16_t fold = vdupq_n_u8(kFold ? 0x20 : 0);
  const uint8x16_t lo = vdupq_n_u8(kLo), span = vdupq_n_u8(kHi - kLo);
  for (; j + 16 <= n; j += 16) {
    uint8x16_t v = vorrq_u8(vld1q_u8(s + j), fold);
    uint8x16_t out = vcgtq_u8(vsubq_u8(v, lo), span);  // 0xFF where c is not in the run
    // Four bits per byte (the "shift right and narrow" movemask).
    uint64_t bits = vget_lane_u64(
        vreinterpret_u64_u8(vshrn_n_u16(vreinterpretq_u16_u8(out), 4)), 0);
    if (bits) return j + static_cast<size_t>(__builtin_ctzll(bits) >> 2);
  }
#endif
  while (j < n && in_ascii_range<kLo, kHi, kFold>(s[j])) ++j;
  return j;
}

KG_BPE_INLINE size_t run_end(const uint8_t* s, size_t j, size_t n, uint8_t cls_mask) {
  while (j < n) {
    uint8_t c = s[j];
    if (c < 0x80) {  // ASCII fast path
      if (!(char_class(c) & cls_mask)) break;
      ++j;
      continue;
    }
    Char ch = char_at(s, j, n);
    if (!(ch.cls & cls_mask)) break;
    j += ch.len;
  }
  return j;
}

// End of a run of \p{L} starting at j: ASCII letters 16 at a time, other letters one by one.
KG_BPE_INLINE size_t letters_end(const uint8_t* s, size_t j, size_t n) {
  while (j < n) {
    if (s[j] < 0x80) {
      if (!in_ascii_range<'a', 'z', true>(s[j])) return j;
      j = ascii_run_end<'a', 'z', true>(s, j + 1, n);
      if (j >= n || s[j] < 0x80) return j;
    }
    Char ch = char_at(s, j, n);
    if (!(ch.cls & kLetter)) return j;
    j += ch.len;
  }
  return j;
}
inline size_t numbers_end(const uint8_t* s, size_t j, size_t n) { return run_end(s, j, n, kNumber); }

// End of a run of [^\s\p{L}\p{N}] (class kOther) starting at j.
KG_BPE_INLINE size_t others_end(const uint8_t* s, size_t j, size_t n) {
  while (j < n) {
    Char ch = char_at(s, j, n);
    if (ch.cls != kOther) break;
    j += ch.len;
  }
  return j;
}

KG_BPE_INLINE bool is_crlf(uint8_t c) { return c == '\r' || c == '\n'; }

// After a ', how many bytes of s[j..] the contraction takes: [sdmt]|ll|ve|re, or 0.
// case_insensitive: (?i:...) as in cl100k, where Unicode simple case folding makes 'S', and
// also U+017F LATIN SMALL LETTER LONG S, match 's' (verified against tiktoken).
KG_BPE_INLINE size_t contraction_len(const uint8_t* s, size_t j, size_t n, bool case_insensitive) {
  if (j >= n) return 0;
  auto lower = [&](uint8_t c) -> uint8_t {
    return case_insensitive && c >= 'A' && c <= 'Z' ? static_cast<uint8_t>(c + 32) : c;
  };
  uint8_t c = lower(s[j]);
  if (c == 's' || c == 'd' || c == 'm' || c == 't') return 1;
  if (case_insensitive && c == 0xC5 && j + 1 < n && s[j + 1] == 0xBF) return 2;  // U+017F
  if (j + 1 >= n) return 0;
  uint8_t d = lower(s[j + 1]);
  if ((c == 'l' && d == 'l') || (c == 'v' && d == 'e') || (c == 'r' && d == 'e')) return 2;
  return 0;
}

// The white-space alternatives, at a white-space character `a` at i:
//   \s++$  |  (crlf_rule) \s*[\r\n]  |  \s+(?!\S)  |  \s
// end_first = false drops the leading \s++$ (Llama 3's form, whose \s*[\r\n]+ comes first;
// \s+(?!\S) still takes a run that reaches the end).
inline size_t whitespace_end(const uint8_t* s, size_t i, size_t n, Char a, bool crlf_rule,
                             bool end_first = true) {
  size_t q = i, last = i;  // q: end of the white-space run; last: start of its last char
  while (q < n) {
    Char ch = char_at(s, q, n);
    if (!(ch.cls & kSpace)) break;
    last = q;
    q += ch.len;
  }
  if (q == n && end_first) return n;  // \s++$
  if (crlf_rule) {                    // \s*[\r\n]: up to the last CR or LF of the run
    for (size_t k = q; k > i; --k)
      if (is_crlf(s[k - 1])) return k;
  }
  if (q == n) return n;  // \s+(?!\S) at the end
  if (last > i) return last;  // \s+(?!\S): all but the last white-space character
  return i + a.len;           // \s
}

}  // namespace detail

// cl100k_base (kMaxDigits 3, kEndFirst), Llama 3 (3, !kEndFirst) and Qwen 2 (1, !kEndFirst):
// end of the piece that starts at i (i < n).
template <int kMaxDigits = 3, bool kEndFirst = true>
inline size_t cl100k_piece_end(const uint8_t* s, size_t i, size_t n) {
  using namespace detail;
  uint8_t c = s[i];
  // '(?i:[sdmt]|ll|ve|re)
  if (c == '\'') {
    size_t k = contraction_len(s, i + 1, n, true);
    if (k) return i + 1 + k;
  }
  Char a = char_at(s, i, n);
  // [^\r\n\p{L}\p{N}]?+\p{L}++ : a letter run, optionally led by one non-letter, non-number,
  // non-CR/LF character (a space, a tab, punctuation, ...).
  if (a.cls & kLetter) return letters_end(s, i + a.len, n);
  if (!(a.cls & kNumber) && !is_crlf(c) && i + a.len < n) {
    Char b = char_at(s, i + a.len, n);
    if (b.cls & kLetter) return letters_end(s, i + a.len + b.len, n);
  }
  // \p{N}{1,3}+ (cl100k), \p{N} (Qwen 2)
  if (a.cls & kNumber) {
    size_t j = i + a.len;
    for (int k = 1; k < kMaxDigits && j < n; ++k) {
      Char b = char_at(s, j, n);
      if (!(b.cls & kNumber)) break;
      j += b.len;
    }
    return j;
  }
  // ' ?[^\s\p{L}\p{N}]++[\r\n]*+' : punctuation run, optionally led by a space, then CR/LFs.
  {
    size_t j = i;
    Char b = a;
    if (c == ' ' && i + 1 < n) b = char_at(s, j = i + 1, n);
    if (b.cls == kOther) {
      j = others_end(s, j + b.len, n);
      while (j < n && is_crlf(s[j])) ++j;
      return j;
    }
  }
  // Only white space is left.
  return whitespace_end(s, i, n, a, true, kEndFirst);
}

// GPT-2 / r50k_base: end of the piece that starts at i (i < n).
inline size_t gpt2_piece_end(const uint8_t* s, size_t i, size_t n) {
  using namespace detail;
  uint8_t c = s[i];
  // '(?:[sdmt]|ll|ve|re)  (case-sensitive)
  if (c == '\'') {
    size_t k = contraction_len(s, i + 1, n, false);
    if (k) return i + 1 + k;
  }
  //  ?\p{L}++ |  ?\p{N}++ |  ?[^\s\p{L}\p{N}]++ : one class run, optionally led by a space.
  size_t j = (c == ' ' && i + 1 < n) ? i + 1 : i;
  Char b = char_at(s, j, n);
  if (b.cls & kLetter) return letters_end(s, j + b.len, n);
  if (b.cls & kNumber) return numbers_end(s, j + b.len, n);
  if (b.cls == kOther) return others_end(s, j + b.len, n);
  // \s++$ | \s+(?!\S) | \s
  return whitespace_end(s, i, n, char_at(s, i, n), false);
}

// \S+|\s+ : runs of non-white-space and of white space.
inline size_t whitespace_piece_end(const uint8_t* s, size_t i, size_t n) {
  bool space = char_at(s, i, n).cls & kSpace;
  size_t j = i;
  while (j < n) {
    Char ch = char_at(s, j, n);
    if (static_cast<bool>(ch.cls & kSpace) != space) break;
    j += ch.len;
  }
  return j;
}

// o200k_base (GPT-4o, o1, o3, GPT-5; o200k_harmony), tiktoken's pattern:
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// The two letter alternatives split words at case changes: U = [Lu Lt Lm Lo M] (may start a
// word), W = [Ll Lm Lo M] (may continue one); Lm, Lo and marks are in both, which is where a
// backtracking engine would back off. Worked out once here: "U* W+" from j ends at the end of
// the W run after the longest U run, or, if no W character follows that U run, just after the
// last character of the U run that is also in W (or fails if there is none). The general
// engine (regex.h) runs the same pattern; the tests check the two against each other.
namespace detail {

enum O200kClass : uint8_t { kO200kU = 1, kO200kW = 2, kO200kL = 4, kO200kN = 8, kO200kS = 16 };
// General category (the order of enum Category) -> U / W / L / N bits.
constexpr uint8_t kO200kOfCategory[32] = {
    kO200kU | kO200kL,            kO200kW | kO200kL,            kO200kU | kO200kL,  // Lu Ll Lt
    kO200kU | kO200kW | kO200kL,  kO200kU | kO200kW | kO200kL,                      // Lm Lo
    kO200kU | kO200kW,            kO200kU | kO200kW,            kO200kU | kO200kW,  // Mn Mc Me
    kO200kN,                      kO200kN,                      kO200kN};           // Nd Nl No

struct O200kChar {
  uint32_t len;
  uint8_t cls;
};

// ASCII: A-Z U|L, a-z W|L, 0-9 N, \t \n \v \f \r and space S, the rest 0.
constexpr uint8_t o200k_ascii(uint8_t c) {
  return c >= 'A' && c <= 'Z' ? (kO200kU | kO200kL)
         : c >= 'a' && c <= 'z' ? (kO200kW | kO200kL)
         : c >= '0' && c <= '9' ? kO200kN
         : (c == ' ' || (c >= '\t' && c <= '\r')) ? kO200kS : 0;
}

// o200k_ascii as a table: one load instead of a chain of compares.
struct O200kAsciiTable {
  uint8_t cls[128];
  constexpr O200kAsciiTable() : cls() {
    for (int c = 0; c < 128; ++c) cls[c] = o200k_ascii(static_cast<uint8_t>(c));
  }
};
inline constexpr O200kAsciiTable kO200kAscii{};

KG_BPE_INLINE O200kChar o200k_char(const uint8_t* s, size_t i, size_t n) {
  if (s[i] < 0x80) return {1, kO200kAscii.cls[s[i]]};
  Char c = char_at(s, i, n);
  uint8_t f = category_flags(c.cp);
  return {c.len, static_cast<uint8_t>(kO200kOfCategory[f & kCategoryMask] |
                                      ((f & kWhiteSpaceFlag) ? kO200kS : 0))};
}

constexpr size_t kNoMatch = ~size_t(0);

// End of "U* W+" starting at j, or kNoMatch.
KG_BPE_INLINE size_t o200k_word_end(const uint8_t* s, size_t j, size_t n) {
  size_t p = j, last_w_end = kNoMatch;
  while (p < n) {
    if (in_ascii_range<'A', 'Z', false>(s[p])) {  // ASCII capitals (U, not W): in bulk
      p = ascii_run_end<'A', 'Z', false>(s, p + 1, n);
      continue;
    }
    O200kChar c = o200k_char(s, p, n);
    if (!(c.cls & kO200kU)) {
      if (!(c.cls & kO200kW)) break;
      p += c.len;  // an Ll after the U run: W+ runs to the end of the W run
      while (p < n) {
        if (in_ascii_range<'a', 'z', false>(s[p])) {  // ASCII small letters (W): in bulk
          p = ascii_run_end<'a', 'z', false>(s, p + 1, n);
          continue;
        }
        O200kChar d = o200k_char(s, p, n);
        if (!(d.cls & kO200kW)) break;
        p += d.len;
      }
      return p;
    }
    p += c.len;
    if (c.cls & kO200kW) last_w_end = p;
  }
  return last_w_end;
}

inline size_t o200k_run_end(const uint8_t* s, size_t j, size_t n, uint8_t any_of, bool want) {
  while (j < n) {
    O200kChar c = o200k_char(s, j, n);
    if (static_cast<bool>(c.cls & any_of) != want) break;
    j += c.len;
  }
  return j;
}

}  // namespace detail

inline size_t o200k_piece_end(const uint8_t* s, size_t i, size_t n) {
  using namespace detail;
  O200kChar a = o200k_char(s, i, n);
  const uint8_t c0 = s[i];
  // [^\r\n\p{L}\p{N}]: the optional leading character of the letter alternatives
  const bool lead = !(a.cls & (kO200kL | kO200kN)) && c0 != '\r' && c0 != '\n';
  size_t e = kNoMatch;
  if (lead && i + a.len < n) e = o200k_word_end(s, i + a.len, n);        // 1, with lead
  if (e == kNoMatch && (a.cls & (kO200kU | kO200kW))) e = o200k_word_end(s, i, n);  // 1
  if (e == kNoMatch && lead && i + a.len < n) {                            // 2, with lead
    size_t u = o200k_run_end(s, i + a.len, n, kO200kU, true);
    if (u > i + a.len) e = u;
  }
  if (e == kNoMatch && (a.cls & kO200kU)) e = o200k_run_end(s, i, n, kO200kU, true);  // 2
  if (e != kNoMatch) {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)?
    if (e < n && s[e] == '\'') {
      size_t k = contraction_len(s, e + 1, n, true);
      if (k) e += 1 + k;
    }
    return e;
  }
  // \p{N}{1,3}
  if (a.cls & kO200kN) {
    size_t j = i + a.len;
    for (int k = 1; k < 3 && j < n; ++k) {
      O200kChar b = o200k_char(s, j, n);
      if (!(b.cls & kO200kN)) break;
      j += b.len;
    }
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n/]*
  constexpr uint8_t kNotOther = kO200kL | kO200kN | kO200kS;
  size_t j = kNoMatch;
  if (c0 == ' ' && i + 1 < n && !(o200k_char(s, i + 1, n).cls & kNotOther)) j = i + 1;
  else if (!(a.cls & kNotOther)) j = i;
  if (j != kNoMatch) {
    j = o200k_run_end(s, j, n, kNotOther, false);
    while (j < n && (s[j] == '\r' || s[j] == '\n' || s[j] == '/')) ++j;
    return j;
  }
  // \s*[\r\n]+ | \s+(?!\S) | \s+ : as Llama 3's tail
  return whitespace_end(s, i, n, char_at(s, i, n), true, false);
}

// SmolLM2: calls f(begin, end) for every piece of s[0, n). The GPT-2 scanner runs on each
// digit-free segment with the segment's end as its n: that is exactly "split the digits off
// first, then pre-tokenize what is between them on its own".
template <class F>
inline void smollm_pieces(const uint8_t* s, size_t n, F&& f) {
  using namespace detail;
  size_t i = 0;
  while (i < n) {
    size_t e = i;  // the segment [i, e) ends at the next number character (or n)
    size_t digit_len = 0;
    while (e < n) {
      if (s[e] < 0x80) {  // ASCII fast path
        if (char_class(s[e]) & kNumber) { digit_len = 1; break; }
        ++e;
        continue;
      }
      Char ch = char_at(s, e, n);
      if (ch.cls & kNumber) { digit_len = ch.len; break; }
      e += ch.len;
    }
    while (i < e) { size_t p = gpt2_piece_end(s, i, e); f(i, p); i = p; }
    if (digit_len) { f(e, e + digit_len); i = e + digit_len; }
  }
}

// Calls f(begin, end) for every piece of s[0, n), in order.
template <class F>
inline void for_each_piece(Pattern pattern, const uint8_t* s, size_t n, F&& f) {
  size_t i = 0;
  switch (pattern) {
    case Pattern::cl100k:
      while (i < n) { size_t e = cl100k_piece_end<3, true>(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::llama3:
      while (i < n) { size_t e = cl100k_piece_end<3, false>(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::qwen2:
      while (i < n) { size_t e = cl100k_piece_end<1, false>(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::gpt2:
      while (i < n) { size_t e = gpt2_piece_end(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::whitespace:
      while (i < n) { size_t e = whitespace_piece_end(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::smollm:
      smollm_pieces(s, n, f);
      break;
    case Pattern::o200k:
      while (i < n) { size_t e = o200k_piece_end(s, i, n); f(i, e); i = e; }
      break;
    case Pattern::regex:  // the Splitter never asks
      break;
  }
}

// A position where every pattern above is guaranteed to start a piece, at or after `from`
// (or n): just after a '\n' that sits between an ASCII character that is not white space and
// a character that is not white space ("x\ny"). Then the '\n' is a piece of its own (or the
// end of a punctuation piece in cl100k) whether or not the text continues after it, so a
// chunk ending there splits exactly like the whole text. Used to cut large texts into chunks
// that threads split independently with the same result.
inline size_t next_safe_cut(const uint8_t* s, size_t from, size_t n) {
  for (size_t i = from < 1 ? 1 : from; i + 1 < n; ++i) {
    if (s[i] == '\n' && s[i - 1] < 0x80 && !(char_class(s[i - 1]) & kSpace) &&
        !(char_at(s, i + 1, n).cls & kSpace))
      return i + 1;
  }
  return n;
}

}  // namespace bpe
}  // namespace kg
