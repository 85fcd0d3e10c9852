#include "models/cogvideox_vae.h"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "core/errors.h"
#include "core/model_folder.h"
#include "core/weights.h"
#include "models/cogvideox_layers.h"

namespace mmdit {
namespace {

// CogVideoXSafeConv3d: a Conv3d that, above 2 GiB of (half-precision-counted) input, runs in time chunks
// overlapping by kernel - 1 frames (the same result, less memory).
struct SafeConv3dImpl : nn::Conv3dImpl {
  using nn::Conv3dImpl::Conv3dImpl;
  at::Tensor forward(const at::Tensor& x) {
    const double memory = double(x.numel()) * 2 / (1024.0 * 1024.0 * 1024.0);
    if (memory <= 2) return nn::Conv3dImpl::forward(x);
    const int64_t k = kernel[0];
    auto chunks = x.chunk(int64_t(memory / 2) + 1, 2);
    std::vector<at::Tensor> outs;
    for (size_t i = 0; i < chunks.size(); ++i) {
      at::Tensor c = chunks[i];
      if (i > 0 && k > 1) {
        const auto& prev = chunks[i - 1];
        c = at::cat({prev.narrow(2, prev.size(2) - (k - 1), k - 1), c}, 2);
      }
      outs.push_back(nn::Conv3dImpl::forward(c));
    }
    return at::cat(outs, 2);
  }
};
TORCH_MODULE(SafeConv3d);

// CogVideoXCausalConv3d (pad_mode "first"): the first frame repeated kernel - 1 times in front, or the
// previous chunk's last kernel - 1 (padded) frames, which it then keeps as its cache.
struct CausalConv3d : torch::nn::Module {
  CausalConv3d(int64_t in, int64_t out, int64_t k, int64_t stride = 1) : k(k) {
    conv = register_module("conv", SafeConv3d(in, out, std::array<int64_t, 3>{k, k, k},
                                              std::array<int64_t, 3>{stride, 1, 1},
                                              std::array<int64_t, 3>{0, (k - 1) / 2, (k - 1) / 2}));
  }
  at::Tensor forward(at::Tensor x) {
    if (k > 1) {
      std::vector<at::Tensor> parts;
      if (cache.defined()) {
        parts.push_back(cache);
      } else {
        for (int64_t i = 0; i < k - 1; ++i) parts.push_back(x.narrow(2, 0, 1));
      }
      parts.push_back(x);
      x = at::cat(parts, 2);
      cache = x.narrow(2, x.size(2) - (k - 1), k - 1).clone();
    }
    return conv(x);
  }
  SafeConv3d conv{nullptr};
  int64_t k;
  at::Tensor cache;  // carried across the frame chunks of one decode/encode
};

void reset_caches(torch::nn::Module& m) {
  for (auto& child : m.modules(/*include_self=*/true))
    if (auto c = std::dynamic_pointer_cast<CausalConv3d>(child)) c->cache = at::Tensor();
}

at::Tensor nearest3d(const at::Tensor& x, int64_t t, int64_t h, int64_t w) {
  return at::upsample_nearest3d(x, {t, h, w}, std::nullopt, std::nullopt, std::nullopt);
}

// CogVideoXSpatialNorm3D: GroupNorm(f) * conv_y(zq') + conv_b(zq'), zq' = zq resized to f (first frame apart).
struct SpatialNorm3D : torch::nn::Module {
  SpatialNorm3D(int64_t f_channels, int64_t zq_channels, int64_t groups) {
    norm_layer = register_module("norm_layer", nn::GroupNorm(groups, f_channels, 1e-6));
    conv_y = register_module("conv_y", std::make_shared<CausalConv3d>(zq_channels, f_channels, 1));
    conv_b = register_module("conv_b", std::make_shared<CausalConv3d>(zq_channels, f_channels, 1));
  }
  at::Tensor forward(const at::Tensor& f, at::Tensor zq) {
    const int64_t T = f.size(2), H = f.size(3), W = f.size(4);
    if (T > 1 && T % 2 == 1) {
      at::Tensor first = nearest3d(zq.narrow(2, 0, 1), 1, H, W);
      at::Tensor rest = nearest3d(zq.narrow(2, 1, zq.size(2) - 1), T - 1, H, W);
      zq = at::cat({first, rest}, 2);
    } else {
      zq = nearest3d(zq, T, H, W);
    }
    at::Tensor y = conv_y->forward(zq), b = conv_b->forward(zq);
    return norm_layer(f) * y + b;
  }
  nn::GroupNorm norm_layer{nullptr};
  std::shared_ptr<CausalConv3d> conv_y, conv_b;
};

// CogVideoXResnetBlock3D (temb_channels 0; GroupNorm, or SpatialNorm3D in the decoder).
struct Resnet3D : torch::nn::Module {
  Resnet3D(int64_t in, int64_t out, int64_t groups, double eps, int64_t spatial_norm_dim) : in(in), out(out) {
    if (spatial_norm_dim) {
      snorm1 = register_module("norm1", std::make_shared<SpatialNorm3D>(in, spatial_norm_dim, groups));
      snorm2 = register_module("norm2", std::make_shared<SpatialNorm3D>(out, spatial_norm_dim, groups));
    } else {
      norm1 = register_module("norm1", nn::GroupNorm(groups, in, eps));
      norm2 = register_module("norm2", nn::GroupNorm(groups, out, eps));
    }
    conv1 = register_module("conv1", std::make_shared<CausalConv3d>(in, out, 3));
    conv2 = register_module("conv2", std::make_shared<CausalConv3d>(out, out, 3));
    if (in != out)
      conv_shortcut = register_module("conv_shortcut", SafeConv3d(in, out, std::array<int64_t, 3>{1, 1, 1}));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& zq) {
    at::Tensor h = snorm1 ? snorm1->forward(x, zq) : norm1(x);
    h = conv1->forward(at::silu(h));
    h = snorm2 ? snorm2->forward(h, zq) : norm2(h);
    h = conv2->forward(at::silu(h));
    return h + (in != out ? conv_shortcut(x) : x);
  }
  int64_t in, out;
  nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  std::shared_ptr<SpatialNorm3D> snorm1, snorm2;
  std::shared_ptr<CausalConv3d> conv1, conv2;
  SafeConv3d conv_shortcut{nullptr};
};

// Per-frame Conv2d of a [B, C, T, H, W] tensor.
at::Tensor conv_frames(nn::Conv2d& conv, const at::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  at::Tensor y = conv(x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w}));
  return y.reshape({b, t, y.size(1), y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
}

// CogVideoXUpsample3D: nearest x2 (in time too when compress_time, the first frame apart), Conv2d 3x3.
struct Upsample3D : torch::nn::Module {
  Upsample3D(int64_t ch, bool compress_time) : compress_time(compress_time) {
    conv = register_module("conv", nn::Conv2d(ch, ch, 3, 1, 1));
  }
  at::Tensor forward(at::Tensor x) {
    const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    if (compress_time) {
      if (t > 1 && t % 2 == 1) {
        at::Tensor first = at::upsample_nearest2d(x.select(2, 0), {2 * h, 2 * w}, 2.0, 2.0).unsqueeze(2);
        at::Tensor rest = at::upsample_nearest3d(x.narrow(2, 1, t - 1), {2 * (t - 1), 2 * h, 2 * w}, 2.0, 2.0, 2.0);
        x = at::cat({first, rest}, 2);
      } else if (t > 1) {
        x = at::upsample_nearest3d(x, {2 * t, 2 * h, 2 * w}, 2.0, 2.0, 2.0);
      } else {
        x = at::upsample_nearest2d(x.squeeze(2), {2 * h, 2 * w}, 2.0, 2.0).unsqueeze(2);
      }
    } else {
      at::Tensor y = at::upsample_nearest2d(x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w}), {2 * h, 2 * w}, 2.0, 2.0);
      x = y.reshape({b, t, c, 2 * h, 2 * w}).permute({0, 2, 1, 3, 4});
    }
    return conv_frames(conv, x);
  }
  nn::Conv2d conv{nullptr};
  bool compress_time;
};

