// diffusers' AutoencoderKL (0.42.1) with DownEncoderBlock2D / UpDecoderBlock2D blocks: the 16-channel
// SD3 / FLUX VAE (no quant convs) and the 4-channel SD1/SDXL one (with quant convs). Registered names
// equal the diffusers keys; LDM single files (`first_stage_model.` / `vae.`) load through ldm_vae_rules.
#pragma once
#include <filesystem>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

#include "core/convert.h"

namespace mmdit {

class WeightStore;

struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  double shift_factor = 0.0;  // null in the config -> 0
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // From a diffusers config.json; FormatError for block types / activations other than the above.
  static VaeConfig from_json(const nlohmann::json& j);
};

struct VaeEncoder;
struct VaeDecoder;

class AutoencoderKL : public torch::nn::Module {
 public:
  explicit AutoencoderKL(const VaeConfig& config);

  // z [B, latent_channels, h, w] in VAE space -> image [B, out_channels, h*f, w*f] (about -1..1).
  at::Tensor decode(const at::Tensor& z);
  // Pipeline latents -> image: decode(latents / scaling_factor + shift_factor), as StableDiffusion3Pipeline.
  at::Tensor decode_latents(const at::Tensor& latents);
  // image [B, in_channels, H, W] (-1..1, H, W multiples of f) -> moments [B, 2*latent_channels, H/f, W/f]
  // (mean, logvar before clamping), as the encoder (+ quant_conv) outputs them.
  at::Tensor encode_moments(const at::Tensor& image);
  // The latent distribution's mean (what the pipelines' "argmax" sampling uses).
  at::Tensor encode_mean(const at::Tensor& image);
  // Pipeline latents of an image: (mean - shift_factor) * scaling_factor.
  at::Tensor encode_latents(const at::Tensor& image);

  const VaeConfig& config() const { return config_; }
  int64_t downscale() const { return int64_t(1) << (config_.block_out_channels.size() - 1); }

  static std::shared_ptr<AutoencoderKL> load(const std::filesystem::path& component_dir, at::Device device,
                                             at::ScalarType dtype);

 private:
  VaeConfig config_;
  std::shared_ptr<VaeEncoder> encoder_;
  std::shared_ptr<VaeDecoder> decoder_;
  std::shared_ptr<torch::nn::Module> quant_conv_, post_quant_conv_;
};

// LDM -> diffusers rename table for a VAE with `num_blocks` down/up blocks (keys without the
// `first_stage_model.` prefix; LDM's up.N is diffusers' up_blocks[num_blocks-1-N]; 1x1-conv attention
// weights become linears).
std::vector<RenameRule> ldm_vae_rules(int64_t num_blocks);

// Config from the shapes of an LDM VAE (prefix `first_stage_model.`, `vae.` or none). Not inferable
// from weights: norm_num_groups (given), scaling/shift factors (16 latent channels: SD3's 1.5305 /
// 0.0609; otherwise LDM's default 0.18215 / 0; callers with other models set them).
VaeConfig infer_vae_config(const WeightStore& store, int64_t norm_num_groups = 32);

// Loads the VAE of an LDM/SAI single-file checkpoint.
std::shared_ptr<AutoencoderKL> load_vae_single_file(const WeightStore& store, const VaeConfig& config, at::Device device,
                                                    at::ScalarType dtype);

}  // namespace mmdit
