// Model folders, inspect, PNG text chunks, the image loader, error exits, fuzz-corpus regression.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/config_fields.h"
#include "core/errors.h"
#include "core/image_io.h"
#include "core/model_folder.h"
#include "core/safetensors.h"
#include "core/safetensors_header.h"
#include "core/mapped_file.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path layouts() { return test::shared_dir() / "model-layouts"; }

struct LayoutCase {
  const char* dir;
  const char* family;
  const char* variant;
  size_t missing_files;  // weight files the layout's configs and indexes name but do not hold
};

// Names the case in test output instead of dumping its bytes.
void PrintTo(const LayoutCase& c, std::ostream* os) { *os << c.dir; }

class RealLayouts : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(RealLayouts, InspectNamesFamilyVariantAndMissingWeights) {
  const auto& c = GetParam();
  const fs::path p = layouts() / c.dir;
  ASSERT_TRUE(fs::exists(p)) << p;
  ModelInfo m = open_model(p);
  EXPECT_EQ(m.family, c.family);
  EXPECT_EQ(m.variant, c.variant);
  auto r = test::run_mmdit("inspect --json " + p.string(), std::string("inspect_") + c.family);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["family"], c.family);
  EXPECT_EQ(j["variant"], c.variant);
  EXPECT_EQ(j["missing_files"].size(), c.missing_files) << j["missing_files"].dump();
  EXPECT_GT(j["total_tensors"].get<int>(), 200);  // names come from the index files
  // The text view says the same in words.
  auto t = test::run_mmdit("inspect " + p.string(), std::string("inspect_text_") + c.family);
  ASSERT_EQ(t.exit_code, 0);
  EXPECT_NE(t.out.find("missing weights (" + std::to_string(c.missing_files) + " files"), std::string::npos) << t.out;
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, RealLayouts,
    ::testing::Values(
        // transformer 2 shards + T5 2 shards + 2 CLIP + VAE single files
        LayoutCase{"stabilityai/stable-diffusion-3.5-large", "sd3", "sd3.5-large", 7},
        // SD3-medium's transformer has no index (one file), T5 has 2 shards
        LayoutCase{"stabilityai/stable-diffusion-3-medium-diffusers", "sd3", "sd3-medium", 6},
        // FLUX transformer 3 shards, T5 2 shards, CLIP, VAE
        LayoutCase{"black-forest-labs/FLUX.1-dev", "flux", "flux-dev", 7},
        LayoutCase{"black-forest-labs/FLUX.1-schnell", "flux", "flux-schnell", 7}),
    [](const auto& info) {
      std::string n = info.param.variant;
      for (auto& ch : n)
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

TEST(ModelFolder, ComponentFolderAndSingleFileAreDetected) {
  auto c = open_model(layouts() / "black-forest-labs/FLUX.1-schnell/transformer");
  EXPECT_EQ(c.kind, ModelKind::ComponentFolder);
  EXPECT_EQ(c.family, "flux");
  EXPECT_EQ(c.variant, "flux-schnell");
  auto t5 = open_model(layouts() / "stabilityai/stable-diffusion-3.5-large/text_encoder_3");
  EXPECT_EQ(t5.family, "t5");
  EXPECT_EQ(t5.variant, "t5-v1.1-xxl");

  auto dir = test::temp_dir("single_file_detect");
  // An SAI-layout SD3.5-large-like file: joint blocks with QK norm.
  write_safetensors(dir / "sd35.safetensors", {{"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", at::zeros({6, 2})},
                                               {"model.diffusion_model.joint_blocks.0.x_block.attn.ln_q.weight", at::zeros({2})},
                                               {"model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight", at::zeros({6, 2})}});
  auto s = open_model(dir / "sd35.safetensors");
  EXPECT_EQ(s.kind, ModelKind::SingleFile);
  EXPECT_EQ(s.family, "sd3");
  EXPECT_EQ(s.variant, "sd3.5-large-like (2 layers)");
  write_safetensors(dir / "flux.safetensors", {{"double_blocks.0.img_attn.qkv.weight", at::zeros({3, 1})},
                                               {"guidance_in.in_layer.weight", at::zeros({1, 1})}});
  EXPECT_EQ(open_model(dir / "flux.safetensors").variant, "flux-dev");
  EXPECT_THROW(open_model(dir / "nope"), FileError);
}

TEST(Inspect, ListsTensorsOfASmallCheckpoint) {
  auto dir = test::temp_dir("inspect_small");
  write_safetensors(dir / "m.safetensors", {{"a.weight", at::zeros({4, 3}, at::kBFloat16)}, {"b", at::zeros({5}, at::kFloat8_e4m3fn)}});
  auto r = test::run_mmdit("inspect --tensors --json " + (dir / "m.safetensors").string(), "inspect_small");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["total_parameters"], 17);
  auto list = j["components"][0]["tensor_list"];
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]["name"], "a.weight");
  EXPECT_EQ(list[0]["dtype"], "BF16");
  EXPECT_EQ(list[0]["shape"], nlohmann::json({4, 3}));
  EXPECT_EQ(list[1]["dtype"], "F8_E4M3");
  auto t = test::run_mmdit("inspect --tensors " + (dir / "m.safetensors").string(), "inspect_small_text");
  EXPECT_NE(t.out.find("a.weight  BF16  [4,3]"), std::string::npos) << t.out;
}

