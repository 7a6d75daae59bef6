// SentencePiece BPE (see spm.h).
#include "bpe/spm.h"

#include <queue>
#include <stdexcept>

namespace kg {
namespace bpe {

namespace {

constexpr char kSpaceMarker[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a "<0xNN>" piece, or -1.
int byte_of(const std::string& t) {
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
  int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

SpmEncoder::SpmEncoder(const std::vector<std::string>& texts, std::vector<float> scores,
                       std::vector<uint8_t> types, bool add_space_prefix, uint32_t unknown_id)
    : texts_(texts),
      scores_(std::move(scores)),
      types_(std::move(types)),
      add_space_prefix_(add_space_prefix),
      unknown_id_(unknown_id) {
  if (scores_.size() != texts_.size() || types_.size() != texts_.size())
    throw std::invalid_argument("SentencePiece vocabulary: " + std::to_string(texts_.size()) +
                                " tokens, " + std::to_string(scores_.size()) + " scores and " +
                                std::to_string(types_.size()) + " token types");
  for (int b = 0; b < 256; ++b) byte_token_[b] = kNoToken;
  for (size_t i = 0; i < texts_.size(); ++i) {
    const std::string& t = texts_[i];
    const uint32_t id = static_cast<uint32_t>(i);
    switch (types_[i]) {
      case kNormal:
      case kUserDefined:
        if (t.empty()) throw std::invalid_argument("token " + std::to_string(i) + " is empty");
        pieces_.add(reinterpret_cast<const uint8_t*>(t.data()), t.size(), id);
        if (types_[i] == kUserDefined) added_.push_back({t, id, true});
        break;
      case kByte: {
        int b = byte_of(t);
        if (b < 0)
          throw std::invalid_argument("byte token " + std::to_string(i) + " ('" + t +
                                      "') is not written <0xNN>");
        if (byte_token_[b] == kNoToken) byte_token_[b] = id;
        break;
      }
      case kControl:
        if (!t.empty()) control_.push_back({t, id});
        break;
      case kUnknown:
      case kUnused:
        break;
      default:
        throw std::invalid_argument("token " + std::to_string(i) + " has type " +
                                    std::to_string(types_[i]) + ", not 1..6");
    }
  }
  pieces_.finalize();  // throws naming a duplicate piece
  matchable_ = added_;
  matchable_.insert(matchable_.end(), control_.begin(), control_.end());
  trie_.build(matchable_);
  if (unknown_id_ != kNoToken && unknown_id_ >= texts_.size())
    throw std::invalid_argument("the unknown token id is out of range");
}

uint32_t SpmEncoder::find_piece(const uint8_t* p, size_t n) const { return pieces_.find(p, n); }

void SpmEncoder::encode_fragment(const uint8_t* s, size_t n, bool prefix_space,
                                 std::vector<uint32_t>& out) const {
  // The escaped text: an optional leading "▁", every ' ' as "▁".
  std::string text;
  text.reserve(n + 3 + n / 2);
  if (prefix_space) text += kSpaceMarker;
  for (size_t i = 0; i < n; ++i) {
    if (s[i] == ' ') text += kSpaceMarker;
    else text += static_cast<char>(s[i]);
  }
  if (text.empty()) return;
  const uint8_t* t = reinterpret_cast<const uint8_t*>(text.data());
  const size_t m = text.size();
  // Symbols: UTF-8 characters (a byte that does not start a valid sequence is one symbol).
  struct Symbol {
    uint32_t begin, len;
    int prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(m);
  for (size_t i = 0; i < m;) {
    Char c = char_at(t, i, m);
    int idx = static_cast<int>(sym.size());
    sym.push_back({static_cast<uint32_t>(i), c.len, idx - 1, -1});
    if (idx > 0) sym[idx - 1].next = idx;
    i += c.len;
  }
  struct Bigram {
    float score;
    int left, right;
    uint32_t size;
  };
  // Highest score first; on ties the leftmost pair (llama.cpp's comparator).
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    uint32_t size = sym[left].len + sym[right].len;
    uint32_t id = find_piece(t + sym[left].begin, size);
    if (id == kNoToken) return;
    queue.push({scores_[id], left, right, size});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i - 1), static_cast<int>(i));
  while (!queue.empty()) {
    Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = 0; i >= 0; i = sym[i].next) {
    const Symbol& x = sym[i];
    uint32_t id = find_piece(t + x.begin, x.len);
    if (id != kNoToken) {
      out.push_back(id);
      continue;
    }
    for (uint32_t k = 0; k < x.len; ++k) {  // byte fallback
      uint32_t b = byte_token_[t[x.begin + k]];
      if (b == kNoToken) {
        if (unknown_id_ == kNoToken)
          throw std::invalid_argument("the vocabulary has no piece, byte token or unknown token "
                                      "for a character of the text");
        out.push_back(unknown_id_);  // one unknown token for the whole character
        break;
      }
      out.push_back(b);
    }
  }
}

void SpmEncoder::encode(const uint8_t* s, size_t n, const std::vector<uint8_t>& allowed,
                        std::vector<uint32_t>& out) const {
  std::vector<uint8_t> enabled(matchable_.size(), 0);
  bool any = false;
  for (size_t k = 0; k < matchable_.size(); ++k) {
    size_t c = k - added_.size();  // index among the control tokens
    enabled[k] = k < added_.size() || (c < allowed.size() && allowed[c]);
    any |= enabled[k] != 0;
  }
  // Fragments alternate with tokens, and llama.cpp prefixes a fragment with a space when it
  // starts the text or follows a token: every fragment.
  size_t start = 0;
  for (;;) {
    size_t which = 0;
    size_t at = any ? trie_.find(s, n, start, enabled, &which) : n;
    if (at > start) encode_fragment(s + start, at - start, add_space_prefix_, out);
    if (at >= n) break;
    out.push_back(matchable_[which].id);
    start = at + matchable_[which].text.size();
  }
}

bool SpmEncoder::token_bytes(uint32_t id, std::string* out) const {
  if (id >= texts_.size()) return false;
  const std::string& t = texts_[id];
  if (types_[id] == kByte) {
    out->push_back(static_cast<char>(byte_of(t)));
    return true;
  }
  if (types_[id] != kNormal && types_[id] != kUserDefined) {
    out->append(t);
    return true;
  }
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, 3, kSpaceMarker) == 0) {
      out->push_back(' ');
      i += 3;
    } else {
      out->push_back(t[i++]);
    }
  }
  return true;
}

}  // namespace bpe
}  // namespace kg
