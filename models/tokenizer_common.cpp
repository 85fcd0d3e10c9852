#include "models/tokenizer_common.h"

#include <fstream>
#include <sstream>

#include "core/errors.h"
#include "models/unicode_text.h"

namespace mmdit::tok {

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw FileError("tokenizer file not found: " + path.string());
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FileError("cannot read tokenizer file: " + path.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw FileError("cannot read tokenizer file: " + path.string());
  return ss.str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("invalid JSON in tokenizer file " + path.string() + ": " + std::string(e.what()).substr(0, 120));
  }
}

std::vector<AddedToken> read_added_tokens(const std::filesystem::path& dir) {
  std::vector<AddedToken> out;
  const auto path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return out;
  const auto j = read_json(path);
  if (!j.is_object() || !j.contains("added_tokens_decoder")) return out;
  const auto& d = j["added_tokens_decoder"];
  if (!d.is_object()) throw FormatError("bad added_tokens_decoder in " + path.string());
  try {
    for (auto it = d.begin(); it != d.end(); ++it) {
      AddedToken t;
      t.id = std::stoll(it.key());
      t.content = unicode::decode_utf8(it.value().at("content").get<std::string>());
      t.normalized = it.value().value("normalized", false);
      if (!t.content.empty()) out.push_back(std::move(t));
    }
  } catch (const std::exception&) {
    throw FormatError("bad added_tokens_decoder entry in " + path.string());
  }
  return out;
}

std::string special_token(const std::filesystem::path& dir, const std::string& key) {
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const auto path = dir / name;
    if (!std::filesystem::exists(path)) continue;
    const auto j = read_json(path);
    if (!j.is_object() || !j.contains(key)) continue;
    const auto& v = j[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  }
  return {};
}

std::vector<Segment> split_added(const std::u32string& text, const std::vector<AddedToken>& tokens, bool normalized) {
  std::vector<Segment> out;
  size_t plain_start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const auto& t : tokens) {
      if (t.normalized != normalized || t.content.size() > text.size() - i) continue;
      if ((!best || t.content.size() > best->content.size()) && text.compare(i, t.content.size(), t.content) == 0)
        best = &t;
    }
    if (!best) {
      ++i;
      continue;
    }
    if (i > plain_start) out.push_back({text.substr(plain_start, i - plain_start), -1});
    out.push_back({best->content, best->id});
    i += best->content.size();
    plain_start = i;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
  return out;
}

}  // namespace mmdit::tok
