#include "models/clip_tokenizer.h"

#include <limits>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "core/errors.h"
#include "models/tokenizer_common.h"
#include "models/unicode_text.h"

namespace mmdit {

using unicode::is_letter;
using unicode::is_number;
using unicode::is_whitespace;

std::vector<int64_t> TokenIds::attention_mask() const {
  std::vector<int64_t> m(ids.size(), 0);
  for (int64_t i = 0; i < length && i < static_cast<int64_t>(m.size()); ++i) m[i] = 1;
  return m;
}

struct ClipTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<std::string, int> merge_rank;  // "a b" -> rank
  std::vector<tok::AddedToken> added;
  std::string byte_char[256];  // byte-level mapping (GPT-2 bytes_to_unicode), UTF-8
  int64_t bos = 0, eos = 0, pad = 0, unk = 0, max_id = 0;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  int64_t token_id(const std::string& token, const std::filesystem::path& dir) const {
    for (const auto& t : added)
      if (unicode::encode_utf8(t.content) == token) return t.id;
    auto it = vocab.find(token);
    if (it == vocab.end()) throw FormatError("CLIP tokenizer in " + dir.string() + ": special token '" + token + "' is not in vocab.json");
    return it->second;
  }

  // BPE of one pre-token (its UTF-8 bytes), with "</w>" on the last symbol.
  std::vector<int64_t> bpe(const std::string& piece) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(piece);
      if (it != cache.end()) return it->second;
    }
    std::vector<std::string> sym;
    sym.reserve(piece.size());
    for (unsigned char b : piece) sym.push_back(byte_char[b]);
    if (!sym.empty()) sym.back() += "</w>";
    std::string key;
    while (sym.size() > 1) {
      int best = std::numeric_limits<int>::max();
      size_t at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        key.assign(sym[i]).append(" ").append(sym[i + 1]);
        auto it = merge_rank.find(key);
        if (it != merge_rank.end() && it->second < best) best = it->second, at = i;
      }
      if (best == std::numeric_limits<int>::max()) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    std::vector<int64_t> ids;
    ids.reserve(sym.size());
    for (const auto& s : sym) {
      auto it = vocab.find(s);
      ids.push_back(it == vocab.end() ? unk : it->second);
    }
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() > 100000) cache.clear();
    cache.emplace(piece, ids);
    return ids;
  }

  void emit_piece(const std::u32string& s, size_t b, size_t e, std::vector<int64_t>& out) const {
    auto ids = bpe(unicode::encode_utf8(s.substr(b, e - b)));
    out.insert(out.end(), ids.begin(), ids.end());
  }

  // CLIP's split regex (kept matches), then the byte-level pre-tokenizer's GPT-2 regex.
  void pretokenize(const std::u32string& s, std::vector<int64_t>& out) const {
    static const std::u32string kSot = U"<|startoftext|>", kEot = U"<|endoftext|>";
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
      const char32_t c = s[i];
      const std::u32string* special = nullptr;
      if (c == '<') {
        if (s.compare(i, kSot.size(), kSot) == 0) special = &kSot;
        else if (s.compare(i, kEot.size(), kEot) == 0) special = &kEot;
      }
      if (special) {  // GPT-2 regex splits it into "<|", the word, "|>"
        emit_piece(s, i, i + 2, out);
        emit_piece(s, i + 2, i + special->size() - 2, out);
        emit_piece(s, i + special->size() - 2, i + special->size(), out);
        i += special->size();
        continue;
      }
      if (c == '\'' && i + 1 < n) {
        const char32_t d = s[i + 1];
        size_t len = 0;
        if (d == 's' || d == 't' || d == 'm' || d == 'd') len = 2;
        else if (i + 2 < n && ((d == 'r' && s[i + 2] == 'e') || (d == 'v' && s[i + 2] == 'e') || (d == 'l' && s[i + 2] == 'l')))
          len = 3;
        if (len) {
          emit_piece(s, i, i + len, out);
          i += len;
          continue;
        }
      }
      if (is_whitespace(c)) {
        ++i;
        continue;
      }
      size_t j = i + 1;
      if (is_letter(c)) {
        while (j < n && is_letter(s[j])) ++j;
      } else if (!is_number(c)) {
        while (j < n && !is_letter(s[j]) && !is_number(s[j]) && !is_whitespace(s[j])) ++j;
      }
      emit_piece(s, i, j, out);
      i = j;
    }
  }

  static std::u32string normalize(const std::u32string& raw) {
    std::u32string s = unicode::nfc(raw), t;
    t.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      if (is_whitespace(s[i])) {
        while (i < s.size() && is_whitespace(s[i])) ++i;
        t.push_back(' ');
      } else {
        t.push_back(s[i++]);
      }
    }
    return unicode::to_lower(t);
  }

  std::vector<int64_t> tokenize(const std::string& text) const {
    std::vector<int64_t> out;
    for (const auto& seg : tok::split_added(unicode::decode_utf8(text), added, false)) {
      if (seg.id >= 0) {
        out.push_back(seg.id);
        continue;
      }
      for (const auto& part : tok::split_added(normalize(seg.text), added, true)) {
        if (part.id >= 0) out.push_back(part.id);
        else pretokenize(part.text, out);
      }
    }
    return out;
  }
};

