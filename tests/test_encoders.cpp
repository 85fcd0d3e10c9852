// Text encoders against transformers goldens (scripts/goldens/encoders.py).
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/errors.h"
#include "core/safetensors.h"
#include "core/weights.h"
#include "models/clip_text.h"
#include "models/t5_encoder.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path gold() { return fs::path(MMDIT_GOLDEN_DIR) / "encoders"; }

using test::rel_err;

// Asserts rel_err <= tol and reports the number (the report quotes these).
void expect_close(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
  const double e = rel_err(a, b);
  std::cout << "[rel_err] " << what << " = " << e << "\n";
  EXPECT_LE(e, tol) << what;
}

std::map<std::string, at::Tensor> read_all(const fs::path& p) {
  auto f = SafetensorsFile::open(p);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f->header().tensors) out[t.name] = f->tensor(t.name).clone();
  return out;
}

// ---------------------------------------------------------------- CLIP

void check_clip(ClipTextModel& m, const std::map<std::string, at::Tensor>& io, double tol, const std::string& tag) {
  auto o = m.forward(io.at("input_ids"));
  expect_close(o.last_hidden_state, io.at("last_hidden_state"), tol, tag + " last_hidden_state");
  ASSERT_EQ(o.hidden_states.size(), size_t(m.config().num_hidden_layers + 1));
  for (size_t i = 0; i < o.hidden_states.size(); ++i)
    expect_close(o.hidden_states[i], io.at("hidden_states." + std::to_string(i)), tol,
                 tag + " hidden_states." + std::to_string(i));
  expect_close(o.hidden_states[o.hidden_states.size() - 2], io.at("penultimate"), tol, tag + " hidden_states[-2]");
  expect_close(o.pooled, io.at("pooler_output"), tol, tag + " pooler_output");
  if (io.count("text_embeds")) {
    ASSERT_TRUE(o.text_embeds.defined());
    expect_close(o.text_embeds, io.at("text_embeds"), tol, tag + " text_embeds");
  } else {
    EXPECT_FALSE(o.text_embeds.defined());
  }
  auto om = m.forward(io.at("input_ids"), io.at("attention_mask"));
  expect_close(om.last_hidden_state, io.at("masked_last_hidden_state"), tol, tag + " masked last_hidden_state");
}

class ClipGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(ClipGolden, Float32MatchesTransformers) {
  const std::string name = GetParam();
  auto io = read_all(gold() / (name + "_io.safetensors"));
  auto m = ClipTextModel::load(gold() / name, at::kCPU, at::kFloat);
  EXPECT_EQ(m->config().with_projection, io.count("text_embeds") == 1);
  check_clip(*m, io, 1e-4, name + " f32");
}

TEST_P(ClipGolden, BFloat16IsClose) {
  const std::string name = GetParam();
  auto io = read_all(gold() / (name + "_io.safetensors"));
  auto m = ClipTextModel::load(gold() / name, at::kCPU, at::kBFloat16);
  EXPECT_EQ(m->dtype(), at::kBFloat16);
  auto o = m->forward(io.at("input_ids"));
  EXPECT_EQ(o.last_hidden_state.scalar_type(), at::kBFloat16);
  expect_close(o.last_hidden_state, io.at("last_hidden_state"), 2e-2, name + " bf16 last_hidden_state");
  expect_close(o.hidden_states[o.hidden_states.size() - 2], io.at("penultimate"), 2e-2, name + " bf16 hidden_states[-2]");
  expect_close(o.pooled, io.at("pooler_output"), 2e-2, name + " bf16 pooler_output");
  if (io.count("text_embeds")) expect_close(o.text_embeds, io.at("text_embeds"), 2e-2, name + " bf16 text_embeds");
}

INSTANTIATE_TEST_SUITE_P(Encoders, ClipGolden, ::testing::Values("clip_l", "clip_g", "clip_plain"));

// The two pooling rules: legacy eos_token_id == 2 pools at the highest id (clip_l); otherwise at the first
// EOS (clip_plain pads with EOS; clip_g has an id above its EOS in every row).
class ClipPooling : public ::testing::TestWithParam<const char*> {};

