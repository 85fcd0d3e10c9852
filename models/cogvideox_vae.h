// CogVideoX's causal 3D VAE: diffusers' AutoencoderKLCogVideoX (0.42.1). Parameter names equal the
// diffusers keys. Decoding follows `_decode` exactly: latent frames in chunks of 2 (the remainder joins
// the first chunk) with the causal-convolution caches carried across chunks, which changes the numbers;
// optional spatial tiling follows `tiled_decode` (overlap, blend, crop). Encoding follows `_encode`
// (chunks of 8 frames).
#pragma once
#include <filesystem>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

namespace mmdit {

struct CogVideoXVaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {128, 256, 256, 512};
  int64_t latent_channels = 16;
  int64_t layers_per_block = 3;
  double norm_eps = 1e-6;
  int64_t norm_num_groups = 32;
  int64_t temporal_compression_ratio = 4;
  int64_t sample_height = 480;
  int64_t sample_width = 720;
  double scaling_factor = 1.15258426;
  bool use_quant_conv = false;
  bool use_post_quant_conv = false;

  int64_t spatial_scale() const { return int64_t(1) << (block_out_channels.size() - 1); }
  static CogVideoXVaeConfig from_json(const nlohmann::json& j);
};

// enable_tiling's parameters; the defaults (0) are diffusers': half the config's sample size, overlap
// factors 1/6 (height) and 1/5 (width).
struct CogVideoXTiling {
  int64_t tile_sample_min_height = 0, tile_sample_min_width = 0;
  double overlap_factor_height = 1.0 / 6.0, overlap_factor_width = 1.0 / 5.0;
};

struct CogVideoXEncoder;
struct CogVideoXDecoder;

class AutoencoderKLCogVideoX : public torch::nn::Module {
 public:
  explicit AutoencoderKLCogVideoX(const CogVideoXVaeConfig& config);

  // z [B, latent_channels, F, h, w] (already divided by the scaling factor) -> [B, out_channels, F', H, W]
  // with F' = 1 + 4 (F - 1) for the usual configs. With `tiling`, diffusers' tiled_decode whenever the
  // latent exceeds the tile size.
  at::Tensor decode(const at::Tensor& z, const CogVideoXTiling* tiling = nullptr);
  // x [B, in_channels, F, H, W] in [-1, 1] -> the posterior's (mean, logvar) (logvar clamped to [-30, 20]).
  std::pair<at::Tensor, at::Tensor> encode(const at::Tensor& x);

  const CogVideoXVaeConfig& config() const { return config_; }

  static std::shared_ptr<AutoencoderKLCogVideoX> load(const std::filesystem::path& component_dir, at::Device device,
                                                      at::ScalarType dtype);

 private:
  at::Tensor decode_frames(const at::Tensor& z);  // _decode's frame batching for one (tile of a) latent
  at::Tensor tiled_decode(const at::Tensor& z, const CogVideoXTiling& t);

  CogVideoXVaeConfig config_;
  std::shared_ptr<CogVideoXEncoder> encoder_;
  std::shared_ptr<CogVideoXDecoder> decoder_;
  std::shared_ptr<torch::nn::Module> quant_conv_, post_quant_conv_;
};

}  // namespace mmdit
