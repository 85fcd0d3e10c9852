// Pieces shared by the CLIP and T5 tokenizers (torch-free): reading JSON files with one-line errors,
// the added-token table of tokenizer_config.json and splitting text on added (special) tokens the way
// Hugging Face tokenizers does (leftmost-longest match).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mmdit::tok {

// Parses a JSON file; FileError when missing/unreadable, FormatError when not valid JSON.
nlohmann::json read_json(const std::filesystem::path& path);
std::string read_file(const std::filesystem::path& path);  // whole file, FileError when unreadable

struct AddedToken {
  std::u32string content;
  int64_t id = 0;
  bool normalized = false;  // matched after the normalizer instead of on the raw text
};

// The "added_tokens_decoder" entries of tokenizer_config.json (empty when the file or key is absent).
std::vector<AddedToken> read_added_tokens(const std::filesystem::path& dir);

// A token string named in tokenizer_config.json or special_tokens_map.json under `key` (a string or a
// {"content": ...} object); empty when absent.
std::string special_token(const std::filesystem::path& dir, const std::string& key);

// A part of the text: either an added token (id >= 0) or plain text to tokenize (id < 0).
struct Segment {
  std::u32string text;
  int64_t id = -1;
};

// Splits `text` on the occurrences of `tokens` whose `normalized` flag equals `normalized`,
// leftmost-longest as tokenizers' AddedVocabulary does.
std::vector<Segment> split_added(const std::u32string& text, const std::vector<AddedToken>& tokens, bool normalized);

}  // namespace mmdit::tok
