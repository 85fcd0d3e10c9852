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
