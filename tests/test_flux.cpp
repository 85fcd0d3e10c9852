// FLUX.1 transformer, latent packing, scheduler schedule and whole pipeline against diffusers goldens
// (scripts/goldens/flux.py: tiny random dev-like / schnell-like models in the diffusers layout, a BFL
// single file and its fp8-e4m3 copy).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/errors.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "core/weights.h"
#include "models/flux_pipeline.h"
#include "models/flux_transformer.h"
#include "models/fused_ops.h"
#include "samplers/flow_match.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

const fs::path kDir = fs::path(MMDIT_GOLDEN_DIR) / "flux";

using test::rel_err;

struct Golden : test::GoldenFile {
  explicit Golden(const std::string& name) : GoldenFile(kDir / name) {}
};

at::Tensor run(FluxTransformer& m, const Golden& io, at::ScalarType dtype) {
  torch::NoGradGuard ng;
  auto in = [&](const char* n) { return io[n].to(dtype); };
  at::Tensor g = m.config().guidance_embeds ? io["guidance"] : at::Tensor();
  return m.forward(in("hidden_states"), in("encoder_hidden_states"), in("pooled"), in("timestep"), io["img_ids"],
                   io["txt_ids"], g);
}

class FluxTransformerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(FluxTransformerGolden, FolderMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = FluxTransformer::load(kDir / GetParam(), at::kCPU, at::kFloat);
  at::Tensor y = run(*m, io, at::kFloat);
  const double e = rel_err(y, io["out"]);
  std::printf("[flux] %s folder f32: rel err %.3g\n", GetParam().c_str(), e);
  EXPECT_LE(e, 1e-4);
}

TEST_P(FluxTransformerGolden, Bf16IsClose) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = FluxTransformer::load(kDir / GetParam(), at::kCPU, at::kBFloat16);
  at::Tensor y = run(*m, io, at::kBFloat16);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  const double e = rel_err(y, io["out"]);
  std::printf("[flux] %s folder bf16: rel err %.3g\n", GetParam().c_str(), e);
  EXPECT_LE(e, 5e-2);
}

// The fast path's structure with the ATen reference of each fused kernel: diffusers' output, and the plain path's.
TEST_P(FluxTransformerGolden, FastPathMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = FluxTransformer::load(kDir / GetParam(), at::kCPU, at::kFloat);
  at::Tensor plain = run(*m, io, at::kFloat);
  fused::ModeGuard fast(fused::Mode::Reference);
  at::Tensor y = run(*m, io, at::kFloat);
  std::printf("[flux] %s fast path: rel err %.3g (vs plain path %.3g)\n", GetParam().c_str(), rel_err(y, io["out"]),
              rel_err(y, plain));
  EXPECT_LE(rel_err(y, io["out"]), 1e-4);
  EXPECT_LE(rel_err(y, plain), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Tiny, FluxTransformerGolden, ::testing::Values("dev_tiny", "schnell_tiny"));

TEST(FluxTransformer, NamesEqualDiffusersKeys) {
  auto m = FluxTransformer::load(kDir / "dev_tiny", at::kCPU, at::kFloat);
  auto store = WeightStore::open(kDir / "dev_tiny");
  EXPECT_EQ(m->named_parameters().size(), store.size());
}

TEST(FluxTransformer, BflSingleFileMatchesDiffusers) {
  auto store = WeightStore::open(kDir / "tiny-flux-dev-bfl.safetensors");
  auto config = infer_flux_config(store);
  auto folder = FluxTransformer::load(kDir / "tiny-flux-dev" / "transformer", at::kCPU, at::kFloat);
  const auto& fc = folder->config();
  EXPECT_EQ(config.num_layers, fc.num_layers);
  EXPECT_EQ(config.num_single_layers, fc.num_single_layers);
  EXPECT_EQ(config.num_attention_heads, fc.num_attention_heads);
  EXPECT_EQ(config.attention_head_dim, fc.attention_head_dim);
  EXPECT_EQ(config.axes_dims_rope, fc.axes_dims_rope);
  EXPECT_EQ(config.guidance_embeds, fc.guidance_embeds);
  EXPECT_EQ(config.joint_attention_dim, fc.joint_attention_dim);
  EXPECT_EQ(config.pooled_projection_dim, fc.pooled_projection_dim);
  auto m = load_flux_single_file(store, config, at::kCPU, at::kFloat);
  Golden io("tiny-flux-dev-io.safetensors");
  const double e = rel_err(run(*m, io, at::kFloat), io["out"]);
  std::printf("[flux] BFL single file f32: rel err %.3g\n", e);
  EXPECT_LE(e, 1e-4);
  // The folder model gives the same numbers.
  EXPECT_LE(rel_err(run(*folder, io, at::kFloat), io["out"]), 1e-4);
}

TEST(FluxTransformer, Fp8SingleFileUpcastsOnLoad) {
  auto store = WeightStore::open(kDir / "tiny-flux-dev-bfl-fp8.safetensors");
  EXPECT_EQ(store.info("img_in.weight")->dtype, DType::F8_E4M3);
  auto m = load_flux_single_file(store, infer_flux_config(store), at::kCPU, at::kFloat);
  Golden io("tiny-flux-dev-io.safetensors");
  Golden expected("tiny-flux-dev-fp8-io.safetensors");
  const double e = rel_err(run(*m, io, at::kFloat), expected["out"]);
  std::printf("[flux] fp8 single file (upcast to f32): rel err %.3g\n", e);
  EXPECT_LE(e, 1e-4);
}

TEST(FluxTransformer, WrongGuidanceIsAShapeError) {
  auto m = FluxTransformer::load(kDir / "dev_tiny", at::kCPU, at::kFloat);
  Golden io("dev_tiny_io.safetensors");
  torch::NoGradGuard ng;
  EXPECT_THROW(m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"], io["img_ids"],
                          io["txt_ids"]),
               ShapeError);
  EXPECT_THROW(m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"],
                          io["img_ids"].narrow(0, 0, 5), io["txt_ids"], io["guidance"]),
               ShapeError);
}

