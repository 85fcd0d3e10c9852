// FLUX.1 (dev / schnell) MM-DiT: diffusers' FluxTransformer2DModel (0.42.1). Registered parameter names
// equal the diffusers state-dict keys, so a diffusers `transformer/` folder loads by name; Black Forest
// Labs' single files (`double_blocks.N.img_attn.qkv` ...) load through a rename table (flux_single_file_rules).
//
// Attention calls go through mmdit::attention with AttentionDesc{"flux", layer, step, heads, text, image}:
// the double-stream blocks are layers 0..num_layers-1 and the single-stream blocks continue the numbering
// (single block j is layer num_layers + j). FLUX puts the text first: text = [0, T), image = [T, T + N).
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

struct FluxTransformerConfig {
  int64_t patch_size = 1;
  int64_t in_channels = 64;  // packed: 16 latent channels x 2x2
  int64_t out_channels = 64;
  int64_t num_layers = 19;         // double-stream blocks
  int64_t num_single_layers = 38;  // single-stream blocks
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = false;  // true for FLUX.1-dev (guidance-distilled)
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // From a diffusers config.json object; missing keys take diffusers' defaults. Throws FormatError.
  static FluxTransformerConfig from_json(const nlohmann::json& j);
};

struct FluxTimeTextEmbed;
struct FluxDoubleBlock;
struct FluxSingleBlock;
struct FluxAdaNormContinuous;

class FluxTransformer : public torch::nn::Module {
 public:
  explicit FluxTransformer(const FluxTransformerConfig& config);

  // hidden_states [B, N, in_channels] packed latents; encoder_hidden_states [B, T, joint_attention_dim];
  // pooled [B, pooled_projection_dim]; timestep [B] as FluxPipeline passes it (scheduler timestep / 1000 in
  // the latents' dtype; the model multiplies by 1000 after casting to its dtype, as diffusers);
  // img_ids [N, 3], txt_ids [T, 3] position ids; guidance [B] (the distilled guidance scale, also x1000
  // inside) or undefined; required exactly when config().guidance_embeds. controls: the attention controls of
// this pass (controls/control.h), consulted at every block and passed to mmdit::attention. Returns
// [B, N, out_channels].
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states, const at::Tensor& pooled,
                     const at::Tensor& timestep, const at::Tensor& img_ids, const at::Tensor& txt_ids,
                     const at::Tensor& guidance = {}, const ControlContext* controls = nullptr);

  // FluxPosEmbed: (cos, sin) [S, head_dim] float32 for ids [S, n_axes]; frequencies in float64.
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& ids) const;

  const FluxTransformerConfig& config() const { return config_; }

  // --fp8 (models/fp8.h): the blocks' linear layers (not the adaLN ones) become e4m3 GEMMs; their bf16 weights
  // are freed, so a model without fp8 must be loaded again. attention: the fast path's attention in fp8 too
  // (--fp8-attention, core/attention_fp8.h).
  void to_fp8(bool attention = false);

  static std::shared_ptr<FluxTransformer> load(const std::filesystem::path& component_dir, at::Device device,
                                               at::ScalarType dtype);

 private:
  FluxTransformerConfig config_;
  std::shared_ptr<FluxTimeTextEmbed> time_text_embed_;
  std::shared_ptr<torch::nn::Module> context_embedder_, x_embedder_;
  std::vector<std::shared_ptr<FluxDoubleBlock>> blocks_;
  std::vector<std::shared_ptr<FluxSingleBlock>> single_blocks_;
  std::shared_ptr<FluxAdaNormContinuous> norm_out_;
  std::shared_ptr<torch::nn::Module> proj_out_;
};

// --- FluxPipeline's latent layout ---------------------------------------------------------------------

// _pack_latents: [B, C, H, W] -> [B, (H/2)(W/2), 4C] (2x2 patches, channel-major within a patch).
at::Tensor flux_pack_latents(const at::Tensor& latents);
// _unpack_latents: [B, (H/2)(W/2), 4C] -> [B, C, H, W], H, W the latent size.
at::Tensor flux_unpack_latents(const at::Tensor& packed, int64_t latent_height, int64_t latent_width);
// _prepare_latent_image_ids for a packed grid of h x w tokens: [h*w, 3] rows (0, row, col).
at::Tensor flux_image_ids(int64_t h, int64_t w, const at::TensorOptions& options);
// Text ids: zeros [T, 3].
at::Tensor flux_text_ids(int64_t tokens, const at::TensorOptions& options);

// --- Black Forest Labs single files: `double_blocks.N.img_attn.qkv.weight`, `single_blocks.N.linear1` ...

// The rename table BFL -> diffusers (fused qkv split in three; single blocks' linear1 split into q, k, v
// and the MLP input; final_layer.adaLN_modulation shift/scale swapped). inner_dim / mlp_hidden_dim give
// linear1's uneven split.
std::vector<RenameRule> flux_single_file_rules(int64_t inner_dim, int64_t mlp_hidden_dim);

// Config from tensor shapes of a BFL checkpoint (with or without `model.diffusion_model.`): hidden size
// from img_in, head_dim from the qk-norm scale, layer counts from the block indices, guidance from
// guidance_in. axes_dims_rope is not stored: head_dim 128 gives BFL's (16, 56, 56); other head sizes the
// same proportions (head_dim/8, 7*head_dim/16, 7*head_dim/16), which needs head_dim % 32 == 0.
FluxTransformerConfig infer_flux_config(const WeightStore& store);

// Loads a BFL single file (fp8 e4m3 / bf16 / f32 weights are converted to `dtype`).
std::shared_ptr<FluxTransformer> load_flux_single_file(const WeightStore& store, const FluxTransformerConfig& config,
                                                       at::Device device, at::ScalarType dtype);

}  // namespace mmdit