ClipTokenizer::ClipTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipTokenizer::ClipTokenizer(ClipTokenizer&&) noexcept = default;
ClipTokenizer& ClipTokenizer::operator=(ClipTokenizer&&) noexcept = default;
ClipTokenizer::~ClipTokenizer() = default;

ClipTokenizer ClipTokenizer::load(const std::filesystem::path& dir) {
  auto impl = std::make_unique<Impl>();
  const auto vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
  const auto vj = tok::read_json(vocab_path);
  if (!vj.is_object() || vj.empty()) throw FormatError("CLIP vocab is not a non-empty JSON object: " + vocab_path.string());
  for (auto it = vj.begin(); it != vj.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
      throw FormatError("CLIP vocab entry '" + it.key() + "' has no valid id in " + vocab_path.string());
    impl->vocab.emplace(it.key(), it.value().get<int64_t>());
    impl->max_id = std::max(impl->max_id, it.value().get<int64_t>());
  }
  std::istringstream merges(tok::read_file(merges_path));
  std::string line;
  int rank = 0;
  size_t line_no = 0;
  while (std::getline(merges, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const auto sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != std::string::npos)
      throw FormatError("bad merge on line " + std::to_string(line_no) + " of " + merges_path.string());
    impl->merge_rank.emplace(line, rank++);
  }
  // GPT-2 bytes_to_unicode.
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    unicode::append_utf8(impl->byte_char[b], printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++));
  }
  impl->added = tok::read_added_tokens(dir);
  auto pick = [&](const char* key, const char* fallback) {
    std::string t = tok::special_token(dir, key);
    return impl->token_id(t.empty() ? fallback : t, dir);
  };
  impl->bos = pick("bos_token", "<|startoftext|>");
  impl->eos = pick("eos_token", "<|endoftext|>");
  impl->unk = pick("unk_token", "<|endoftext|>");
  impl->pad = pick("pad_token", "<|endoftext|>");
  if (impl->added.empty()) {  // no tokenizer_config.json: BOS/EOS still match as special tokens
    impl->added.push_back({U"<|startoftext|>", impl->bos, true});
    impl->added.push_back({U"<|endoftext|>", impl->eos, false});
  }
  for (const auto& t : impl->added) impl->max_id = std::max(impl->max_id, t.id);
  return ClipTokenizer(std::move(impl));
}

std::vector<int64_t> ClipTokenizer::tokenize(const std::string& text) const { return impl_->tokenize(text); }

TokenIds ClipTokenizer::encode_full(const std::string& text, int max_length) const {
  if (max_length < 2) throw UsageError("CLIP max_length must be at least 2, got " + std::to_string(max_length));
  auto body = impl_->tokenize(text);
  if (body.size() > static_cast<size_t>(max_length - 2)) body.resize(max_length - 2);
  TokenIds r;
  r.ids.reserve(max_length);
  r.ids.push_back(impl_->bos);
  r.ids.insert(r.ids.end(), body.begin(), body.end());
  r.ids.push_back(impl_->eos);
  r.length = static_cast<int64_t>(r.ids.size());
  r.ids.resize(max_length, impl_->pad);
  return r;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text, int max_length) const {
  return encode_full(text, max_length).ids;
}

std::vector<std::pair<int64_t, std::string>> ClipTokenizer::word_tokens(const std::string& text, int max_length) const {
  const TokenIds r = encode_full(text, max_length);
  std::vector<std::pair<int64_t, std::string>> out;
  for (int64_t i = 1; i < r.length - 1; ++i)
    if (std::string t = token_text(r.ids[size_t(i)]); !t.empty()) out.emplace_back(i, t);
  return out;
}

std::string ClipTokenizer::token_text(int64_t id) const {
  for (const auto& [token, i] : impl_->vocab) {
    if (i != id) continue;
    // Undo the byte-level mapping (each byte is one mapped character), then drop the word-end marker.
    std::string t = token, bytes;
    if (t.size() >= 4 && t.compare(t.size() - 4, 4, "</w>") == 0) t.resize(t.size() - 4);
    for (size_t pos = 0; pos < t.size();) {
      bool matched = false;
      for (int b = 0; b < 256 && !matched; ++b) {
        const std::string& c = impl_->byte_char[b];
        if (!c.empty() && t.compare(pos, c.size(), c) == 0) {
          bytes += char(b);
          pos += c.size();
          matched = true;
        }
      }
      if (!matched) bytes += t[pos++];
    }
    return bytes;
  }
  return "";
}

int64_t ClipTokenizer::bos_id() const { return impl_->bos; }
int64_t ClipTokenizer::eos_id() const { return impl_->eos; }
int64_t ClipTokenizer::pad_id() const { return impl_->pad; }
int64_t ClipTokenizer::vocab_size() const { return impl_->max_id + 1; }

}  // namespace mmdit