TEST_P(ClipPooling, PicksTheEosPositionLikeTransformers) {
  const std::string name = GetParam();
  auto io = read_all(gold() / (name + "_io.safetensors"));
  auto m = ClipTextModel::load(gold() / name, at::kCPU, at::kFloat);
  at::Tensor ids = io.at("input_ids");
  auto o = m->forward(ids);
  const int64_t eos = m->config().eos_token_id;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    const int64_t want =
        eos == 2 ? ids[b].argmax().item<int64_t>() : ids[b].eq(eos).nonzero()[0][0].item<int64_t>();
    EXPECT_TRUE(at::equal(o.pooled[b], o.last_hidden_state[b][want])) << name << " row " << b;
    if (eos != 2 && name == "clip_g") {  // argmax lands elsewhere here: the rule matters
      EXPECT_NE(ids[b].argmax().item<int64_t>(), want);
      EXPECT_FALSE(at::equal(o.pooled[b], o.last_hidden_state[b][ids[b].argmax().item<int64_t>()]));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Encoders, ClipPooling, ::testing::Values("clip_l", "clip_g", "clip_plain"));

// SD3 single-file checkpoints hold the transformers names under text_encoders.clip_l.transformer.
TEST(ClipText, LoadsFromPrefixedSingleFile) {
  auto dir = test::temp_dir("enc_single_clip");
  auto src = SafetensorsFile::open(gold() / "clip_l" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& t : src->header().tensors)
    tensors.emplace_back("text_encoders.clip_l.transformer." + t.name, src->tensor(t.name));
  // Some SAI files still carry the non-persistent position_ids buffer; it is ignored.
  tensors.emplace_back("text_encoders.clip_l.transformer.text_model.embeddings.position_ids",
                       at::arange(77, at::kLong).unsqueeze(0));
  tensors.emplace_back("model.diffusion_model.x_embedder.proj.weight", at::zeros({2, 2}));
  tensors.emplace_back("text_encoders.clip_g.transformer.text_projection.weight", at::zeros({2, 2}));
  write_safetensors(dir / "sd3.safetensors", tensors);

  std::ifstream cfg_in(gold() / "clip_l" / "config.json");
  auto cfg = ClipTextConfig::from_json(nlohmann::json::parse(cfg_in));
  auto store = WeightStore::open(dir / "sd3.safetensors").with_prefix("text_encoders.clip_l.transformer.");
  auto m = ClipTextModel::load(store, cfg, at::kCPU, at::kFloat);
  check_clip(*m, read_all(gold() / "clip_l_io.safetensors"), 1e-4, "clip_l single-file");
}

TEST(ClipText, BuiltInConfigs) {
  auto l = ClipTextConfig::clip_l(), g = ClipTextConfig::clip_g();
  EXPECT_EQ(l.hidden_size, 768);
  EXPECT_EQ(l.num_hidden_layers, 12);
  EXPECT_EQ(l.hidden_act, "quick_gelu");
  EXPECT_EQ(g.hidden_size, 1280);
  EXPECT_EQ(g.num_hidden_layers, 32);
  EXPECT_EQ(g.num_attention_heads, 20);
  EXPECT_EQ(g.hidden_act, "gelu");
  EXPECT_EQ(g.projection_dim, 1280);
  ClipTextModel tiny([] {
    ClipTextConfig c;
    c.hidden_size = 8, c.intermediate_size = 16, c.num_attention_heads = 2, c.num_hidden_layers = 1;
    c.vocab_size = 10, c.projection_dim = 4;
    return c;
  }());
  auto names = tiny.named_parameters().keys();
  EXPECT_NE(std::find(names.begin(), names.end(), "text_model.encoder.layers.0.self_attn.q_proj.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "text_projection.weight"), names.end());
}

TEST(ClipText, FolderWithoutWeightsIsAClearError) {
  auto dir = test::temp_dir("enc_noweights");
  fs::copy_file(gold() / "clip_l" / "config.json", dir / "config.json");
  try {
    ClipTextModel::load(dir, at::kCPU, at::kFloat);
    FAIL() << "no error";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("no .safetensors"), std::string::npos) << e.what();
  }
  // Weights lacking a tensor name it.
  auto src = SafetensorsFile::open(gold() / "clip_l" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& t : src->header().tensors)
    if (t.name != "text_model.final_layer_norm.weight") tensors.emplace_back(t.name, src->tensor(t.name));
  write_safetensors(dir / "model.safetensors", tensors);
  try {
    ClipTextModel::load(dir, at::kCPU, at::kFloat);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("text_model.final_layer_norm.weight"), std::string::npos) << e.what();
  }
  // No config.json.
  auto bare = test::temp_dir("enc_noconfig");
  EXPECT_THROW(ClipTextModel::load(bare, at::kCPU, at::kFloat), FileError);
}

// ---------------------------------------------------------------- T5

TEST(T5Encoder, Float32MatchesTransformers) {
  auto io = read_all(gold() / "t5_io.safetensors");
  auto m = T5EncoderModel::load(gold() / "t5", at::kCPU, at::kFloat);
  expect_close(m->forward(io.at("input_ids")), io.at("last_hidden_state"), 1e-4, "t5 f32 last_hidden_state (160 tokens)");
  expect_close(m->forward(io.at("short_input_ids")), io.at("short_last_hidden_state"), 1e-4,
               "t5 f32 last_hidden_state (7 tokens)");
  expect_close(m->forward(io.at("input_ids"), io.at("attention_mask")), io.at("masked_last_hidden_state"), 1e-4,
               "t5 f32 masked last_hidden_state");
}

TEST(T5Encoder, BFloat16IsClose) {
  auto io = read_all(gold() / "t5_io.safetensors");
  auto m = T5EncoderModel::load(gold() / "t5", at::kCPU, at::kBFloat16);
  at::Tensor y = m->forward(io.at("input_ids"));
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  expect_close(y, io.at("last_hidden_state"), 2e-2, "t5 bf16 last_hidden_state");
}

// float16 follows from_pretrained(dtype=float16): wo stays float32, activations clamped.
TEST(T5Encoder, Float16MatchesTransformersFloat16) {
  auto io = read_all(gold() / "t5_io.safetensors");
  auto m = T5EncoderModel::load(gold() / "t5", at::kCPU, at::kHalf);
  for (const auto& p : m->named_parameters()) {
    const bool wo = p.key().find(".wo.") != std::string::npos;
    EXPECT_EQ(p.value().scalar_type(), wo ? at::kFloat : at::kHalf) << p.key();
  }
  at::Tensor y = m->forward(io.at("input_ids"));
  EXPECT_EQ(y.scalar_type(), at::kHalf);
  expect_close(y, io.at("f16_last_hidden_state"), 2e-3, "t5 f16 vs transformers f16");
}

TEST(T5Encoder, ShardedFolderLoads) {
  auto store = WeightStore::open(gold() / "t5_sharded");
  EXPECT_GT(store.files().size(), 1u);
  auto io = read_all(gold() / "t5_io.safetensors");
  auto m = T5EncoderModel::load(gold() / "t5_sharded", at::kCPU, at::kFloat);
  expect_close(m->forward(io.at("input_ids")), io.at("last_hidden_state"), 1e-4, "t5 sharded f32");
}

TEST(T5Encoder, Fp8WeightsUpcastOnLoad) {
  auto store = WeightStore::open(gold() / "t5_fp8");
  ASSERT_NE(store.info("shared.weight"), nullptr);
  EXPECT_EQ(store.info("shared.weight")->dtype, DType::F8_E4M3);
  auto io = read_all(gold() / "t5_fp8_io.safetensors");
  auto m = T5EncoderModel::load(gold() / "t5_fp8", at::kCPU, at::kFloat);
  expect_close(m->forward(io.at("input_ids")), io.at("last_hidden_state"), 1e-4, "t5 fp8-upcast f32");
  auto mb = T5EncoderModel::load(gold() / "t5_fp8", at::kCPU, at::kBFloat16);
  expect_close(mb->forward(io.at("input_ids")), io.at("last_hidden_state"), 2e-2, "t5 fp8 bf16");
}

// Single-file SD3 T5 under text_encoders.t5xxl.transformer., with the embedding named encoder.embed_tokens.
TEST(T5Encoder, LoadsFromPrefixedSingleFileWithEmbedTokensName) {
  auto dir = test::temp_dir("enc_single_t5");
  auto src = SafetensorsFile::open(gold() / "t5" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& t : src->header().tensors) {
    const std::string n = t.name == "shared.weight" ? "encoder.embed_tokens.weight" : t.name;
    tensors.emplace_back("text_encoders.t5xxl.transformer." + n, src->tensor(t.name));
  }
  tensors.emplace_back("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight", at::ones({4}));
  write_safetensors(dir / "sd3.safetensors", tensors);
  std::ifstream cfg_in(gold() / "t5" / "config.json");
  auto cfg = T5Config::from_json(nlohmann::json::parse(cfg_in));
  auto store = WeightStore::open(dir / "sd3.safetensors").with_prefix("text_encoders.t5xxl.transformer.");
  auto m = T5EncoderModel::load(store, cfg, at::kCPU, at::kFloat);
  auto io = read_all(gold() / "t5_io.safetensors");
  expect_close(m->forward(io.at("input_ids")), io.at("last_hidden_state"), 1e-4, "t5 single-file f32");
}

// Known bucket values for num_buckets 32, max_distance 128 (bidirectional).
TEST(T5Encoder, RelativePositionBuckets) {
  at::Tensor rp = at::tensor({0, 1, -1, 7, -7, 8, -8, 15, -20, -127, -128, -1000, 1000}, at::kLong);
  at::Tensor b = T5EncoderModel::relative_position_bucket(rp, 32, 128);
  std::vector<int64_t> want = {0, 17, 1, 23, 7, 24, 8, 25, 10, 15, 15, 15, 31};
  ASSERT_EQ(b.numel(), int64_t(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(b[i].item<int64_t>(), want[i]) << "relative position " << rp[i].item<int64_t>();
}

TEST(T5Encoder, ConfigAndErrors) {
  auto x = T5Config::t5_xxl();
  EXPECT_EQ(x.d_model, 4096);
  EXPECT_EQ(x.num_layers, 24);
  EXPECT_EQ(x.num_heads, 64);
  EXPECT_EQ(x.d_ff, 10240);
  EXPECT_TRUE(x.is_gated_act);
  EXPECT_EQ(x.dense_act_fn, "gelu_new");
  EXPECT_EQ(T5Config::from_json(nlohmann::json{{"feed_forward_proj", "relu"}}).is_gated_act, false);
  EXPECT_THROW(T5Config::from_json(nlohmann::json{{"feed_forward_proj", "gated-swish"}}), FormatError);
  auto dir = test::temp_dir("enc_t5_noweights");
  fs::copy_file(gold() / "t5" / "config.json", dir / "config.json");
  EXPECT_THROW(T5EncoderModel::load(dir, at::kCPU, at::kFloat), FileError);
}

}  // namespace
}  // namespace mmdit
