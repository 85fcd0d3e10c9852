// CogVideoX against diffusers goldens (scripts/goldens/cogvideox.py): the DDIM/DPM schedulers, the
// transformer (2B-, 5B- and 1.5-like), the causal 3D VAE (frame-batched, tiled, encode) and whole videos
// through `mmdit generate`.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/errors.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/cogvideox_transformer.h"
#include "models/fused_ops.h"
#include "samplers/prompt_schedule.h"
#include "models/cogvideox_vae.h"
#include "samplers/cogvideox_schedulers.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

const fs::path kDir = fs::path(MMDIT_GOLDEN_DIR) / "cogvideox";

using test::rel_err;

struct Golden : test::GoldenFile {
  explicit Golden(const std::string& name) : GoldenFile(kDir / name) {}
};

CogVideoXSchedulerConfig real_config(double snr) {
  CogVideoXSchedulerConfig c;
  c.prediction_type = "v_prediction";
  c.rescale_betas_zero_snr = true;
  c.timestep_spacing = "trailing";
  c.snr_shift_scale = snr;
  return c;
}

TEST(CogVideoXScheduler, TablesMatchDiffusers) {
  Golden g("scheduler.safetensors");
  for (double snr : {3.0, 1.0}) {
    CogVideoXScheduler s(real_config(snr));
    at::Tensor ours = at::tensor(s.alphas_cumprod(), at::kDouble);
    const std::string key = snr == 3.0 ? "alphas_cumprod_3.0" : "alphas_cumprod_1.0";
    double e = (ours - g[key]).abs().max().item<double>();
    std::printf("[cogvideox] alphas_cumprod snr %g: max abs err %.3g\n", snr, e);
    EXPECT_LE(e, 1e-15) << key;
  }
  auto c = real_config(3.0);
  c.rescale_betas_zero_snr = false;
  EXPECT_LE((at::tensor(CogVideoXScheduler(c).alphas_cumprod(), at::kDouble) - g["alphas_cumprod_norescale"]).abs().max().item<double>(), 1e-15);
  for (const char* spacing : {"trailing", "leading", "linspace"})
    for (int steps : {50, 6, 7}) {
      auto cs = real_config(1.0);
      cs.timestep_spacing = spacing;
      CogVideoXScheduler s(cs);
      s.set_timesteps(steps);
      at::Tensor want = g[std::string("timesteps_") + spacing + "_" + std::to_string(steps)];
      EXPECT_TRUE(at::equal(at::tensor(s.timesteps(), at::kLong), want)) << spacing << " " << steps;
    }
}

TEST(CogVideoXScheduler, DdimAndDpmStepsMatchDiffusers) {
  Golden g("scheduler.safetensors");
  {
    CogVideoXScheduler s(real_config(3.0));
    s.set_timesteps(6);
    at::Tensor x = g["sample"];
    for (int i = 0; i < 6; ++i) {
      x = s.step_ddim(g["model_output_" + std::to_string(i)], x, i).prev_sample;
      double e = rel_err(x, g["ddim_" + std::to_string(i)]);
      EXPECT_LE(e, 1e-6) << "ddim step " << i;
    }
  }
  {
    CogVideoXScheduler s(real_config(1.0));
    s.set_timesteps(6);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(77);
    at::Tensor x = g["sample"], old;
    for (int i = 0; i < 6; ++i) {
      auto out = s.step_dpm(g["model_output_" + std::to_string(i)], old, x, i, gen);
      x = out.prev_sample;
      old = out.pred_original_sample;
      double e = rel_err(x, g["dpm_" + std::to_string(i)]);
      std::printf("[cogvideox] dpm step %d: rel err %.3g\n", i, e);
      EXPECT_LE(e, 1e-6) << "dpm step " << i;
      EXPECT_LE(rel_err(old, g["dpm_x0_" + std::to_string(i)]), 1e-6) << "dpm x0 " << i;
    }
  }
}

class CogVideoXTransformerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CogVideoXTransformerGolden, MatchesDiffusers) {
  torch::NoGradGuard ng;
  Golden io("transformer_" + GetParam() + "_io.safetensors");
  auto m = CogVideoXTransformer::load(kDir / ("transformer_" + GetParam()), at::kCPU, at::kFloat);
  at::Tensor x = io["hidden_states"];
  std::optional<std::pair<at::Tensor, at::Tensor>> rope;
  if (m->config().use_rotary_positional_embeddings) {
    rope = cogvideox_rotary_embeddings(m->config(), x.size(3) * 8, x.size(4) * 8, x.size(1));
    EXPECT_LE(rel_err(rope->first, io["rope_cos"]), 1e-7);
    EXPECT_LE(rel_err(rope->second, io["rope_sin"]), 1e-7);
  }
  at::Tensor y = m->forward(x, io["encoder_hidden_states"], io["timestep"].to(at::kLong), rope);
  double e = rel_err(y, io["out"]);
  std::printf("[cogvideox] transformer %s: rel err %.3g\n", GetParam().c_str(), e);
  EXPECT_LE(e, 1e-4);
  // The fast path's structure with the ATen reference of each fused kernel.
  fused::ModeGuard fast(fused::Mode::Reference);
  at::Tensor yf = m->forward(x, io["encoder_hidden_states"], io["timestep"].to(at::kLong), rope);
  std::printf("[cogvideox] transformer %s fast path: rel err %.3g (vs plain path %.3g)\n", GetParam().c_str(),
              rel_err(yf, io["out"]), rel_err(yf, y));
  EXPECT_LE(rel_err(yf, io["out"]), 1e-4);
  EXPECT_LE(rel_err(yf, y), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Tiny, CogVideoXTransformerGolden, ::testing::Values("2b", "5b", "15"));

TEST(CogVideoXVae, DecodeTiledAndEncodeMatchDiffusers) {
  torch::NoGradGuard ng;
  Golden io("vae_io.safetensors");
  auto vae = AutoencoderKLCogVideoX::load(kDir / "vae", at::kCPU, at::kFloat);
  at::Tensor d = vae->decode(io["latents"]);
  double e = rel_err(d, io["decoded"]);
  std::printf("[cogvideox] vae decode (5 latent frames, chunks 3+2): rel err %.3g\n", e);
  EXPECT_EQ(d.sizes(), io["decoded"].sizes());
  EXPECT_LE(e, 1e-4);
  CogVideoXTiling t;
  t.tile_sample_min_height = 24;
  t.tile_sample_min_width = 40;
  at::Tensor dt = vae->decode(io["latents"], &t);
  double et = rel_err(dt, io["decoded_tiled"]);
  std::printf("[cogvideox] vae tiled decode: rel err %.3g\n", et);
  EXPECT_EQ(dt.sizes(), io["decoded_tiled"].sizes());
  EXPECT_LE(et, 1e-4);
  auto [mean, logvar] = vae->encode(io["video"]);
  double em = rel_err(mean, io["mean"]), el = rel_err(logvar, io["logvar"]);
  std::printf("[cogvideox] vae encode: mean rel err %.3g, logvar %.3g\n", em, el);
  EXPECT_LE(em, 1e-4);
  EXPECT_LE(el, 1e-4);
}

int max_pixel_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  int m = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i)
    m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

TEST(CogVideoXPipeline, FramesEqualDiffusers) {
  std::ifstream in(kDir / "cases.json");
  auto cases = nlohmann::json::parse(in);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const auto& p = c["params"];
    auto dir = test::temp_dir("cogvideox_" + name);
    auto q = [](const std::string& s) { return "'" + s + "'"; };
    std::string args = "generate -q --model " + (kDir / c["model"].get<std::string>()).string() + " --prompt " +
                       q(p["prompt"]) + " --seed " + std::to_string(p["seed"].get<int>()) + " --steps " +
                       std::to_string(p["steps"].get<int>()) + " --cfg " + std::to_string(p["cfg"].get<double>()) +
                       " --width " + std::to_string(p["width"].get<int>()) + " --height " +
                       std::to_string(p["height"].get<int>()) + " --frames " + std::to_string(p["frames"].get<int>()) +
                       " --max-sequence-length 16 --output " + (dir / "f_%03d.png").string();
    if (p.contains("negative_prompt")) args += " --negative-prompt " + q(p["negative_prompt"]);
    if (p.value("dynamic_cfg", false)) args += " --dynamic-cfg";
    auto r = test::run_mmdit(args, name);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto& frames = c["frames"];
    int worst = 0;
    for (size_t i = 0; i < frames.size(); ++i) {
      char f[32];
      std::snprintf(f, sizeof f, "f_%03d.png", int(i));
      ASSERT_TRUE(fs::exists(dir / f)) << f;
      worst = std::max(worst, max_pixel_diff(read_png(dir / f), read_png(kDir / frames[i].get<std::string>())));
    }
    EXPECT_FALSE(fs::exists(dir / "f_009.png"));
    std::printf("[cogvideox] %s: %zu frames, max pixel diff %d\n", name.c_str(), frames.size(), worst);
    EXPECT_LE(worst, 1);
  }
}

TEST(CogVideoXPipeline, FramesNotFourKPlusOneIsAUsageError) {
  auto dir = test::temp_dir("cogvideox_frames10");
  auto r = test::run_mmdit("generate -q --model " + (kDir / "tiny-cogvideox-2b").string() +
                               " --prompt x --steps 1 --frames 10 --max-sequence-length 16 --output " +
                               (dir / "f_%03d.png").string(),
                           "frames10");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("--frames 10"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(dir));
}