// CogVideoXDownsample3D: average pairs of frames (the first frame apart) when compress_time, then a
// stride-2 Conv2d after padding right/bottom by one.
struct Downsample3D : torch::nn::Module {
  Downsample3D(int64_t ch, bool compress_time) : compress_time(compress_time) {
    conv = register_module("conv", nn::Conv2d(ch, ch, 3, 2, 0));
  }
  at::Tensor forward(at::Tensor x) {
    if (compress_time) {
      const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
      at::Tensor y = x.permute({0, 3, 4, 1, 2}).reshape({b * h * w, c, t});
      if (t % 2 == 1) {
        at::Tensor first = y.select(-1, 0), rest = y.narrow(-1, 1, t - 1);
        if (rest.size(-1) > 0) rest = at::avg_pool1d(rest, {2}, {2});
        y = at::cat({first.unsqueeze(-1), rest}, -1);
      } else {
        y = at::avg_pool1d(y, {2}, {2});
      }
      x = y.reshape({b, h, w, c, y.size(-1)}).permute({0, 3, 4, 1, 2});
    }
    x = at::constant_pad_nd(x, {0, 1, 0, 1}, 0);
    return conv_frames(conv, x);
  }
  nn::Conv2d conv{nullptr};
  bool compress_time;
};

// Down/mid/up blocks: resnets, then an optional sampler.
struct Block3D : torch::nn::Module {
  Block3D(int64_t in, int64_t out, int64_t layers, int64_t groups, double eps, int64_t spatial_norm_dim) {
    auto list = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) {
      resnets.push_back(std::make_shared<Resnet3D>(i == 0 ? in : out, out, groups, eps, spatial_norm_dim));
      list->push_back(resnets.back());
    }
  }
  at::Tensor forward(at::Tensor x, const at::Tensor& zq) {
    for (auto& r : resnets) x = r->forward(x, zq);
    if (up) x = up->forward(x);
    if (down) x = down->forward(x);
    return x;
  }
  std::vector<std::shared_ptr<Resnet3D>> resnets;
  std::shared_ptr<Upsample3D> up;
  std::shared_ptr<Downsample3D> down;
};