TEST(FluxLatents, PackUnpackAndIdsEqualFluxPipeline) {
  Golden g("latents.safetensors");
  at::Tensor packed = flux_pack_latents(g["latents"]);
  EXPECT_TRUE(packed.equal(g["packed"]));
  EXPECT_TRUE(flux_unpack_latents(packed, 8, 12).equal(g["unpacked"]));
  EXPECT_TRUE(flux_unpack_latents(packed, 8, 12).equal(g["latents"]));
  EXPECT_TRUE(flux_image_ids(4, 6, at::kFloat).equal(g["image_ids"]));
  EXPECT_TRUE(flux_text_ids(5, at::kFloat).equal(at::zeros({5, 3})));
}

TEST(FluxScheduler, CustomSigmasWithMuEqualDiffusers) {
  std::ifstream in(kDir / "scheduler.json");
  auto cases = nlohmann::json::parse(in);
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    FlowMatchEulerScheduler s(FlowMatchConfig::from_json(c["config"]));
    const int steps = c["steps"].get<int>();
    const auto cfg = s.config();
    const double mu = calculate_shift(c["image_seq_len"].get<int64_t>(), cfg.base_image_seq_len, cfg.max_image_seq_len,
                                      cfg.base_shift, cfg.max_shift);
    EXPECT_DOUBLE_EQ(mu, c["mu"].get<double>());
    s.set_sigmas(flux_sigmas(steps), mu);
    const auto es = c["sigmas"].get<std::vector<float>>(), et = c["timesteps"].get<std::vector<float>>();
    ASSERT_EQ(s.sigmas().size(), es.size());
    ASSERT_EQ(s.timesteps().size(), et.size());
    for (size_t i = 0; i < es.size(); ++i) EXPECT_EQ(s.sigmas()[i], es[i]) << c["variant"] << " " << steps << " i=" << i;
    for (size_t i = 0; i < et.size(); ++i) EXPECT_EQ(s.timesteps()[i], et[i]) << c["variant"] << " " << steps << " i=" << i;
  }
}

// --- whole pipeline through `mmdit generate` ------------------------------------------------------------

nlohmann::json cases() {
  std::ifstream in(kDir / "cases.json");
  return nlohmann::json::parse(in);
}