TEST(Cli, BadFlagsExitTwoWithOneLine) {
  for (const std::string args : {"", "inspect", "inspect --bogus x", "frobnicate"}) {
    auto r = test::run_mmdit(args, "badflag");
    EXPECT_EQ(r.exit_code, 2) << args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << args;
  }
  EXPECT_EQ(test::run_mmdit("--help", "help").exit_code, 0);
}

TEST(Png, TextChunksRoundTripAndPixelsDecode) {
  auto dir = test::temp_dir("png");
  Image img;
  img.width = 5;
  img.height = 3;
  for (int i = 0; i < 5 * 3 * 3; ++i) img.pixels.push_back(uint8_t(i * 5));
  std::map<std::string, std::string> text = {{"parameters", "a red circle\nSteps: 28, Seed: 42"},
                                             {"prompt", "un cercle rouge, café ☕"}};
  write_png(dir / "a.png", img, text);
  EXPECT_EQ(read_png_text(dir / "a.png"), text);
  Image back = read_png(dir / "a.png");
  EXPECT_EQ(back.width, 5);
  EXPECT_EQ(back.height, 3);
  EXPECT_EQ(back.pixels, img.pixels);
  // Atomic: no temp file left behind, and a failed write leaves nothing.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  Image bad = img;
  bad.pixels.pop_back();
  EXPECT_THROW(write_png(dir / "b.png", bad), ShapeError);
  EXPECT_FALSE(fs::exists(dir / "b.png"));
  EXPECT_THROW(write_png(dir / "no/such/dir/c.png", img), FileError);
}