int64_t compress_levels(int64_t ratio) { return int64_t(std::log2(double(ratio))); }

}  // namespace

struct CogVideoXDecoder : torch::nn::Module {
  explicit CogVideoXDecoder(const CogVideoXVaeConfig& c) {
    std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
    const int64_t z = c.latent_channels, g = c.norm_num_groups;
    conv_in = register_module("conv_in", std::make_shared<CausalConv3d>(z, rev[0], 3));
    mid_block = register_module("mid_block", std::make_shared<Block3D>(rev[0], rev[0], 2, g, c.norm_eps, z));
    auto list = register_module("up_blocks", torch::nn::ModuleList());
    const int64_t levels = compress_levels(c.temporal_compression_ratio);
    int64_t out = rev[0];
    for (size_t i = 0; i < rev.size(); ++i) {
      const int64_t prev = out;
      out = rev[i];
      auto blk = std::make_shared<Block3D>(prev, out, c.layers_per_block + 1, g, c.norm_eps, z);
      if (i + 1 != rev.size()) {
        auto ups = blk->register_module("upsamplers", torch::nn::ModuleList());
        blk->up = std::make_shared<Upsample3D>(out, int64_t(i) < levels);
        ups->push_back(blk->up);
      }
      up_blocks.push_back(blk);
      list->push_back(blk);
    }
    norm_out = register_module("norm_out", std::make_shared<SpatialNorm3D>(rev.back(), z, g));
    conv_out = register_module("conv_out", std::make_shared<CausalConv3d>(rev.back(), c.out_channels, 3));
  }
  at::Tensor forward(const at::Tensor& sample) {
    at::Tensor h = conv_in->forward(sample);
    h = mid_block->forward(h, sample);
    for (auto& b : up_blocks) h = b->forward(h, sample);
    h = at::silu(norm_out->forward(h, sample));
    return conv_out->forward(h);
  }
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::shared_ptr<Block3D> mid_block;
  std::vector<std::shared_ptr<Block3D>> up_blocks;
  std::shared_ptr<SpatialNorm3D> norm_out;
};

struct CogVideoXEncoder : torch::nn::Module {
  explicit CogVideoXEncoder(const CogVideoXVaeConfig& c) {
    const auto& boc = c.block_out_channels;
    const int64_t g = c.norm_num_groups;
    conv_in = register_module("conv_in", std::make_shared<CausalConv3d>(c.in_channels, boc[0], 3));
    auto list = register_module("down_blocks", torch::nn::ModuleList());
    const int64_t levels = compress_levels(c.temporal_compression_ratio);
    int64_t out = boc[0];
    for (size_t i = 0; i < boc.size(); ++i) {
      const int64_t in = out;
      out = boc[i];
      auto blk = std::make_shared<Block3D>(in, out, c.layers_per_block, g, c.norm_eps, 0);
      if (i + 1 != boc.size()) {
        auto downs = blk->register_module("downsamplers", torch::nn::ModuleList());
        blk->down = std::make_shared<Downsample3D>(out, int64_t(i) < levels);
        downs->push_back(blk->down);
      }
      down_blocks.push_back(blk);
      list->push_back(blk);
    }
    mid_block = register_module("mid_block", std::make_shared<Block3D>(boc.back(), boc.back(), 2, g, c.norm_eps, 0));
    norm_out = register_module("norm_out", nn::GroupNorm(g, boc.back(), 1e-6));
    conv_out = register_module("conv_out", std::make_shared<CausalConv3d>(boc.back(), 2 * c.latent_channels, 3));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = conv_in->forward(x);
    for (auto& b : down_blocks) h = b->forward(h, at::Tensor());
    h = mid_block->forward(h, at::Tensor());
    return conv_out->forward(at::silu(norm_out(h)));
  }
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::vector<std::shared_ptr<Block3D>> down_blocks;
  std::shared_ptr<Block3D> mid_block;
  nn::GroupNorm norm_out{nullptr};
};

CogVideoXVaeConfig CogVideoXVaeConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "vae config");
  CogVideoXVaeConfig c;
  f.get("in_channels", c.in_channels);
  f.get("out_channels", c.out_channels);
  f.get("block_out_channels", c.block_out_channels);
  if (c.block_out_channels.empty()) throw FormatError("vae config: 'block_out_channels' is an empty list");
  f.get("latent_channels", c.latent_channels);
  f.get("layers_per_block", c.layers_per_block);
  f.get("norm_eps", c.norm_eps);
  f.get("norm_num_groups", c.norm_num_groups);
  double tcr = double(c.temporal_compression_ratio);
  f.get("temporal_compression_ratio", tcr);
  c.temporal_compression_ratio = int64_t(tcr);
  f.get("sample_height", c.sample_height);
  f.get("sample_width", c.sample_width);
  f.get("scaling_factor", c.scaling_factor);
  f.get("use_quant_conv", c.use_quant_conv);
  f.get("use_post_quant_conv", c.use_post_quant_conv);
  for (const char* k : {"down_block_types", "up_block_types"}) {
    if (!f.has(k)) continue;
    if (!j[k].is_array() || j[k].size() != c.block_out_channels.size())
      throw FormatError(std::string("vae config: '") + k + "' must list one block per block_out_channels entry");
    const std::string want = std::string(k) == "down_block_types" ? "CogVideoXDownBlock3D" : "CogVideoXUpBlock3D";
    for (const auto& v : j[k])
      if (v != want) throw FormatError(std::string("vae config: ") + k + " must all be " + want);
  }
  if (f.has("act_fn") && j["act_fn"] != "silu") throw FormatError("vae config: act_fn must be silu");
  if (f.has("invert_scale_latents") && j["invert_scale_latents"] == true)
    throw FormatError("vae config: invert_scale_latents is not supported");
  return c;
}

AutoencoderKLCogVideoX::AutoencoderKLCogVideoX(const CogVideoXVaeConfig& c) : config_(c) {
  encoder_ = register_module("encoder", std::make_shared<CogVideoXEncoder>(c));
  decoder_ = register_module("decoder", std::make_shared<CogVideoXDecoder>(c));
  // diffusers sizes these by out_channels (not latent_channels); mirrored for the names and shapes.
  if (c.use_quant_conv)
    quant_conv_ = register_module("quant_conv", SafeConv3d(2 * c.out_channels, 2 * c.out_channels, std::array<int64_t, 3>{1, 1, 1}).ptr());
  if (c.use_post_quant_conv)
    post_quant_conv_ = register_module("post_quant_conv", SafeConv3d(c.out_channels, c.out_channels, std::array<int64_t, 3>{1, 1, 1}).ptr());
}

at::Tensor AutoencoderKLCogVideoX::decode_frames(const at::Tensor& z) {
  const int64_t frames = z.size(2), batch = 2;
  const int64_t n = std::max<int64_t>(frames / batch, 1), rem = frames % batch;
  reset_caches(*decoder_);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = batch * i + (i == 0 ? 0 : rem), end = std::min(batch * (i + 1) + rem, frames);
    at::Tensor zi = z.narrow(2, start, end - start);
    if (post_quant_conv_) zi = std::static_pointer_cast<SafeConv3dImpl>(post_quant_conv_)->forward(zi);
    out.push_back(decoder_->forward(zi));
  }
  reset_caches(*decoder_);
  return at::cat(out, 2);
}

at::Tensor AutoencoderKLCogVideoX::decode(const at::Tensor& z, const CogVideoXTiling* tiling) {
  if (z.dim() != 5 || z.size(1) != config_.latent_channels)
    throw ShapeError("cogvideox vae: latents must be [B, " + std::to_string(config_.latent_channels) + ", F, h, w]");
  if (tiling) {
    const int64_t s = config_.spatial_scale();
    const int64_t th = tiling->tile_sample_min_height ? tiling->tile_sample_min_height : config_.sample_height / 2;
    const int64_t tw = tiling->tile_sample_min_width ? tiling->tile_sample_min_width : config_.sample_width / 2;
    if (z.size(4) > tw / s || z.size(3) > th / s) return tiled_decode(z, *tiling);
  }
  return decode_frames(z);
}