// Multi-prompt video (samplers/prompt_schedule.h): three prompts give the frame count of the tile formula on the
// tiny 2B (sin-cos positions) and 5B (RoPE, DPM) models, and a one-line prompts file gives the plain video exactly.
TEST(CogVideoXPipeline, MultiPromptFramesFollowTheTileFormula) {
  for (const std::string m : {"tiny-cogvideox-2b", "tiny-cogvideox-5b"}) {
    SCOPED_TRACE(m);
    auto dir = test::temp_dir("cogvideox_multi_" + m);
    const std::string common = "generate -q --model " + (kDir / m).string() +
                               " --steps 3 --frames 9 --max-sequence-length 16 --seed 5 --cfg 6 ";
    auto r = test::run_mmdit(common + "--prompt 'a red circle' --prompt 'a blue square' --prompt 'a green star' --output " +
                                 (dir / "m_%03d.png").string(),
                             "multi");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // 9 frames = 3 latent frames a tile, overlap round(3 * 9 / 13) = 2, 3 + 2 * 2 = 7 tiles: 3 + 6 * 1 = 9 latent
    // frames, (9 - 1) * 4 + 1 = 33 frames.
    EXPECT_EQ(make_prompt_schedule({1, 1, 1}, 3, default_overlap(3), 2).latent_frames(), 9);
    EXPECT_TRUE(fs::exists(dir / "m_032.png"));
    EXPECT_FALSE(fs::exists(dir / "m_033.png"));
    // --overlap 1 --transition-tiles 1: 5 tiles of stride 2, 11 latent frames, 41 frames.
    r = test::run_mmdit(common + "--prompt a --prompt b --prompt c --overlap 1 --transition-tiles 1 --output " +
                            (dir / "o_%03d.png").string(),
                        "multi_overlap");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(dir / "o_040.png"));
    EXPECT_FALSE(fs::exists(dir / "o_041.png"));
    // One prompt in a prompts file: today's video, bit for bit.
    { std::ofstream(dir / "one.txt") << "a red circle\n"; }
    ASSERT_EQ(test::run_mmdit(common + "--prompt 'a red circle' --output " + (dir / "p_%03d.png").string(), "plain").exit_code, 0);
    r = test::run_mmdit(common + "--prompts-file " + (dir / "one.txt").string() + " --output " + (dir / "q_%03d.png").string(),
                        "one_prompt_file");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (int i = 0; i < 9; ++i) {
      char a[32], b[32];
      std::snprintf(a, sizeof a, "p_%03d.png", i);
      std::snprintf(b, sizeof b, "q_%03d.png", i);
      EXPECT_EQ(max_pixel_diff(read_png(dir / a), read_png(dir / b)), 0) << a;
    }
  }
}

TEST(CogVideoXPipeline, MultiPromptTilesAndWeights) {
  // DiTCtrl's defaults: 3 prompts, 2 transition tiles, tiles of 13 with overlap 9 -> 7 tiles, 37 latent frames.
  PromptSchedule s = make_prompt_schedule({1, 1, 1}, 13, default_overlap(13), 2);
  EXPECT_EQ(default_overlap(13), 9);
  ASSERT_EQ(s.tiles.size(), 7u);
  EXPECT_EQ(s.latent_frames(), 37);
  EXPECT_NEAR(s.tiles[1].weight, 1.0 / 3.0, 1e-12);
  EXPECT_EQ(s.tiles[2].first, 0);
  EXPECT_EQ(s.tiles[2].second, 1);
  EXPECT_EQ(s.tiles[3].first, 1);
  EXPECT_EQ(s.tiles[3].weight, 0.0);
  // A prompt held for 2 tiles.
  EXPECT_EQ(make_prompt_schedule({2, 1}, 13, 9, 2).tiles.size(), 5u);
  // Triangular weights: min(2(f + 1/2)/T, 2 - 2(f + 1/2)/T).
  at::Tensor w = tile_weights(13);
  EXPECT_NEAR(w[0].item<float>(), 1.0 / 13.0, 1e-7);
  EXPECT_NEAR(w[6].item<float>(), 1.0, 1e-7);
  EXPECT_NEAR(w[12].item<float>(), 1.0 / 13.0, 1e-7);
  // K/V sharing defaults: DiTCtrl's 2B values, scaled for the 5B's 42 layers.
  KvShareWindow kv = default_kv_share(30, 50);
  EXPECT_EQ(kv.layers, std::vector<int>({25, 26, 27, 28, 29}));
  EXPECT_EQ(kv.first_step, 2);
  EXPECT_EQ(kv.last_step, 24);
  EXPECT_EQ(default_kv_share(42, 50).layers.front(), 35);
  EXPECT_THROW(make_prompt_schedule({1, 1}, 3, 3, 2), UsageError);
}