// Inputs the fuzzer found interesting stay regression tests: parse or FormatError, nothing else.
TEST(Fuzz, CorpusParsesOrFailsCleanly) {
  int n = 0;
  for (const auto& dir : {test::source_dir() / "fuzz/corpus", test::source_dir() / "tests/corpus/bad"}) {
    for (auto& e : fs::directory_iterator(dir)) {
      if (!e.is_regular_file()) continue;
      MappedFile map(e.path());
      try {
        auto h = parse_safetensors(map.data(), map.size(), e.path().string());
        for (const auto& t : h.tensors) ASSERT_LE(h.data_offset + t.end, map.size());
      } catch (const FormatError& err) {
        EXPECT_EQ(std::string(err.what()).find('\n'), std::string::npos);
      }
      ++n;
    }
  }
  EXPECT_GT(n, 20);
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The image fuzzer's corpus (scripts/fuzz.sh image): each input decodes to a consistent image or gives a
// one-line FormatError naming it; nothing else.
TEST(Fuzz, ImageCorpusDecodesOrFailsCleanly) {
  int n = 0, decoded = 0;
  for (auto& e : fs::directory_iterator(test::source_dir() / "fuzz/corpus-image")) {
    if (!e.is_regular_file()) continue;
    ++n;
    try {
      const Image img = decode_image(file_bytes(e.path()), e.path().string());
      ASSERT_TRUE(img.width > 0 && img.height > 0 && img.channels >= 1 && img.channels <= 4) << e.path();
      ASSERT_EQ(img.pixels.size(), size_t(img.width) * img.height * img.channels) << e.path();
      ++decoded;
    } catch (const FormatError& err) {
      const std::string what = err.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_EQ(what.rfind(e.path().string() + ": ", 0), 0u) << what;
    }
  }
  EXPECT_GT(n, 20);
  EXPECT_GT(decoded, 5);
}

fs::path images() { return test::source_dir() / "tests/data/images"; }

TEST(ImageRead, PngRoundTripsExactlyForEveryChannelCount) {
  auto dir = test::temp_dir("image-read-png");
  for (int c = 1; c <= 4; ++c) {
    Image img;
    img.width = 7;
    img.height = 5;
    img.channels = c;
    for (int i = 0; i < 7 * 5 * c; ++i) img.pixels.push_back(uint8_t(i * 37 + c));
    const fs::path p = dir / ("c" + std::to_string(c) + ".png");
    write_png(p, img, {{"k", "v"}});
    const Image back = read_image(p);
    EXPECT_EQ(back.width, 7);
    EXPECT_EQ(back.height, 5);
    EXPECT_EQ(back.channels, c);
    EXPECT_EQ(back.pixels, img.pixels) << c;
    EXPECT_EQ(read_png(p).pixels, img.pixels);
  }
}

TEST(ImageRead, SixteenBitPngDecodesToItsHighBytes) {
  const Image img = read_image(images() / "rgb16-2x2.png");
  ASSERT_EQ(img.width, 2);
  ASSERT_EQ(img.height, 2);
  ASSERT_EQ(img.channels, 3);
  EXPECT_EQ(img.pixels, (std::vector<uint8_t>{0x00, 0x00, 0x01, 0x7f, 0x80, 0xff, 0x12, 0xab, 0xfe, 0x00, 0xff, 0x55}));
}

// Flat-colour JPEGs written by Pillow at quality 100 (tests/data/images/README.md): every pixel within 2 levels.
TEST(ImageRead, JpegBaselineProgressiveAndGreyDecodeToTheirColour) {
  struct Case {
    const char* file;
    std::vector<int> colour;
  };
  for (const Case& c : {Case{"flat-16x16-q100.jpg", {200, 120, 40}}, Case{"flat-16x16-q100-progressive.jpg", {200, 120, 40}},
                        Case{"flat-16x16-q100-grey.jpg", {90}}}) {
    const Image img = read_image(images() / c.file);
    ASSERT_EQ(img.width, 16) << c.file;
    ASSERT_EQ(img.height, 16) << c.file;
    ASSERT_EQ(img.channels, int(c.colour.size())) << c.file;
    int worst = 0;
    for (size_t i = 0; i < img.pixels.size(); ++i)
      worst = std::max(worst, std::abs(int(img.pixels[i]) - c.colour[i % c.colour.size()]));
    EXPECT_LE(worst, 2) << c.file;
  }
}

// A refusal is one line that starts with the file's name and says the problem.
void expect_refusal(const fs::path& p, const std::string& problem) {
  try {
    read_image(p);
    ADD_FAILURE() << p << " was decoded";
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(p.string() + ": ", 0), 0u) << what;
    EXPECT_NE(what.find(problem), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

std::string png_header(uint32_t w, uint32_t h) {  // signature + IHDR (8-bit RGB) + IEND; stb checks no CRC
  auto be = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  return std::string("\x89PNG\r\n\x1a\n", 8) + be(13) + "IHDR" + be(w) + be(h) + std::string("\x08\x02\0\0\0", 5) +
         be(0) + be(0) + "IEND" + be(0);
}

TEST(ImageRead, RefusalsNameTheFileAndTheProblem) {
  auto dir = test::temp_dir("image-read-bad");
  auto put = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return dir / name;
  };
  Image img;
  img.width = img.height = 8;
  img.pixels.assign(8 * 8 * 3, 77);
  const std::string png = encode_png(img), jpeg = file_bytes(images() / "flat-16x16-q100.jpg");

  expect_refusal(put("notes.png", "just some text\n"), "not a PNG or JPEG image (only PNG and JPEG are accepted)");
  expect_refusal(put("anim.gif", "GIF89a\x01\0\x01\0\0\0\0;"), "not a PNG or JPEG image (it looks like GIF");
  expect_refusal(put("empty.png", ""), "empty file");
  expect_refusal(put("cut.png", png.substr(0, png.size() / 2)), "truncated PNG");
  expect_refusal(put("cut.jpg", jpeg.substr(0, jpeg.size() / 2)), "truncated JPEG");
  std::string bad_zlib = png;
  bad_zlib[png.find("IDAT") + 4] ^= 0x55;  // the zlib header
  expect_refusal(put("bad-zlib.png", bad_zlib), "corrupt PNG (");
  // Too large by header alone: refused before anything is allocated for the pixels.
  expect_refusal(put("tall.png", png_header(10, 16385)), "too large (the limit is 16384 pixels a side and 64 Mpixel)");
  expect_refusal(put("huge.png", png_header(16000, 16000)), "PNG image of 16000x16000 is too large");
  expect_refusal(put("wide.png", png_header(20000, 10)), "PNG image of 20000x10 is too large");
  expect_refusal(put("huge.jpg", std::string("\xff\xd8\xff\xc0\0\x0b\x08\x3e\x80\x3e\x80\x01\x01\x11\0\xff\xd9", 17)),
                 "JPEG image of 16000x16000 is too large");
  // A JPEG too short for its size (stb would decode zeros, for seconds at 64 Mpixel).
  std::string big = jpeg;
  big.replace(big.find("\xff\xc0") + 5, 4, std::string("\x10\x00\x10\x00", 4));  // SOF0: 4096 x 4096
  expect_refusal(put("big.jpg", big), "truncated JPEG (" + std::to_string(big.size()) + " bytes cannot hold a 4096x4096 image)");
  // A zlib bomb: 10 MB of zeros for a 1x1 image is refused by the allocation cap, not decoded.
  expect_refusal(images() / "bomb-1x1.png", "corrupt PNG (its data is far larger than a 1x1 image needs)");

  // Files that cannot be read are FileErrors (core/errors.h), still one line naming the file.
  for (const fs::path& p : {dir / "missing.png", dir}) {
    try {
      read_image(p);
      ADD_FAILURE() << p;
    } catch (const FileError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(p.string() + ": cannot read (", 0), 0u) << e.what();
    }
  }
}

}  // namespace
}  // namespace mmdit

