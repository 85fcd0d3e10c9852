// Whole SD3 pipeline through the CLI against diffusers' StableDiffusion3Pipeline images
// (scripts/goldens/sd3_pipeline.py): max pixel difference <= 1 level.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path golden() { return fs::path(MMDIT_GOLDEN_DIR) / "sd3_pipeline"; }

nlohmann::json cases() {
  std::ifstream in(golden() / "cases.json");
  return nlohmann::json::parse(in);
}

// The generate flags of a golden case.
std::string flags(const nlohmann::json& p) {
  auto q = [](const std::string& s) { return "'" + s + "'"; };
  std::string f = " --prompt " + q(p["prompt"]) + " --seed " + std::to_string(p["seed"].get<int>()) + " --steps " +
                  std::to_string(p["steps"].get<int>()) + " --cfg " + std::to_string(p["cfg"].get<double>()) +
                  " --width " + std::to_string(p["width"].get<int>()) + " --height " + std::to_string(p["height"].get<int>());
  if (p.contains("negative_prompt")) f += " --negative-prompt " + q(p["negative_prompt"]);
  if (p.contains("batch")) f += " --batch " + std::to_string(p["batch"].get<int>());
  if (p.contains("shift")) f += " --shift " + std::to_string(p["shift"].get<double>());
  if (p.contains("max_sequence_length")) f += " --max-sequence-length " + std::to_string(p["max_sequence_length"].get<int>());
  if (p.contains("slg_scale")) {
    std::string layers;
    for (auto& l : p["slg_layers"]) layers += (layers.empty() ? "" : ",") + std::to_string(l.get<int>());
    f += " --slg-scale " + std::to_string(p["slg_scale"].get<double>()) + " --slg-layers " + layers +
         " --slg-start " + std::to_string(p["slg_start"].get<double>()) + " --slg-stop " +
         std::to_string(p["slg_stop"].get<double>());
  }
  return f;
}

int max_pixel_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int m = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i) m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

void expect_matches_golden(const nlohmann::json& c, const std::string& model_args, const std::string& tag) {
  auto dir = test::temp_dir("sd3_pipeline_" + tag);
  const auto out = dir / "out.png";
  auto r = test::run_mmdit("generate -q --model " + model_args + flags(c["params"]) + " --output " + out.string(), tag);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto& images = c["images"];
  for (size_t i = 0; i < images.size(); ++i) {
    fs::path got = images.size() > 1 ? dir / ("out-" + std::to_string(i) + ".png") : out;
    Image expected = read_png(golden() / images[i].get<std::string>());
    Image actual = read_png(got);
    // Pixel values must spread, or a 1-level tolerance would prove little.
    int lo = 255, hi = 0;
    for (auto v : expected.pixels) lo = std::min<int>(lo, v), hi = std::max<int>(hi, v);
    EXPECT_GT(hi - lo, 60) << "golden image too flat to be a useful check";
    EXPECT_LE(max_pixel_diff(actual, expected), 1) << tag << " image " << i;
  }
}

TEST(Sd3Pipeline, ImagesEqualDiffusers) {
  for (const auto& c : cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    expect_matches_golden(c, (golden() / c["model"].get<std::string>()).string(), c["name"]);
  }
}

// Stability's single-file layout (transformer + VAE under model.diffusion_model. / first_stage_model.),
// encoders and tokenizers given separately: the same image as the diffusers folder, bit for bit.
TEST(Sd3Pipeline, SingleFileCheckpointGivesTheIdenticalImage) {
  const auto c = cases()[0];
  ASSERT_EQ(c["model"], "tiny-sd3");
  const fs::path folder = golden() / "tiny-sd3";
  const std::string single = (golden() / "tiny-sd3-sai.safetensors").string() + " --clip-l " +
                             (folder / "text_encoder").string() + " --clip-g " + (folder / "text_encoder_2").string() +
                             " --t5 " + (folder / "text_encoder_3").string() + " --tokenizer-dir " + folder.string();
  expect_matches_golden(c, single, "single_file");
  auto dir = test::temp_dir("sd3_single_vs_folder");
  auto a = test::run_mmdit("generate -q --model " + single + flags(c["params"]) + " -o " + (dir / "a.png").string(), "sf_a");
  auto b = test::run_mmdit("generate -q --model " + folder.string() + flags(c["params"]) + " -o " + (dir / "b.png").string(), "sf_b");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(read_png(dir / "a.png").pixels, read_png(dir / "b.png").pixels);
  // Without the encoders the single file cannot run: one clear line, exit 2.
  auto bad = test::run_mmdit("generate --model " + (golden() / "tiny-sd3-sai.safetensors").string() + " --prompt x -o " +
                                 (dir / "c.png").string(), "sf_bad");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--clip-l"), std::string::npos) << bad.err;
}

TEST(Sd3Pipeline, PngCarriesTheParameters) {
  const auto c = cases()[0];
  auto dir = test::temp_dir("sd3_meta");
  auto r = test::run_mmdit("generate -q --model " + (golden() / c["model"].get<std::string>()).string() +
                               flags(c["params"]) + " -o " + (dir / "a.png").string(), "sd3_meta");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto text = read_png_text(dir / "a.png");
  auto j = nlohmann::json::parse(text.at("mmdit"));
  EXPECT_EQ(j["prompt"], c["params"]["prompt"]);
  EXPECT_EQ(j["seed"], c["params"]["seed"]);
  EXPECT_EQ(j["steps"], c["params"]["steps"]);
  EXPECT_NE(text.at("parameters").find("Seed: " + std::to_string(c["params"]["seed"].get<int>())), std::string::npos);
}

TEST(Sd3Pipeline, BadRequestsExitTwoWithoutOutput) {
  const std::string model = (golden() / "tiny-sd3").string();
  auto dir = test::temp_dir("sd3_bad");
  const std::string out = " -o " + (dir / "x.png").string();
  for (const std::string args : {"--prompt a --width 100" + out, "--prompt a --steps 0" + out,
                                 "--prompt a --dtype f64" + out, "--prompt a --device tpu" + out,
                                 "--prompt a --slg-scale 2 --slg-layers 1,x" + out, "--prompt a --slg-layers 9 --slg-scale 1" + out,
                                 "--prompt a -o " + (dir / "x.jpg").string(), std::string("--prompt a -o /no/such/dir/x.png"),
                                 "--steps 2" + out}) {
    auto r = test::run_mmdit("generate --model " + model + " " + args, "sd3_bad");
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
  }
  auto missing = test::run_mmdit("generate --model /no/such/model --prompt a" + out, "sd3_bad_model");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_FALSE(fs::exists(dir / "x.png"));
  EXPECT_FALSE(fs::exists(dir / "x.jpg"));
}

}  // namespace
}  // namespace mmdit
