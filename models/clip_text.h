// CLIP text encoder: transformers' CLIPTextModel / CLIPTextModelWithProjection (SD3 CLIP-L and OpenCLIP
// bigG, FLUX CLIP-L). Parameter names equal the transformers state-dict keys
// (text_model.embeddings.token_embedding.weight, ..., text_projection.weight).
//
// Memory: the encoder owns its weights; destroying the last shared_ptr to it frees them (and releases the
// memory-mapped checkpoint the weights may alias on CPU). Pipelines encode, keep the outputs, and drop it.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

namespace mmdit {

class WeightStore;

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_attention_heads = 12;
  int64_t num_hidden_layers = 12;
  int64_t max_position_embeddings = 77;
  int64_t projection_dim = 768;
  int64_t eos_token_id = 2;  // 2 = legacy: pool at argmax(input_ids); otherwise first input_ids == eos_token_id
  std::string hidden_act = "quick_gelu";  // "quick_gelu" or "gelu"
  double layer_norm_eps = 1e-5;
  bool with_projection = true;  // CLIPTextModelWithProjection (adds text_projection, no bias)

  // From a transformers config.json object (CLIPTextConfig, or a CLIPConfig's "text_config").
  // with_projection is taken from "architectures" when present. Throws FormatError on bad values.
  static ClipTextConfig from_json(const nlohmann::json& j, const std::string& what = "config.json");
  static ClipTextConfig clip_l();     // openai/clip-vit-large-patch14 text tower (SD3 text_encoder, FLUX)
  static ClipTextConfig clip_g();     // OpenCLIP ViT-bigG-14 text tower (SD3 text_encoder_2)
};

struct ClipTextOutput {
  at::Tensor last_hidden_state;           // [B, T, hidden] after final_layer_norm
  std::vector<at::Tensor> hidden_states;  // embeddings output + each layer's output (num_layers + 1), no final LN;
                                          // hidden_states[size-2] is the penultimate layer (SD3/SDXL use it)
  at::Tensor pooled;                      // [B, hidden]: last_hidden_state at the EOS position (pooler_output)
  at::Tensor text_embeds;                 // [B, projection_dim] = text_projection(pooled); undefined without projection
};

namespace clip_detail {
struct TextTransformer;
}
namespace layers {
struct Linear;
}

class ClipTextModel : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialized with `options` (dtype/device); load() fills them.
  explicit ClipTextModel(const ClipTextConfig& config, const at::TensorOptions& options = {});

  // Reads component_dir/config.json and the folder's weights (single file or sharded index). The
  // projection is present iff the weights hold text_projection.weight. Accepts transformers 4.x names
  // (text_model.*) and the unprefixed names transformers 5 writes for CLIPTextModel.
  static std::shared_ptr<ClipTextModel> load(const std::filesystem::path& component_dir, at::Device device,
                                             at::ScalarType dtype);
  // From an already opened store (e.g. single-file SD3: store.with_prefix("text_encoders.clip_l.transformer.")).
  static std::shared_ptr<ClipTextModel> load(const WeightStore& store, const ClipTextConfig& config,
                                             at::Device device, at::ScalarType dtype);

  // input_ids: [B, T] integer (any int dtype, any device; moved to the model's device). attention_mask:
  // optional [B, T], nonzero = real token (padding keys are masked on top of the causal mask; SD3/FLUX
  // pipelines pass none). Runs under NoGradGuard. Outputs are in the model's dtype on its device.
  ClipTextOutput forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);

  const ClipTextConfig& config() const { return config_; }
  at::Device device() const;
  at::ScalarType dtype() const;

 private:
  ClipTextConfig config_;
  std::shared_ptr<clip_detail::TextTransformer> text_model_;
  std::shared_ptr<layers::Linear> text_projection_;  // null without projection
};

}  // namespace mmdit
