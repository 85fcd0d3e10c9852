// CLIP and T5 tokenizers against transformers (goldens/tokenizers.py), error messages, and a fuzz test.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "models/clip_tokenizer.h"
#include "models/t5_tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace mmdit;

namespace {

fs::path layouts() { return test::shared_dir() / "model-layouts"; }
const char* kClipL = "stabilityai/stable-diffusion-3.5-large/tokenizer";
const char* kClipG = "stabilityai/stable-diffusion-3.5-large/tokenizer_2";
const char* kT5Spiece = "stabilityai/stable-diffusion-3.5-large/tokenizer_3";
const char* kT5Json = "black-forest-labs/FLUX.1-dev/tokenizer_2";

nlohmann::json goldens() {
  std::ifstream f(MMDIT_GOLDEN_DIR "/tokenizers/tokenizers.json");
  if (!f) return nullptr;
  return nlohmann::json::parse(f);
}

std::string show(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += std::to_string(x) + " ";
  return s;
}

std::string from_hex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return s;
}

void check_case(const std::string& kind) {
  const auto g = goldens();
  ASSERT_FALSE(g.is_null()) << "missing " MMDIT_GOLDEN_DIR "/tokenizers/tokenizers.json";
  const auto prompts = g["prompts"].get<std::vector<std::string>>();
  ASSERT_GE(prompts.size(), 40u);
  int cases = 0;
  for (const auto& c : g["cases"]) {
    if (c["kind"] != kind) continue;
    const fs::path dir = layouts() / c["folder"].get<std::string>();
    if (!fs::exists(dir)) GTEST_SKIP() << "no tokenizer folder " << dir;
    const int n = c["max_length"].get<int>();
    // The prompts, then the invalid UTF-8 byte strings (expected: ids of Python's errors="replace").
    std::vector<std::string> texts = prompts;
    for (const auto& h : g["invalid_utf8"]) texts.push_back(from_hex(h.get<std::string>()));
    auto expected = c["ids"].get<std::vector<std::vector<int64_t>>>();
    for (const auto& ids : c["invalid_utf8_ids"]) expected.push_back(ids.get<std::vector<int64_t>>());
    ASSERT_EQ(expected.size(), texts.size());
    std::vector<std::vector<int64_t>> got;
    if (kind == "clip") {
      const auto tok = ClipTokenizer::load(dir);
      for (const auto& p : texts) got.push_back(tok.encode(p, n));
    } else {
      const auto tok = T5Tokenizer::load(dir);
      for (const auto& p : texts) got.push_back(tok.encode(p, n));
    }
    for (size_t i = 0; i < texts.size(); ++i)
      EXPECT_EQ(got[i], expected[i]) << c["name"].get<std::string>() << " text #" << i << " '"
                                     << texts[i].substr(0, 80) << "'\n got      " << show(got[i])
                                     << "\n expected " << show(expected[i]);
    ++cases;
  }
  EXPECT_GT(cases, 0);
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const FileError& e) {
    return std::string("FileError: ") + e.what();
  } catch (const FormatError& e) {
    return std::string("FormatError: ") + e.what();
  }
  return "no error";
}

}  // namespace

TEST(ClipTokenizer, MatchesTransformers) { check_case("clip"); }
TEST(T5Tokenizer, MatchesTransformers) { check_case("t5"); }

TEST(ClipTokenizer, PadAndAttentionMask) {
  const fs::path dir = layouts() / kClipG;
  if (!fs::exists(dir)) GTEST_SKIP();
  const auto tok = ClipTokenizer::load(dir);
  EXPECT_EQ(tok.pad_id(), 0);  // bigG pads with "!"
  EXPECT_EQ(tok.eos_id(), 49407);
  const auto r = tok.encode_full("a photo of a cat", 77);
  EXPECT_EQ(r.length, 7);
  const auto mask = r.attention_mask();
  EXPECT_EQ(std::count(mask.begin(), mask.end(), 1), 7);
  EXPECT_EQ(ClipTokenizer::load(layouts() / kClipL).pad_id(), 49407);
}

TEST(Tokenizers, MissingFilesNameTheFile) {
  const auto dir = test::temp_dir("tok_missing");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir); }).find("FileError: tokenizer file not found: " + (dir / "vocab.json").string()),
            std::string::npos);
  EXPECT_NE(error_of([&] { T5Tokenizer::load(dir); }).find("FileError: T5 tokenizer file not found: " + (dir / "spiece.model").string()),
            std::string::npos);
  write(dir / "vocab.json", R"({"a</w>": 0})");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir); }).find("FileError: tokenizer file not found: " + (dir / "merges.txt").string()),
            std::string::npos);
  write(dir / "vocab.json", "{not json");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir); }).find("FormatError: invalid JSON in tokenizer file " + (dir / "vocab.json").string()),
            std::string::npos);
  write(dir / "spiece.model", "this is not a sentencepiece model");
  EXPECT_NE(error_of([&] { T5Tokenizer::load(dir); }).find("FormatError: bad sentencepiece model " + (dir / "spiece.model").string()),
            std::string::npos);
  fs::remove(dir / "spiece.model");
  write(dir / "tokenizer.json", R"({"model": {"type": "BPE"}})");
  EXPECT_NE(error_of([&] { T5Tokenizer::load(dir); }).find("FormatError: T5 tokenizer.json model is not Unigram"), std::string::npos);
  // Messages are one line.
  EXPECT_EQ(error_of([&] { T5Tokenizer::load(dir); }).find('\n'), std::string::npos);
}

TEST(Tokenizers, FuzzRandomBytes) {
  if (!fs::exists(layouts() / kClipG) || !fs::exists(layouts() / kT5Json)) GTEST_SKIP();
  const auto clip = ClipTokenizer::load(layouts() / kClipG);
  const auto t5 = T5Tokenizer::load(layouts() / kT5Spiece);
  const auto t5j = T5Tokenizer::load(layouts() / kT5Json);
  std::mt19937 rng(1234);
  // Byte pools: anything, mostly-ASCII, and UTF-8 lead/continuation-heavy.
  const std::string ascii = " \t\n!'sdre<|>endoftxt0123456789abcxyzABC.,_\x00\x7f";
  for (int iter = 0; iter < 3000; ++iter) {
    const int len = std::uniform_int_distribution<int>(0, iter % 10 == 0 ? 400 : 60)(rng);
    std::string s;
    for (int i = 0; i < len; ++i) {
      switch (iter % 3) {
        case 0: s.push_back(static_cast<char>(rng() & 0xFF)); break;
        case 1: s.push_back(ascii[rng() % ascii.size()]); break;
        default: s.push_back(static_cast<char>((rng() % 4 == 0) ? 0xC0 + rng() % 0x38 : 0x80 + rng() % 0x40)); break;
      }
    }
    const int n = 1 + static_cast<int>(rng() % 100);
    for (const T5Tokenizer* t : {&t5, &t5j}) {
      const auto ids = t->encode(s, n);
      ASSERT_EQ(ids.size(), static_cast<size_t>(n));
      for (auto id : ids) ASSERT_TRUE(id >= 0 && id < t->vocab_size()) << id;
      ASSERT_EQ(t->encode(s, n), ids);  // deterministic
    }
    const int m = std::max(2, n);
    const auto ids = clip.encode(s, m);
    ASSERT_EQ(ids.size(), static_cast<size_t>(m));
    for (auto id : ids) ASSERT_TRUE(id >= 0 && id < clip.vocab_size()) << id;
    ASSERT_EQ(ids.front(), clip.bos_id());
  }
}
