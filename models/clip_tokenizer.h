// CLIP byte-level BPE tokenizer (vocab.json + merges.txt), matching transformers' CLIPTokenizer (the
// tokenizers-backed one of transformers 5): added tokens, NFC + white-space collapsing + lower-casing,
// CLIP's pre-tokenizer regex, byte-level mapping, BPE with "</w>" word ends, BOS/EOS, truncation
// (EOS kept last) and padding with the folder's pad token. Torch-free.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mmdit {

// Token ids padded to max_length plus the number of real tokens (BOS..EOS); attention mask is
// 1 for the first `length` positions.
struct TokenIds {
  std::vector<int64_t> ids;
  int64_t length = 0;
  std::vector<int64_t> attention_mask() const;
};

class ClipTokenizer {
 public:
  // Reads DIR/vocab.json, DIR/merges.txt and (optional) tokenizer_config.json / special_tokens_map.json.
  // Throws FileError (missing file) or FormatError (bad contents), naming the file.
  static ClipTokenizer load(const std::filesystem::path& dir);

  // Ids padded to max_length (>= 2): BOS, tokens truncated to max_length - 2, EOS, pad ids.
  std::vector<int64_t> encode(const std::string& text, int max_length = 77) const;
  TokenIds encode_full(const std::string& text, int max_length = 77) const;
  // The BPE ids of the text without BOS/EOS, truncation or padding.
  std::vector<int64_t> tokenize(const std::string& text) const;

  // The prompt's real tokens (no BOS/EOS/padding, none that reads as nothing) at their positions in the
  // max_length ids, with their text: what attention maps are made for.
  std::vector<std::pair<int64_t, std::string>> word_tokens(const std::string& text, int max_length) const;
  // The text of one token as it reads ("red" for "red</w>"), or "" for an unknown id.
  std::string token_text(int64_t id) const;

  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t vocab_size() const;  // largest id + 1

  ClipTokenizer(ClipTokenizer&&) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept;
  ~ClipTokenizer();

 private:
  struct Impl;
  explicit ClipTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmdit
