#include "models/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <functional>
#include <unordered_map>

#include "core/errors.h"
#include "models/tokenizer_common.h"
#include "models/unicode_text.h"

namespace mmdit {
namespace {

constexpr const char* kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// --- base64 (tokenizer.json's precompiled_charsmap) ---
std::string base64_decode(const std::string& in, const std::filesystem::path& file) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  int bits = 0;
  uint32_t acc = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    const int v = val(c);
    if (v < 0) throw FormatError("bad base64 precompiled_charsmap in " + file.string());
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// --- minimal protobuf reading of spiece.model: ModelProto.normalizer_spec(3).precompiled_charsmap(2) ---
bool read_varint(const std::string& b, size_t& p, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && p < b.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(b[p++]);
    v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// The bytes of the first length-delimited field `field` of message `b`; false when absent.
bool proto_field(const std::string& b, uint32_t field, std::string& out) {
  size_t p = 0;
  while (p < b.size()) {
    uint64_t key, len;
    if (!read_varint(b, p, key)) return false;
    const uint32_t wire = key & 7;
    if (wire == 0) {
      if (!read_varint(b, p, len)) return false;
    } else if (wire == 1) {
      p += 8;
    } else if (wire == 5) {
      p += 4;
    } else if (wire == 2) {
      if (!read_varint(b, p, len) || len > b.size() - p) return false;
      if ((key >> 3) == field) {
        out = b.substr(p, len);
        return true;
      }
      p += len;
    } else {
      return false;
    }
  }
  return false;
}

// sentencepiece's precompiled charsmap: u32 trie size, a darts-clone double array, the replacement pool.
struct Charsmap {
  std::vector<uint32_t> units;
  std::string pool;

  void parse(const std::string& blob, const std::filesystem::path& file) {
    if (blob.empty()) return;
    uint32_t trie_size = 0;
    if (blob.size() < 4) throw FormatError("truncated precompiled_charsmap in " + file.string());
    std::memcpy(&trie_size, blob.data(), 4);
    if (trie_size % 4 || trie_size > blob.size() - 4) throw FormatError("bad precompiled_charsmap in " + file.string());
    units.resize(trie_size / 4);
    std::memcpy(units.data(), blob.data() + 4, trie_size);
    pool = blob.substr(4 + trie_size);
  }

  // Replacement of the shortest rule matching a prefix of [p, p+n) (as spm_precompiled's transform).
  bool transform(const char* p, size_t n, std::string& out) const {
    if (units.empty()) return false;
    auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
    size_t node = offset(units[0]);
    for (size_t i = 0; i < n; ++i) {
      const auto c = static_cast<unsigned char>(p[i]);
      if (c == 0) return false;
      node ^= c;
      if (node >= units.size()) return false;
      const uint32_t u = units[node];
      if ((u & ((1u << 31) | 0xFF)) != c) return false;
      node ^= offset(u);
      if ((u >> 8) & 1) {
        if (node >= units.size()) return false;
        const size_t at = units[node] & ((1u << 31) - 1);
        if (at >= pool.size()) return false;
        const size_t end = pool.find('\0', at);
        out.append(pool, at, (end == std::string::npos ? pool.size() : end) - at);
        return true;
      }
    }
    return false;
  }

  // spm_precompiled's normalize_string: each grapheme shorter than 6 bytes is replaced as a whole when
  // a rule matches a prefix of it, otherwise character by character.
  std::string normalize(const std::u32string& text) const {
    std::string out;
    if (units.empty()) return unicode::encode_utf8(text);
    std::string g;
    for (size_t i = 0; i < text.size();) {
      size_t j = i + 1;
      const char32_t c = text[i];
      if (c == '\r' && j < text.size() && text[j] == '\n') {
        ++j;
      } else if (!unicode::is_grapheme_control(c)) {
        while (j < text.size() && unicode::is_grapheme_extend(text[j])) ++j;
      }
      g.clear();
      for (size_t k = i; k < j; ++k) unicode::append_utf8(g, text[k]);
      if (!(g.size() < 6 && transform(g.data(), g.size(), out))) {
        std::string ch;
        for (size_t k = i; k < j; ++k) {
          ch.clear();
          unicode::append_utf8(ch, text[k]);
          if (!transform(ch.data(), ch.size(), out)) out += ch;
        }
      }
      i = j;
    }
    return out;
  }
};

}  // namespace

struct T5Tokenizer::Impl {
  std::unordered_map<std::string, std::pair<int64_t, double>> pieces;
  size_t max_piece_bytes = 1;
  double min_score = 0.0;
  int64_t unk = 2, eos = 1, pad = 0, max_id = 0;
  Charsmap charsmap;
  std::vector<tok::AddedToken> added;

