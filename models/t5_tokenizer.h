// T5 Unigram tokenizer matching transformers' T5TokenizerFast (tokenizers-backed T5Tokenizer of
// transformers 5): added tokens, the Precompiled (sentencepiece charsmap) normalizer, white-space split,
// Metaspace ("▁" prepended, split), Unigram Viterbi, "</s>" appended, truncation and padding with id 0.
// Vocabulary from spiece.model (through the sentencepiece library) or, when the folder only has it,
// tokenizer.json. Torch-free.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/clip_tokenizer.h"  // TokenIds

namespace mmdit {

class T5Tokenizer {
 public:
  // Reads DIR/spiece.model, else DIR/tokenizer.json; added tokens from tokenizer_config.json.
  // Throws FileError (neither file) or FormatError (bad contents), naming the file.
  static T5Tokenizer load(const std::filesystem::path& dir);

  // Ids padded with pad_id() to max_length (>= 1): tokens truncated to max_length - 1, then EOS.
  std::vector<int64_t> encode(const std::string& text, int max_length) const;
  TokenIds encode_full(const std::string& text, int max_length) const;
  std::vector<int64_t> tokenize(const std::string& text) const;  // without EOS/truncation/padding

  // The prompt's real tokens (no BOS/EOS/padding, none that reads as nothing) at their positions in the
  // max_length ids, with their text: what attention maps are made for.
  std::vector<std::pair<int64_t, std::string>> word_tokens(const std::string& text, int max_length) const;
  // The text of one token as it reads ("red" for "▁red"), or "" for an unknown id.
  std::string token_text(int64_t id) const;

  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t unk_id() const;
  int64_t vocab_size() const;  // largest id + 1 (including added tokens)

  T5Tokenizer(T5Tokenizer&&) noexcept;
  T5Tokenizer& operator=(T5Tokenizer&&) noexcept;
  ~T5Tokenizer();

 private:
  struct Impl;
  explicit T5Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmdit
