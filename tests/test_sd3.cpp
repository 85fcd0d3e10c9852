// SD3 / SD3.5 transformer, 16-channel VAE and flow-matching scheduler against diffusers goldens
// (scripts/goldens/sd3.py: tiny random models in the diffusers layout and as SAI single files).
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/errors.h"
#include "core/safetensors.h"
#include "core/weights.h"
#include "models/fused_ops.h"
#include "models/sd3_transformer.h"
#include "models/vae.h"
#include "samplers/flow_match.h"
#include "tests/test_controls_util.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {

const std::filesystem::path kDir = std::filesystem::path(MMDIT_GOLDEN_DIR) / "sd3";

using test::rel_err;

struct Golden : test::GoldenFile {
  explicit Golden(const std::string& name) : GoldenFile(kDir / name) {}
};

class SD3TransformerGolden : public ::testing::TestWithParam<std::string> {};

void check_transformer(SD3Transformer& m, const Golden& io, at::ScalarType dtype, double tol, const std::string& what) {
  torch::NoGradGuard ng;
  auto in = [&](const char* n) { return io[n].to(dtype); };
  at::Tensor y = m.forward(in("hidden_states"), in("encoder_hidden_states"), in("pooled"), io["timestep"]);
  EXPECT_EQ(y.scalar_type(), dtype);
  double e = rel_err(y, io["out"]);
  std::printf("[sd3] %s: rel err %.3g\n", what.c_str(), e);
  EXPECT_LE(e, tol) << what;
  // The block hook: --skip-blocks 1 equals diffusers' skip_layers=[1].
  GenerateRequest r;
  r.skip_blocks = {1};
  const auto& c = m.config();
  test::PassControls skip(r, {"sd3", int(c.num_layers), 0, int(c.num_attention_heads)}, io["hidden_states"].size(0));
  at::Tensor ys = m.forward(in("hidden_states"), in("encoder_hidden_states"), in("pooled"), io["timestep"], &skip.ctx);
  double es = rel_err(ys, io["out_skip1"]);
  std::printf("[sd3] %s skip [1]: rel err %.3g\n", what.c_str(), es);
  EXPECT_LE(es, tol) << what << " with skip layers";
}

TEST_P(SD3TransformerGolden, FolderMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = SD3Transformer::load(kDir / GetParam(), at::kCPU, at::kFloat);
  check_transformer(*m, io, at::kFloat, 1e-4, GetParam() + " folder f32");
}

TEST_P(SD3TransformerGolden, SaiSingleFileMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto store = WeightStore::open(kDir / (GetParam() + "_sai.safetensors"));
  auto config = infer_sd3_config(store, /*attention_head_dim=*/8);
  auto folder_config = SD3Transformer::load(kDir / GetParam(), at::kCPU, at::kFloat)->config();
  EXPECT_EQ(config.num_layers, folder_config.num_layers);
  EXPECT_EQ(config.num_attention_heads, folder_config.num_attention_heads);
  EXPECT_EQ(config.pos_embed_max_size, folder_config.pos_embed_max_size);
  EXPECT_EQ(config.dual_attention_layers, folder_config.dual_attention_layers);
  EXPECT_EQ(config.qk_norm, folder_config.qk_norm);
  EXPECT_EQ(config.joint_attention_dim, folder_config.joint_attention_dim);
  EXPECT_EQ(config.pooled_projection_dim, folder_config.pooled_projection_dim);
  auto m = load_sd3_single_file(store, config, at::kCPU, at::kFloat);
  check_transformer(*m, io, at::kFloat, 1e-4, GetParam() + " SAI f32");
}

TEST_P(SD3TransformerGolden, Bf16IsClose) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = SD3Transformer::load(kDir / GetParam(), at::kCPU, at::kBFloat16);
  check_transformer(*m, io, at::kBFloat16, 5e-2, GetParam() + " folder bf16");
}

// The fast path's structure (fused QKV, one-pass norms, QK norm into the joint buffers, GELU GEMM), with the
// ATen reference of each fused kernel: diffusers' output, and the plain path's, with and without a control.
TEST_P(SD3TransformerGolden, FastPathMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto m = SD3Transformer::load(kDir / GetParam(), at::kCPU, at::kFloat);
  torch::NoGradGuard ng;
  at::Tensor plain = m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"]);
  fused::ModeGuard fast(fused::Mode::Reference);
  check_transformer(*m, io, at::kFloat, 1e-4, GetParam() + " fast path f32");
  at::Tensor y = m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"]);
  std::printf("[sd3] %s fast path vs plain path: rel err %.3g\n", GetParam().c_str(), rel_err(y, plain));
  EXPECT_LE(rel_err(y, plain), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Tiny, SD3TransformerGolden, ::testing::Values("sd3_tiny", "sd35m_tiny"));

TEST(SD3Transformer, ConfigAndWeightsDisagreeIsAShapeError) {
  auto store = WeightStore::open(kDir / "sd3_tiny_sai.safetensors");
  auto config = infer_sd3_config(store, 8);
  config.joint_attention_dim = 48;
  EXPECT_THROW(load_sd3_single_file(store, config, at::kCPU, at::kFloat), ShapeError);
  // Default head dim 64 does not divide the tiny model's hidden size 16.
  EXPECT_THROW(infer_sd3_config(store), ShapeError);
}

// The module's names equal the real SD3.5-large diffusers checkpoint's keys (layout files in shared/:
// config.json + index, no weights). Dimensions are shrunk; names depend only on layers and options.
TEST(SD3Transformer, NamesEqualRealSd35LargeCheckpoint) {
  const auto dir = test::shared_dir() / "model-layouts/stabilityai/stable-diffusion-3.5-large/transformer";
  if (!std::filesystem::exists(dir / "diffusion_pytorch_model.safetensors.index.json")) GTEST_SKIP() << "no layout files";
  std::ifstream in(dir / "config.json");
  auto config = SD3TransformerConfig::from_json(nlohmann::json::parse(in));
  EXPECT_EQ(config.num_layers, 38);
  EXPECT_EQ(config.qk_norm, "rms_norm");
  config.num_attention_heads = 1;
  config.attention_head_dim = config.caption_projection_dim = config.joint_attention_dim = 8;
  config.pooled_projection_dim = 8;
  config.pos_embed_max_size = 4;
  SD3Transformer m(config);
  std::set<std::string> ours, theirs;
  for (const auto& p : m.named_parameters()) ours.insert(p.key());
  for (const auto& b : m.named_buffers()) ours.insert(b.key());
  auto store = WeightStore::open(dir / "diffusion_pytorch_model.safetensors.index.json");
  for (const auto& n : store.names()) theirs.insert(n);
  std::vector<std::string> diff;
  std::set_symmetric_difference(ours.begin(), ours.end(), theirs.begin(), theirs.end(), std::back_inserter(diff));
  EXPECT_TRUE(diff.empty()) << diff.size() << " names differ, first: " << diff.front();
}

TEST(SD3Transformer, BadInputsAreShapeErrors) {
  torch::NoGradGuard ng;
  auto m = SD3Transformer::load(kDir / "sd3_tiny", at::kCPU, at::kFloat);
  at::Tensor ctx = at::zeros({1, 3, 32}), pooled = at::zeros({1, 16}), t = at::zeros({1});
  EXPECT_THROW(m->forward(at::zeros({1, 16, 31, 24}), ctx, pooled, t), ShapeError);   // odd size
  EXPECT_THROW(m->forward(at::zeros({1, 16, 64, 24}), ctx, pooled, t), ShapeError);   // beyond pos_embed_max_size
  EXPECT_THROW(m->forward(at::zeros({1, 4, 32, 24}), ctx, pooled, t), ShapeError);    // channels
  EXPECT_THROW(m->forward(at::zeros({1, 16, 32, 24}), at::zeros({1, 3, 8}), pooled, t), ShapeError);
  EXPECT_NO_THROW(m->forward(at::zeros({1, 16, 48, 48}), ctx, pooled, t));           // the full 24x24 grid
}

class VaeGolden : public ::testing::TestWithParam<std::string> {};

void check_vae(AutoencoderKL& vae, const Golden& io, at::ScalarType dtype, double tol, const std::string& what) {
  torch::NoGradGuard ng;
  auto report = [&](const char* name, const at::Tensor& got, const at::Tensor& want) {
    double e = rel_err(got, want);
    std::printf("[vae] %s %s: rel err %.3g\n", what.c_str(), name, e);
    EXPECT_LE(e, tol) << what << " " << name;
  };
  report("decode", vae.decode_latents(io["latents"].to(dtype)), io["decoded"]);
  at::Tensor image = io["image"].to(dtype);
  at::Tensor moments = vae.encode_moments(image);
  report("encode mean", vae.encode_mean(image), io["mean"]);
  report("encode logvar", moments.narrow(1, vae.config().latent_channels, vae.config().latent_channels), io["logvar"]);
  report("encode latents", vae.encode_latents(image), io["encoded_latents"]);
}

TEST_P(VaeGolden, FolderMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto vae = AutoencoderKL::load(kDir / GetParam(), at::kCPU, at::kFloat);
  check_vae(*vae, io, at::kFloat, 1e-4, GetParam() + " folder f32");
}

TEST_P(VaeGolden, LdmSingleFileMatchesDiffusers) {
  Golden io(GetParam() + "_io.safetensors");
  auto store = WeightStore::open(kDir / (GetParam() + "_ldm.safetensors"));
  auto config = infer_vae_config(store, /*norm_num_groups=*/4);
  auto folder = AutoencoderKL::load(kDir / GetParam(), at::kCPU, at::kFloat)->config();
  EXPECT_EQ(config.block_out_channels, folder.block_out_channels);
  EXPECT_EQ(config.layers_per_block, folder.layers_per_block);
  EXPECT_EQ(config.latent_channels, folder.latent_channels);
  EXPECT_EQ(config.use_quant_conv, folder.use_quant_conv);
  config.scaling_factor = folder.scaling_factor;
  config.shift_factor = folder.shift_factor;
  auto vae = load_vae_single_file(store, config, at::kCPU, at::kFloat);
  check_vae(*vae, io, at::kFloat, 1e-4, GetParam() + " LDM f32");
}

TEST_P(VaeGolden, Bf16IsClose) {
  Golden io(GetParam() + "_io.safetensors");
  auto vae = AutoencoderKL::load(kDir / GetParam(), at::kCPU, at::kBFloat16);
  check_vae(*vae, io, at::kBFloat16, 5e-2, GetParam() + " folder bf16");
}

INSTANTIATE_TEST_SUITE_P(Tiny, VaeGolden, ::testing::Values("vae_tiny", "vae_quant_tiny"));

TEST(Vae, Sd3ConfigAndBadShapes) {
  auto j = nlohmann::json::parse(R"({"latent_channels":16,"block_out_channels":[128,256,512,512],"layers_per_block":2,
      "norm_num_groups":32,"scaling_factor":1.5305,"shift_factor":0.0609,"use_quant_conv":false,
      "use_post_quant_conv":false,"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D",
      "DownEncoderBlock2D"],"latents_mean":null})");
  auto c = VaeConfig::from_json(j);
  EXPECT_FALSE(c.use_quant_conv);
  EXPECT_DOUBLE_EQ(c.shift_factor, 0.0609);
  j["down_block_types"][0] = "AttnDownEncoderBlock2D";
  EXPECT_THROW(VaeConfig::from_json(j), FormatError);

  torch::NoGradGuard ng;
  auto vae = AutoencoderKL::load(kDir / "vae_tiny", at::kCPU, at::kFloat);
  EXPECT_THROW(vae->decode(at::zeros({1, 4, 8, 8})), ShapeError);
  EXPECT_THROW(vae->encode_mean(at::zeros({1, 3, 31, 32})), ShapeError);
  // A 4-channel LDM file does not fit a 16-channel config.
  auto store = WeightStore::open(kDir / "vae_quant_tiny_ldm.safetensors");
  auto wrong = infer_vae_config(store, 4);
  wrong.latent_channels = 16;
  EXPECT_THROW(load_vae_single_file(store, wrong, at::kCPU, at::kFloat), ShapeError);
}

// Max elementwise |a - b| / max(|b|, 1e-6): the schedule should match to float32 rounding or better.
double max_rel(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  return ((x - y).abs() / y.abs().clamp_min(1e-6)).max().item<double>();
}

at::Tensor vec(const std::vector<float>& v) { return at::tensor(at::ArrayRef<float>(v)); }

TEST(FlowMatch, SigmasAndTimestepsMatchDiffusers) {
  Golden g("scheduler.safetensors");
  double worst = 0;
  struct Case { int steps; double shift; const char* key; };
  for (auto c : {Case{28, 3.0, "28_3.0"}, Case{4, 1.0, "4_1.0"}, Case{10, 3.0, "10_3.0"}, Case{1, 3.0, "1_3.0"},
                 Case{50, 1.15, "50_1.15"}}) {
    FlowMatchConfig cfg;
    cfg.shift = c.shift;
    FlowMatchEulerScheduler s(cfg);
    s.set_timesteps(c.steps);
    ASSERT_EQ(s.num_steps(), c.steps);
    ASSERT_EQ(s.sigmas().size(), size_t(c.steps + 1));
    EXPECT_EQ(s.sigmas().back(), 0.0f);
    double e = std::max(max_rel(vec(s.sigmas()), g[std::string("sigmas_") + c.key]),
                        max_rel(vec(s.timesteps()), g[std::string("timesteps_") + c.key]));
    EXPECT_LE(e, 1e-6) << c.key;
    worst = std::max(worst, e);
  }
  // Dynamic shifting (FLUX): default sigmas and custom linspace(1, 1/n, n) sigmas.
  auto j = nlohmann::json::parse(R"({"num_train_timesteps":1000,"shift":1.0,"use_dynamic_shifting":true,
      "base_shift":0.5,"max_shift":1.15,"base_image_seq_len":256,"max_image_seq_len":4096})");
  for (auto [steps, mu, key] : {std::tuple{28, 0.8, "28_0.8"}, std::tuple{4, 1.15, "4_1.15"}}) {
    FlowMatchEulerScheduler s(FlowMatchConfig::from_json(j));
    EXPECT_THROW(s.set_timesteps(steps), UsageError);
    s.set_timesteps(steps, mu);
    double e = std::max(max_rel(vec(s.sigmas()), g[std::string("dyn_sigmas_") + key]),
                        max_rel(vec(s.timesteps()), g[std::string("dyn_timesteps_") + key]));
    std::vector<double> custom(steps);
    for (int i = 0; i < steps; ++i) custom[i] = steps > 1 ? 1.0 + i * ((1.0 / steps - 1.0) / (steps - 1)) : 1.0;
    custom[steps - 1] = 1.0 / steps;
    s.set_sigmas(custom, mu);
    e = std::max({e, max_rel(vec(s.sigmas()), g[std::string("custom_sigmas_") + key]),
                  max_rel(vec(s.timesteps()), g[std::string("custom_timesteps_") + key])});
    EXPECT_LE(e, 1e-6) << key;
    worst = std::max(worst, e);
  }
  std::printf("[flow_match] sigmas/timesteps max rel err %.3g\n", worst);
}