namespace mmdit {
namespace {

// core/config_fields.h: the one reader of typed config fields that every model and scheduler uses.
TEST(ConfigFields, ReadsTypedFieldsAndKeepsDefaults) {
  const auto j = nlohmann::json::parse(
      R"({"n": 3, "x": 0.5, "on": true, "kind": "rms_norm", "list": [1, 2], "none": null, "zero": 0})");
  const ConfigFields f(j, "test config");
  int64_t n = 7, none = 9, absent = 11, zero = 5;
  int small = 1;
  double x = 0;
  bool on = false;
  std::string kind;
  std::vector<int64_t> list;
  f.get("n", n);
  f.get("n", small);
  f.get("none", none);      // null keeps the default
  f.get("absent", absent);  // so does a missing key
  f.get("zero", zero, 0);   // 0 allowed when min is 0
  f.get("x", x);
  f.get("n", x);  // an integer is a number too
  f.get("on", on);
  f.get("kind", kind, {"rms_norm"});
  f.get("list", list);
  EXPECT_EQ(n, 3);
  EXPECT_EQ(small, 3);
  EXPECT_EQ(none, 9);
  EXPECT_EQ(absent, 11);
  EXPECT_EQ(zero, 0);
  EXPECT_EQ(x, 3.0);
  EXPECT_TRUE(on);
  EXPECT_EQ(kind, "rms_norm");
  EXPECT_EQ(list, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(f.has("n"));
  EXPECT_FALSE(f.has("none"));
}

TEST(ConfigFields, WrongTypesAndRangesNameTheConfigAndKey) {
  const auto j = nlohmann::json::parse(R"({"s": "a", "x": 1.5, "zero": 0, "neg": -1, "list": [1, 0], "n": 2})");
  const ConfigFields f(j, "test config");
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  int64_t i = 0;
  double d = 0;
  bool b = false;
  std::string s;
  std::vector<int64_t> v;
  EXPECT_EQ(message([&] { f.get("s", i); }), "test config: 's' is not an integer");
  EXPECT_EQ(message([&] { f.get("x", i); }), "test config: 'x' is not an integer");
  EXPECT_EQ(message([&] { f.get("zero", i); }), "test config: 'zero' must be positive");
  EXPECT_EQ(message([&] { f.get("neg", i, 0); }), "test config: 'neg' must not be negative");
  EXPECT_EQ(message([&] { f.get("n", i, 4); }), "test config: 'n' must be at least 4");
  EXPECT_EQ(message([&] { f.get("s", d); }), "test config: 's' is not a number");
  EXPECT_EQ(message([&] { f.get("n", b); }), "test config: 'n' is not a boolean");
  EXPECT_EQ(message([&] { f.get("n", s); }), "test config: 'n' is not a string");
  EXPECT_EQ(message([&] { f.get("s", s, {"b", "c"}); }), "test config: s 'a' is not supported");
  EXPECT_EQ(message([&] { f.get("list", v); }), "test config: 'list' holds 0, not an integer >= 1");
  EXPECT_EQ(message([&] { f.get("n", v); }), "test config: 'n' is not a list");
  EXPECT_EQ(message([&] { ConfigFields bad(nlohmann::json::array(), "test config"); }), "test config: not a JSON object");
  EXPECT_EQ(i, 0);  // nothing assigned on error
}

}  // namespace
}  // namespace mmdit
