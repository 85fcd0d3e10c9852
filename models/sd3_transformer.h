// Stable Diffusion 3 / 3.5 MM-DiT: diffusers' SD3Transformer2DModel (0.42.1). Registered parameter names
// equal the diffusers state-dict keys, so a diffusers `transformer/` folder loads by name; Stability's
// single-file checkpoints load through a rename table (sd3_single_file_rules).
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

#include "core/convert.h"

namespace mmdit {

class WeightStore;
struct ControlContext;

struct SD3TransformerConfig {
  int64_t sample_size = 128;
  int64_t patch_size = 2;
  int64_t in_channels = 16;
  int64_t num_layers = 18;
  int64_t attention_head_dim = 64;
  int64_t num_attention_heads = 18;
  int64_t joint_attention_dim = 4096;
  int64_t caption_projection_dim = 1152;
  int64_t pooled_projection_dim = 2048;
  int64_t out_channels = 16;
  int64_t pos_embed_max_size = 96;
  std::vector<int64_t> dual_attention_layers;  // blocks with a second image-only attention (SD3.5-medium)
  std::string qk_norm;                         // "" (none) or "rms_norm"

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // From a diffusers config.json object; missing keys take diffusers' defaults. Throws FormatError.
  static SD3TransformerConfig from_json(const nlohmann::json& j);
};

struct SD3PatchEmbed;
struct SD3TimeTextEmbed;
struct SD3JointBlock;
struct SD3AdaNormContinuous;

class SD3Transformer : public torch::nn::Module {
 public:
  explicit SD3Transformer(const SD3TransformerConfig& config);

  // hidden_states [B, C, H, W] latents (H, W multiples of patch_size), encoder_hidden_states [B, T,
  // joint_attention_dim], pooled [B, pooled_projection_dim], timestep [B] (float, 0..1000, as the
  // pipeline passes scheduler timesteps). controls: the attention controls of this pass (controls/control.h),
  // consulted at every block (block_plan) and passed to mmdit::attention. Returns the velocity prediction
  // [B, out_channels, H, W] in the input's dtype.
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states, const at::Tensor& pooled,
                     const at::Tensor& timestep, const ControlContext* controls = nullptr);

  const SD3TransformerConfig& config() const { return config_; }

  // --fp8 (models/fp8.h): the blocks' linear layers (not the adaLN ones) become e4m3 GEMMs; their bf16 weights
  // are freed, so a model without fp8 must be loaded again.
  void to_fp8();

  // A diffusers component folder (config.json + weights), on `device` in `dtype`.
  static std::shared_ptr<SD3Transformer> load(const std::filesystem::path& component_dir, at::Device device,
                                              at::ScalarType dtype);

 private:
  SD3TransformerConfig config_;
  std::shared_ptr<SD3PatchEmbed> pos_embed_;
  std::shared_ptr<SD3TimeTextEmbed> time_text_embed_;
  std::shared_ptr<torch::nn::Module> context_embedder_;
  std::vector<std::shared_ptr<SD3JointBlock>> blocks_;
  std::shared_ptr<SD3AdaNormContinuous> norm_out_;
  std::shared_ptr<torch::nn::Module> proj_out_;
};

// --- Stability (SAI) single-file checkpoints: `model.diffusion_model.joint_blocks.N.x_block.attn.qkv` ...

// The rename table SAI -> diffusers for a model with `num_layers` joint blocks (the last block's context
// adaLN and the final layer's adaLN have shift/scale swapped relative to diffusers).
std::vector<RenameRule> sd3_single_file_rules(int64_t num_layers);

// Config from tensor shapes of an SAI checkpoint (with or without the `model.diffusion_model.` prefix):
// layers = joint_blocks count, heads = hidden / head_dim, dual layers from attn2, qk_norm from ln_q,
// pos_embed_max_size from pos_embed. Throws FormatError when the file is not an SD3 checkpoint.
SD3TransformerConfig infer_sd3_config(const WeightStore& store, int64_t attention_head_dim = 64);

// Loads an SAI single-file checkpoint (a whole-pipeline file or a transformer-only one).
std::shared_ptr<SD3Transformer> load_sd3_single_file(const WeightStore& store, const SD3TransformerConfig& config,
                                                     at::Device device, at::ScalarType dtype);

}  // namespace mmdit