TEST(CogVideoXPipeline, BadMultiPromptInputExitsTwo) {
  auto dir = test::temp_dir("cogvideox_multi_bad");
  const std::string model = " --model " + (kDir / "tiny-cogvideox-2b").string() + " --frames 9 --max-sequence-length 16 ";
  { std::ofstream(dir / "blank.txt") << "\n  \n"; }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"generate -q" + model + "--prompt a --prompt b --overlap 3", "--overlap 3"},
      {"generate -q" + model + "--prompt a --prompt ''", "empty prompt"},
      {"generate -q --prompt a --prompt b", "needs a video model"},
      {"generate -q" + model + "--prompt a --overlap 1", "only for a multi-prompt video"},
      {"generate -q" + model + "--prompt a --prompt b --kv-share-layers 9", "--kv-share-layers"},
      {"generate -q" + model + "--prompt a --prompt b --kv-share-steps 5-2", "--kv-share-steps"},
      {"generate -q" + model + "--prompts-file " + (dir / "blank.txt").string(), "no prompts"},
  };
  for (const auto& [args, expect] : cases) {
    auto r = test::run_mmdit(args + " --output " + (dir / "f_%03d.png").string(), "multi_bad");
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(expect), std::string::npos) << args << ": " << r.err;
  }
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename(), "blank.txt");
  // Job files: "prompts" stands for "prompt"; strings or {"prompt", "tiles"}; not both keys; no empty entry.
  const nlohmann::json base = {{"model", (kDir / "tiny-cogvideox-2b").string()}, {"frames", 9}, {"steps", 2},
                               {"max_sequence_length", 16}, {"output", "v.mp4"}};
  nlohmann::json ok = base, both = base, empty = base;
  ok["prompts"] = {"a red circle", {{"prompt", "a blue square"}, {"tiles", 2}}};
  both["prompts"] = {"a", "b"}, both["prompt"] = "a";
  empty["prompts"] = {"a", " "};
  auto jobs_dir = test::temp_dir("cogvideox_multi_jobs");
  const std::vector<std::pair<nlohmann::json, std::string>> jobs = {
      {ok, ""}, {both, "jobs[0].prompts: give either"}, {empty, "jobs[0].prompts[1]: empty prompt"}};
  for (const auto& [job, expect] : jobs) {
    { std::ofstream(jobs_dir / "j.json") << nlohmann::json({{"jobs", {job}}}).dump(); }
    auto r = test::run_mmdit("run --check " + (jobs_dir / "j.json").string(), "multi_jobs");
    EXPECT_EQ(r.exit_code, expect.empty() ? 0 : 2) << r.err;
    if (!expect.empty()) EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
  }
}

// A user's --output is a file-name pattern, never a printf format: "%s" once crashed mmdit in snprintf.
TEST(CogVideoXPipeline, BadFramePatternIsAUsageError) {
  auto dir = test::temp_dir("cogvideox_badpattern");
  for (const char* bad : {"f_%s.png", "f_%d_%d.png", "f_%n.png"}) {
    auto r = test::run_mmdit("generate -q --model " + (kDir / "tiny-cogvideox-2b").string() +
                                 " --prompt x --steps 1 --frames 5 --max-sequence-length 16 --output '" +
                                 (dir / bad).string() + "'",
                             "badpattern");
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("frame pattern"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

// `mmdit run --skip-existing` counts a frame-pattern output as done when its frame 0 exists: frame 0 is
// written last, so a run killed while writing frames is not skipped.
TEST(CogVideoXPipeline, SkipExistingSeesFramePatterns) {
  auto dir = test::temp_dir("cogvideox_skip");
  nlohmann::json jobs = {{"jobs", {{{"model", (kDir / "tiny-cogvideox-2b").string()}, {"prompt", "x"}, {"seed", 1},
                                    {"steps", 1}, {"frames", 5}, {"max_sequence_length", 16},
                                    {"output", "f_%03d.png"}}}}};
  std::ofstream(dir / "jobs.json") << jobs.dump();
  const std::string cmd = "run -q --skip-existing " + (dir / "jobs.json").string();
  auto first = test::run_mmdit(cmd, "skip1");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(fs::exists(dir / ("f_00" + std::to_string(i) + ".png"))) << i;
  auto again = test::run_mmdit(cmd, "skip2");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("0 ok, 0 failed, 0 invalid, 1 skipped"), std::string::npos) << again.err;
  fs::remove(dir / "f_000.png");  // as if killed before the last write
  auto redo = test::run_mmdit(cmd, "skip3");
  ASSERT_EQ(redo.exit_code, 0) << redo.err;
  EXPECT_NE(redo.err.find("1 ok, 0 failed, 0 invalid, 0 skipped"), std::string::npos) << redo.err;
  EXPECT_TRUE(fs::exists(dir / "f_000.png"));
}

}  // namespace
}  // namespace mmdit