  void add_piece(const std::string& p, int64_t id, double score) {
    pieces.emplace(p, std::make_pair(id, score));
    max_piece_bytes = std::max(max_piece_bytes, p.size());
    min_score = std::min(min_score, score);
    max_id = std::max(max_id, id);
  }

  // tokenizers' Unigram::encode_optimized (Viterbi over bytes, unknown characters fused).
  void unigram(const std::string& s, std::vector<int64_t>& out) const {
    struct Node {
      int64_t id = -1;
      double score = 0;
      long start = -1;
    };
    const size_t n = s.size();
    std::vector<Node> best(n + 1);
    const double unk_score = min_score - 10.0;
    auto char_len = [&](size_t p) {
      const auto b = static_cast<unsigned char>(s[p]);
      size_t l = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      return std::min(l, n - p);
    };
    std::string key;
    for (size_t start = 0; start < n;) {
      const double here = best[start].score;
      const size_t mblen = char_len(start);
      bool single = false;
      for (size_t end = start + mblen; end <= n && end - start <= max_piece_bytes; end += char_len(end)) {
        key.assign(s, start, end - start);
        auto it = pieces.find(key);
        if (it != pieces.end()) {
          Node& t = best[end];
          const double cand = it->second.second + here;
          if (t.start < 0 || cand > t.score) t = {it->second.first, cand, static_cast<long>(start)};
          if (end - start == mblen) single = true;
        }
        if (end == n) break;
      }
      if (!single) {
        Node& t = best[start + mblen];
        const double cand = unk_score + here;
        if (t.start < 0 || cand > t.score) t = {unk, cand, static_cast<long>(start)};
      }
      start += mblen;
    }
    std::vector<int64_t> rev;
    bool in_unk = false;
    for (size_t end = n; end > 0;) {
      const Node& node = best[end];
      if (node.id == unk) {
        if (!in_unk) rev.push_back(unk);  // consecutive unknowns fuse into one token
        in_unk = true;
      } else {
        rev.push_back(node.id);
        in_unk = false;
      }
      end = static_cast<size_t>(node.start);
    }
    out.insert(out.end(), rev.rbegin(), rev.rend());
  }

  void tokenize_plain(const std::u32string& seg, std::vector<int64_t>& out) const {
    const std::u32string norm = unicode::decode_utf8(charsmap.normalize(seg));
    // WhitespaceSplit, then Metaspace (prepend "▁" unless present, split before every "▁").
    for (size_t i = 0; i < norm.size();) {
      if (unicode::is_whitespace(norm[i])) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < norm.size() && !unicode::is_whitespace(norm[j])) ++j;
      std::string word = unicode::encode_utf8(norm.substr(i, j - i));
      if (word.compare(0, 3, kSpace) != 0) word.insert(0, kSpace);
      size_t p = 0;
      while (p < word.size()) {
        size_t q = word.find(kSpace, p + 3);
        if (q == std::string::npos) q = word.size();
        unigram(word.substr(p, q - p), out);
        p = q;
      }
      i = j;
    }
  }

