// CogVideoX video MM-DiT: diffusers' CogVideoXTransformer3DModel (0.42.1). Registered parameter names equal
// the diffusers state-dict keys. Variants: 2B (3D sin-cos positions added to the video tokens, zeros on the
// text tokens), 5B (3D RoPE on the video tokens, given by the caller), 1.5 (temporal patches patch_size_t,
// linear patch embedding, optional ofs embedding). Full attention over [text, video] through
// mmdit::attention (model "cogvideox").
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

namespace mmdit {

struct ControlContext;

struct CogVideoXTransformerConfig {
  int64_t num_attention_heads = 30;
  int64_t attention_head_dim = 64;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  int64_t time_embed_dim = 512;
  int64_t ofs_embed_dim = 0;  // 0: none
  int64_t text_embed_dim = 4096;
  int64_t num_layers = 30;
  bool attention_bias = true;
  int64_t sample_width = 90;
  int64_t sample_height = 60;
  int64_t sample_frames = 49;
  int64_t patch_size = 2;
  int64_t patch_size_t = 0;  // 0: none (2D patches per frame)
  int64_t temporal_compression_ratio = 4;
  int64_t max_text_seq_length = 226;
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;
  double spatial_interpolation_scale = 1.875;
  double temporal_interpolation_scale = 1.0;
  bool use_rotary_positional_embeddings = false;
  bool use_learned_positional_embeddings = false;
  bool patch_bias = true;

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // From a diffusers config.json object; missing keys take diffusers' defaults. Throws FormatError.
  static CogVideoXTransformerConfig from_json(const nlohmann::json& j);
};

// The CogVideoX pipelines' _prepare_rotary_positional_embeddings for a video of height x width pixels and
// `latent_frames` latent frames (vae_scale_factor_spatial `vae_scale`): (cos, sin), each
// [frames' * grid_h * grid_w, attention_head_dim] float32 on the CPU. Without patch_size_t the grid is
// resize-cropped into the sample grid (linspace); with it, sliced from the sample grid.
std::pair<at::Tensor, at::Tensor> cogvideox_rotary_embeddings(const CogVideoXTransformerConfig& c, int64_t height,
                                                              int64_t width, int64_t latent_frames,
                                                              int64_t vae_scale = 8);

struct CogVideoXPatchEmbed;
struct CogVideoXTimeEmbed;
struct CogVideoXBlock;
struct CogVideoXAdaNormOut;

class CogVideoXTransformer : public torch::nn::Module {
 public:
  explicit CogVideoXTransformer(const CogVideoXTransformerConfig& config);

  // hidden_states [B, F, C, H, W] latents, encoder_hidden_states [B, T, text_embed_dim], timestep [B]
  // (integer-valued, any dtype), rope: (cos, sin) from cogvideox_rotary_embeddings for RoPE models
  // (required there, ignored otherwise), ofs [B] for models with an ofs embedding. controls: the attention
  // controls of this pass (controls/control.h), consulted at every block and passed to mmdit::attention.
  // Returns [B, F, out_channels, H, W] in the input's dtype.
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states, const at::Tensor& timestep,
                     const std::optional<std::pair<at::Tensor, at::Tensor>>& rope = std::nullopt,
                     const std::optional<at::Tensor>& ofs = std::nullopt, const ControlContext* controls = nullptr);

  const CogVideoXTransformerConfig& config() const { return config_; }

  // A diffusers component folder (config.json + weights), on `device` in `dtype`.
  // --fp8 (models/fp8.h): the blocks' linear layers (not the adaLN ones) become e4m3 GEMMs; their bf16 weights
  // are freed, so a model without fp8 must be loaded again.
  void to_fp8(bool attention = false);

  static std::shared_ptr<CogVideoXTransformer> load(const std::filesystem::path& component_dir, at::Device device,
                                                    at::ScalarType dtype);

 private:
  CogVideoXTransformerConfig config_;
  std::shared_ptr<CogVideoXPatchEmbed> patch_embed_;
  std::shared_ptr<CogVideoXTimeEmbed> time_embedding_, ofs_embedding_;
  std::vector<std::shared_ptr<CogVideoXBlock>> blocks_;
  std::shared_ptr<torch::nn::Module> norm_final_;
  std::shared_ptr<CogVideoXAdaNormOut> norm_out_;
  std::shared_ptr<torch::nn::Module> proj_out_;
};

}  // namespace mmdit
