// SentencePiece BPE (GGUF `tokenizer.ggml.model = "llama"`: Llama 2, Mistral, Phi-3, TinyLlama,
// Baichuan), as llama.cpp's SPM tokenizer runs it.
//
// A text fragment (the text between added / special tokens) gets a leading space when the
// model says add_space_prefix and the fragment starts the text or follows a token; every
// space becomes U+2581 "▁". Then the fragment is cut into UTF-8 characters and the adjacent
// pair whose concatenation is a piece of the vocabulary with the highest score is merged, the
// leftmost on ties, until no pair makes a piece. A final symbol that is a piece is its id; one
// that is not (a character the vocabulary lacks) becomes its bytes as <0xNN> tokens (byte
// fallback), or the unknown token where the vocabulary has no byte tokens.
//
// Only normal and user-defined pieces are merge results (control, unknown, byte and unused
// pieces are not, as in sentencepiece itself: "<s>" in the text stays three characters).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpe/encoder.h"
#include "bpe/vocab.h"

namespace kg {
namespace bpe {

class SpmEncoder {
 public:
  enum TokenType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4,
                             kUnused = 5, kByte = 6 };
  // texts[i], scores[i], types[i]: token i. Throws std::invalid_argument for mismatched
  // lengths, duplicate normal pieces, a byte token not spelled <0xNN>.
  SpmEncoder(const std::vector<std::string>& texts, std::vector<float> scores,
             std::vector<uint8_t> types, bool add_space_prefix, uint32_t unknown_id);

  // `allowed[k]`: whether control token k (in control_tokens() order) is matched in the text;
  // user-defined tokens always are.
  void encode(const uint8_t* s, size_t n, const std::vector<uint8_t>& allowed,
              std::vector<uint32_t>& out) const;
  // One fragment (no token matching): escape, merge, fall back to bytes.
  void encode_fragment(const uint8_t* s, size_t n, bool prefix_space,
                       std::vector<uint32_t>& out) const;

  // The bytes token `id` stands for: "▁" as a space, <0xNN> as the byte, others as written.
  bool token_bytes(uint32_t id, std::string* out) const;
  size_t size() const { return texts_.size(); }
  const std::vector<std::string>& texts() const { return texts_; }
  const std::vector<uint8_t>& types() const { return types_; }
  const std::vector<float>& scores() const { return scores_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  uint32_t unknown_id() const { return unknown_id_; }
  // The control tokens (matchable when allowed), in id order.
  const std::vector<SpecialToken>& control_tokens() const { return control_; }

 private:
  uint32_t find_piece(const uint8_t* p, size_t n) const;  // a merge result, or kNoToken
  std::vector<std::string> texts_;
  std::vector<float> scores_;
  std::vector<uint8_t> types_;
  bool add_space_prefix_;
  uint32_t unknown_id_;
  Vocab pieces_;                   // normal and user-defined pieces (▁-escaped UTF-8) -> id
  uint32_t byte_token_[256];       // <0xNN> -> id, or kNoToken
  std::vector<SpecialToken> control_;
  std::vector<SpecialToken> added_;  // user-defined tokens, matched in every text
  std::vector<SpecialToken> matchable_;  // added_ then control_ (the trie's order)
  SpecialTrie trie_;
};

}  // namespace bpe
}  // namespace kg