  std::vector<int64_t> tokenize(const std::string& text) const {
    std::vector<int64_t> out;
    for (const auto& seg : tok::split_added(unicode::decode_utf8(text), added, false)) {
      if (seg.id >= 0) out.push_back(seg.id);
      else tokenize_plain(seg.text, out);
    }
    return out;
  }
};

T5Tokenizer::T5Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
T5Tokenizer::T5Tokenizer(T5Tokenizer&&) noexcept = default;
T5Tokenizer& T5Tokenizer::operator=(T5Tokenizer&&) noexcept = default;
T5Tokenizer::~T5Tokenizer() = default;

T5Tokenizer T5Tokenizer::load(const std::filesystem::path& dir) {
  auto impl = std::make_unique<Impl>();
  const auto spiece = dir / "spiece.model", tj_path = dir / "tokenizer.json";
  std::unordered_map<std::string, int64_t> ids;
  if (std::filesystem::exists(spiece)) {
    const std::string bytes = tok::read_file(spiece);
    sentencepiece::SentencePieceProcessor sp;
    const auto status = sp.LoadFromSerializedProto(bytes);
    if (!status.ok()) throw FormatError("bad sentencepiece model " + spiece.string() + ": " + status.ToString());
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      impl->add_piece(sp.IdToPiece(i), i, sp.GetScore(i));
      ids.emplace(sp.IdToPiece(i), i);
    }
    impl->unk = sp.unk_id();
    std::string spec, blob;
    if (proto_field(bytes, 3, spec)) proto_field(spec, 2, blob);
    impl->charsmap.parse(blob, spiece);
  } else if (std::filesystem::exists(tj_path)) {
    const auto j = tok::read_json(tj_path);
    try {
      const auto& model = j.at("model");
      if (model.at("type").get<std::string>() != "Unigram")
        throw FormatError("T5 tokenizer.json model is not Unigram: " + tj_path.string());
      const auto& vocab = model.at("vocab");
      for (size_t i = 0; i < vocab.size(); ++i) {
        const auto piece = vocab[i].at(0).get<std::string>();
        impl->add_piece(piece, static_cast<int64_t>(i), vocab[i].at(1).get<double>());
        ids.emplace(piece, static_cast<int64_t>(i));
      }
      if (model.contains("unk_id") && model["unk_id"].is_number_integer()) impl->unk = model["unk_id"].get<int64_t>();
      // The Precompiled normalizer, alone or inside a Sequence.
      std::function<void(const nlohmann::json&)> find = [&](const nlohmann::json& n) {
        if (!n.is_object()) return;
        if (n.value("type", "") == "Precompiled" && n.contains("precompiled_charsmap") && n["precompiled_charsmap"].is_string())
          impl->charsmap.parse(base64_decode(n["precompiled_charsmap"].get<std::string>(), tj_path), tj_path);
        if (n.contains("normalizers") && n["normalizers"].is_array())
          for (const auto& m : n["normalizers"]) find(m);
      };
      if (j.contains("normalizer")) find(j["normalizer"]);
    } catch (const nlohmann::json::exception&) {
      throw FormatError("T5 tokenizer.json has no valid Unigram model: " + tj_path.string());
    }
  } else {
    throw FileError("T5 tokenizer file not found: " + spiece.string() + " (nor tokenizer.json)");
  }
  impl->added = tok::read_added_tokens(dir);
  if (impl->added.empty()) {  // no tokenizer_config.json: the control tokens and 100 sentinels
    for (const char* t : {"<pad>", "</s>", "<unk>"})
      if (ids.count(t)) impl->added.push_back({unicode::decode_utf8(t), ids[t], false});
    const int64_t base = impl->max_id + 1;
    if (!ids.count("<extra_id_0>"))
      for (int i = 0; i < 100; ++i)
        impl->added.push_back({unicode::decode_utf8("<extra_id_" + std::to_string(99 - i) + ">"), base + i, false});
  }
  for (const auto& t : impl->added) impl->max_id = std::max(impl->max_id, t.id);
  auto pick = [&](const char* key, const char* fallback, int64_t def) {
    std::string t = tok::special_token(dir, key);
    if (t.empty()) t = fallback;
    for (const auto& a : impl->added)
      if (unicode::encode_utf8(a.content) == t) return a.id;
    auto it = ids.find(t);
    return it == ids.end() ? def : it->second;
  };
  impl->eos = pick("eos_token", "</s>", 1);
  impl->pad = pick("pad_token", "<pad>", 0);
  return T5Tokenizer(std::move(impl));
}

std::vector<int64_t> T5Tokenizer::tokenize(const std::string& text) const { return impl_->tokenize(text); }

TokenIds T5Tokenizer::encode_full(const std::string& text, int max_length) const {
  if (max_length < 1) throw UsageError("T5 max_length must be at least 1, got " + std::to_string(max_length));
  TokenIds r;
  r.ids = impl_->tokenize(text);
  if (r.ids.size() > static_cast<size_t>(max_length - 1)) r.ids.resize(max_length - 1);
  r.ids.push_back(impl_->eos);
  r.length = static_cast<int64_t>(r.ids.size());
  r.ids.resize(max_length, impl_->pad);
  return r;
}

std::vector<int64_t> T5Tokenizer::encode(const std::string& text, int max_length) const {
  return encode_full(text, max_length).ids;
}

std::vector<std::pair<int64_t, std::string>> T5Tokenizer::word_tokens(const std::string& text, int max_length) const {
  const TokenIds r = encode_full(text, max_length);
  std::vector<std::pair<int64_t, std::string>> out;
  for (int64_t i = 0; i < r.length - 1; ++i)
    if (std::string t = token_text(r.ids[size_t(i)]); !t.empty()) out.emplace_back(i, t);
  return out;
}

std::string T5Tokenizer::token_text(int64_t id) const {
  for (const auto& [piece, v] : impl_->pieces) {
    if (v.first != id) continue;
    std::string t = piece;
    const std::string space = "\xE2\x96\x81";  // "▁", the word-start marker
    for (size_t pos; (pos = t.find(space)) != std::string::npos;) t.erase(pos, space.size());
    return t;
  }
  return "";
}

int64_t T5Tokenizer::eos_id() const { return impl_->eos; }
int64_t T5Tokenizer::pad_id() const { return impl_->pad; }
int64_t T5Tokenizer::unk_id() const { return impl_->unk; }
int64_t T5Tokenizer::vocab_size() const { return impl_->max_id + 1; }

}  // namespace mmdit