TEST(FlowMatch, StepMatchesDiffusers) {
  Golden g("scheduler.safetensors");
  FlowMatchConfig cfg;
  cfg.shift = 3.0;
  FlowMatchEulerScheduler s(cfg);
  s.set_timesteps(28);
  double worst = 0, worst_bf16 = 0;
  for (int i : {0, 5, 27}) {
    at::Tensor y = s.step(g["step_v"], g["step_sample"], i);
    double e = rel_err(y, g["step_" + std::to_string(i)]);
    EXPECT_LE(e, 1e-6) << i;
    worst = std::max(worst, e);
    at::Tensor yb = s.step(g["step_v"].to(at::kBFloat16), g["step_sample"].to(at::kBFloat16), i);
    EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
    double eb = rel_err(yb, g["step_bf16_" + std::to_string(i)]);
    EXPECT_LE(eb, 1e-6) << i;
    worst_bf16 = std::max(worst_bf16, eb);
  }
  std::printf("[flow_match] step rel err f32 %.3g, bf16 %.3g\n", worst, worst_bf16);
  EXPECT_THROW(s.step(g["step_v"], g["step_sample"], 28), UsageError);
  // The last step lands on sigma 0: x - sigma * v.
  at::Tensor x = at::ones({2}), v = at::full({2}, 2.0f);
  EXPECT_TRUE(at::allclose(s.step(v, x, 27), x - s.sigmas()[27] * v));
  EXPECT_TRUE(at::allclose(s.scale_noise(x, v, 0), v));  // sigma_0 = 1: pure noise
}

TEST(FlowMatch, ConfigAndShift) {
  auto c = FlowMatchConfig::from_json(nlohmann::json::parse(R"({"_class_name":"FlowMatchEulerDiscreteScheduler","num_train_timesteps":1000,"shift":3.0})"));
  EXPECT_DOUBLE_EQ(c.shift, 3.0);
  EXPECT_FALSE(c.use_dynamic_shifting);
  EXPECT_THROW(FlowMatchConfig::from_json(nlohmann::json::parse(R"({"use_karras_sigmas":true})")), FormatError);
  EXPECT_DOUBLE_EQ(calculate_shift(256), 0.5);
  EXPECT_DOUBLE_EQ(calculate_shift(4096), 1.15);
}

}  // namespace
}  // namespace mmdit