at::Tensor AutoencoderKLCogVideoX::tiled_decode(const at::Tensor& z, const CogVideoXTiling& t) {
  const int64_t s = config_.spatial_scale();
  const int64_t sample_h = t.tile_sample_min_height ? t.tile_sample_min_height : config_.sample_height / 2;
  const int64_t sample_w = t.tile_sample_min_width ? t.tile_sample_min_width : config_.sample_width / 2;
  const auto latent_h = int64_t(double(sample_h) / double(s)), latent_w = int64_t(double(sample_w) / double(s));
  const auto overlap_h = int64_t(double(latent_h) * (1 - t.overlap_factor_height));
  const auto overlap_w = int64_t(double(latent_w) * (1 - t.overlap_factor_width));
  const auto blend_h = int64_t(double(sample_h) * t.overlap_factor_height);
  const auto blend_w = int64_t(double(sample_w) * t.overlap_factor_width);
  const int64_t limit_h = sample_h - blend_h, limit_w = sample_w - blend_w;
  if (overlap_h <= 0 || overlap_w <= 0) throw UsageError("cogvideox vae: tiles too small for their overlap");
  const int64_t H = z.size(3), W = z.size(4);
  std::vector<std::vector<at::Tensor>> rows;
  for (int64_t i = 0; i < H; i += overlap_h) {
    std::vector<at::Tensor> row;
    for (int64_t j = 0; j < W; j += overlap_w) {
      at::Tensor tile = z.narrow(3, i, std::min(latent_h, H - i)).narrow(4, j, std::min(latent_w, W - j));
      row.push_back(decode_frames(tile));
    }
    rows.push_back(std::move(row));
  }
  // blend_v / blend_h modify the lower/right tile in place, as diffusers does.
  auto blend = [](const at::Tensor& a, at::Tensor& b, int64_t extent, int64_t dim) {
    extent = std::min({a.size(dim), b.size(dim), extent});
    for (int64_t y = 0; y < extent; ++y) {
      const double f = double(y) / double(extent);
      b.select(dim, y).copy_(a.select(dim, a.size(dim) - extent + y) * (1 - f) + b.select(dim, y) * f);
    }
  };
  std::vector<at::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      at::Tensor& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, blend_h, 3);
      if (j > 0) blend(rows[i][j - 1], tile, blend_w, 4);
      result_row.push_back(tile.narrow(3, 0, std::min(limit_h, tile.size(3))).narrow(4, 0, std::min(limit_w, tile.size(4))));
    }
    result_rows.push_back(at::cat(result_row, 4));
  }
  return at::cat(result_rows, 3);
}

std::pair<at::Tensor, at::Tensor> AutoencoderKLCogVideoX::encode(const at::Tensor& x) {
  if (x.dim() != 5 || x.size(1) != config_.in_channels)
    throw ShapeError("cogvideox vae: videos must be [B, " + std::to_string(config_.in_channels) + ", F, H, W]");
  const int64_t frames = x.size(2), batch = 8;
  const int64_t n = std::max<int64_t>(frames / batch, 1), rem = frames % batch;
  reset_caches(*encoder_);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = batch * i + (i == 0 ? 0 : rem), end = std::min(batch * (i + 1) + rem, frames);
    at::Tensor h = encoder_->forward(x.narrow(2, start, end - start));
    if (quant_conv_) h = std::static_pointer_cast<SafeConv3dImpl>(quant_conv_)->forward(h);
    out.push_back(h);
  }
  reset_caches(*encoder_);
  auto parts = at::cat(out, 2).chunk(2, 1);
  return {parts[0], at::clamp(parts[1], -30.0, 20.0)};
}

std::shared_ptr<AutoencoderKLCogVideoX> AutoencoderKLCogVideoX::load(const std::filesystem::path& dir, at::Device device,
                                                                      at::ScalarType dtype) {
  const auto j = read_json_object(dir / "config.json");
  auto config = CogVideoXVaeConfig::from_json(j);
  auto store = WeightStore::open(dir);
  return nn::build_model<AutoencoderKLCogVideoX>(config, device, dtype, [&](AutoencoderKLCogVideoX& m) { load_module(m, store); });
}

}  // namespace mmdit
