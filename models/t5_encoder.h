// T5 encoder: transformers' T5EncoderModel (T5 v1.1 / T5-XXL of SD3 and FLUX: gated gelu_new feed-forward,
// RMS layer norm, relative position bias from block 0). Parameter names equal the transformers state-dict
// keys (shared.weight, encoder.block.N.layer.0.SelfAttention.q.weight, ..., encoder.final_layer_norm.weight).
//
// dtype: f32 and bf16 run everything in that dtype; f16 follows transformers' from_pretrained exactly:
// the feed-forward output projections (wo) stay float32 (_keep_in_fp32_modules) and activations are
// clamped to the f16 range where transformers clamps them.
//
// Memory: the encoder owns its weights; destroying the last shared_ptr to it frees them (T5-XXL is ~9.5 GB
// in bf16, so pipelines encode, keep the outputs, and drop it before loading the transformer).
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

namespace mmdit {

class WeightStore;

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 4096;
  int64_t d_kv = 64;
  int64_t d_ff = 10240;
  int64_t num_layers = 24;
  int64_t num_heads = 64;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  bool is_gated_act = true;               // v1.1: wi_0/wi_1; v1.0: wi
  std::string dense_act_fn = "gelu_new";  // "gelu_new", "gelu", "relu"

  // From a transformers T5 config.json object (feed_forward_proj "gated-gelu" / "relu" etc.).
  static T5Config from_json(const nlohmann::json& j, const std::string& what = "config.json");
  static T5Config t5_xxl();  // google/t5-v1_1-xxl encoder (SD3 text_encoder_3, FLUX text_encoder_2)
};

namespace t5_detail {
struct Stack;
}
namespace layers {
struct Embedding;
}

class T5EncoderModel : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialized with `options` (dtype/device); load() fills them.
  explicit T5EncoderModel(const T5Config& config, const at::TensorOptions& options = {});

  // Reads component_dir/config.json and the folder's weights (single file or sharded index). Weights
  // named encoder.embed_tokens.weight stand for the tied shared.weight; decoder.* / lm_head.* are ignored.
  // Floating weights of any stored dtype (f32/f16/bf16/F8_E4M3) are converted to `dtype`.
  static std::shared_ptr<T5EncoderModel> load(const std::filesystem::path& component_dir, at::Device device,
                                              at::ScalarType dtype);
  // From an already opened store (single-file SD3: store.with_prefix("text_encoders.t5xxl.transformer.")).
  static std::shared_ptr<T5EncoderModel> load(const WeightStore& store, const T5Config& config, at::Device device,
                                              at::ScalarType dtype);

  // input_ids: [B, T] integer (any device). attention_mask: optional [B, T], nonzero = real token
  // (SD3/FLUX pipelines pass none). Returns last_hidden_state [B, T, d_model] after final_layer_norm, in the
  // model's dtype on its device. Runs under NoGradGuard.
  at::Tensor forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);

  // The additive relative position bias [1, heads, q_len, k_len] of block 0 (exposed for tests).
  at::Tensor position_bias(int64_t q_len, int64_t k_len);
  // transformers' T5Attention._relative_position_bucket (bidirectional form).
  static at::Tensor relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets,
                                             int64_t max_distance);

  const T5Config& config() const { return config_; }
  at::Device device() const;
  at::ScalarType dtype() const;  // the requested compute dtype

 private:
  T5Config config_;
  at::ScalarType dtype_ = at::kFloat;
  std::shared_ptr<layers::Embedding> shared_;
  std::shared_ptr<t5_detail::Stack> encoder_;
};

}  // namespace mmdit