std::string flags(const nlohmann::json& p) {
  auto q = [](const std::string& s) { return "'" + s + "'"; };
  std::string f = " --prompt " + q(p["prompt"]) + " --seed " + std::to_string(p["seed"].get<int>()) + " --steps " +
                  std::to_string(p["steps"].get<int>()) + " --width " + std::to_string(p["width"].get<int>()) +
                  " --height " + std::to_string(p["height"].get<int>());
  if (p.contains("guidance")) f += " --guidance " + std::to_string(p["guidance"].get<double>());
  if (p.contains("cfg")) f += " --cfg " + std::to_string(p["cfg"].get<double>());
  if (p.contains("negative_prompt")) f += " --negative-prompt " + q(p["negative_prompt"]);
  if (p.contains("batch")) f += " --batch " + std::to_string(p["batch"].get<int>());
  if (p.contains("max_sequence_length")) f += " --max-sequence-length " + std::to_string(p["max_sequence_length"].get<int>());
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

void expect_matches_golden(const nlohmann::json& c, const std::string& model_args, const std::string& tag,
                           const std::string& extra = "") {
  auto dir = test::temp_dir("flux_pipeline_" + tag);
  const auto out = dir / "out.png";
  auto r = test::run_mmdit("generate -q --model " + model_args + flags(c["params"]) + extra + " --output " + out.string(), tag);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto& images = c["images"];
  for (size_t i = 0; i < images.size(); ++i) {
    fs::path got = images.size() > 1 ? dir / ("out-" + std::to_string(i) + ".png") : out;
    Image expected = read_png(kDir / images[i].get<std::string>());
    Image actual = read_png(got);
    int lo = 255, hi = 0;
    for (auto v : expected.pixels) lo = std::min<int>(lo, v), hi = std::max<int>(hi, v);
    EXPECT_GT(hi - lo, 60) << "golden image too flat to be a useful check";
    const int d = max_pixel_diff(actual, expected);
    std::printf("[flux] %s image %zu: max pixel diff %d\n", tag.c_str(), i, d);
    EXPECT_LE(d, 1) << tag << " image " << i;
  }
}

TEST(FluxPipeline, ImagesEqualDiffusers) {
  for (const auto& c : cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    expect_matches_golden(c, (kDir / c["model"].get<std::string>()).string(), c["name"]);
  }
}

TEST(FluxPipeline, BflSingleFileGivesTheSameImage) {
  const auto c = cases()[0];
  ASSERT_EQ(c["model"], "tiny-flux-dev");
  const fs::path pipe = kDir / "tiny-flux-dev";
  const std::string parts = " --clip-l " + (pipe / "text_encoder").string() + " --t5 " + (pipe / "text_encoder_2").string() +
                            " --tokenizer-dir " + pipe.string() + " --vae " + (kDir / "tiny-flux-ae.safetensors").string();
  expect_matches_golden(c, (kDir / "tiny-flux-dev-bfl.safetensors").string(), "flux_bfl", parts);
  // The VAE as a diffusers folder works too.
  const std::string parts2 = " --clip-l " + (pipe / "text_encoder").string() + " --t5 " + (pipe / "text_encoder_2").string() +
                             " --tokenizer-dir " + pipe.string() + " --vae " + (pipe / "vae").string();
  expect_matches_golden(c, (kDir / "tiny-flux-dev-bfl.safetensors").string(), "flux_bfl_vae_folder", parts2);
}

TEST(FluxPipeline, Bf16CpuIsClose) {
  // Against diffusers' own bf16 CPU run of the first case (dev_square_bf16.png): within 2 levels. The f32
  // golden is far from any bf16 run of this tiny random model (diffusers bf16 vs f32: mean 10, max 53
  // levels), so it only gets a loose mean bound.
  const auto c = cases()[0];
  auto dir = test::temp_dir("flux_bf16");
  auto r = test::run_mmdit("generate -q --dtype bf16 --model " + (kDir / c["model"].get<std::string>()).string() +
                               flags(c["params"]) + " -o " + (dir / "a.png").string(),
                           "flux_bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Image actual = read_png(dir / "a.png");
  Image bf16 = read_png(kDir / "dev_square_bf16.png"), f32 = read_png(kDir / c["images"][0].get<std::string>());
  ASSERT_EQ(actual.pixels.size(), f32.pixels.size());
  double sum = 0;
  for (size_t i = 0; i < actual.pixels.size(); ++i) sum += std::abs(int(actual.pixels[i]) - int(f32.pixels[i]));
  const double mean = sum / double(actual.pixels.size());
  const int d = max_pixel_diff(actual, bf16);
  std::printf("[flux] bf16 cpu image: max pixel diff %d vs diffusers bf16; mean abs diff %.2f vs the f32 golden\n", d, mean);
  EXPECT_LE(d, 2);
  EXPECT_LE(mean, 16.0);
}

TEST(FluxPipeline, Fp8SingleFileGenerates) {
  const fs::path pipe = kDir / "tiny-flux-dev";
  auto dir = test::temp_dir("flux_fp8");
  auto r = test::run_mmdit("generate -q --model " + (kDir / "tiny-flux-dev-bfl-fp8.safetensors").string() +
                               " --clip-l " + (pipe / "text_encoder").string() + " --t5 " + (pipe / "text_encoder_2").string() +
                               " --tokenizer-dir " + pipe.string() + " --vae " + (kDir / "tiny-flux-ae.safetensors").string() +
                               " --prompt 'a red circle' --steps 2 --width 32 --height 32 --max-sequence-length 16 -o " +
                               (dir / "a.png").string(),
                           "flux_fp8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Image img = read_png(dir / "a.png");
  EXPECT_EQ(img.width, 32);
  EXPECT_EQ(img.height, 32);
}

TEST(FluxPipeline, BadRequestsExitTwoWithOneLine) {
  const std::string model = (kDir / "tiny-flux-dev").string();
  const fs::path pipe = kDir / "tiny-flux-dev";
  auto dir = test::temp_dir("flux_bad");
  const std::string out = " -o " + (dir / "x.png").string();
  for (const std::string args :
       {model + " --prompt a --width 72" + out, model + " --prompt a --height 40" + out,
        model + " --prompt a --guidance -1" + out, model + " --prompt a --max-sequence-length 600" + out,
        model + " --prompt a --dtype f64" + out, model + " --prompt a --vae /no/such/vae" + out,
        (kDir / "tiny-flux-dev-bfl.safetensors").string() + " --prompt a" + out,  // no --clip-l / --t5 / tokenizers
        (kDir / "tiny-flux-dev-bfl.safetensors").string() + " --prompt a --clip-l " + (pipe / "text_encoder").string() +
            " --t5 " + (pipe / "text_encoder_2").string() + " --tokenizer-dir " + pipe.string() + out}) {  // no VAE
    auto r = test::run_mmdit("generate --model " + args, "flux_bad");
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(dir / "x.png"));
}

}  // namespace
}  // namespace mmdit
