#include "models/vae.h"

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "core/attention.h"
#include "core/errors.h"
#include "core/torch_util.h"
#include "core/model_folder.h"
#include "core/weights.h"
#include "models/layers.h"

namespace mmdit {
namespace {

constexpr double kEps = 1e-6;

struct ResnetBlock : torch::nn::Module {
  ResnetBlock(int64_t in, int64_t out, int64_t groups) {
    norm1 = register_module("norm1", nn::GroupNorm(groups, in, kEps));
    conv1 = register_module("conv1", nn::Conv2d(in, out, 3, 1, 1));
    norm2 = register_module("norm2", nn::GroupNorm(groups, out, kEps));
    conv2 = register_module("conv2", nn::Conv2d(out, out, 3, 1, 1));
    if (in != out) conv_shortcut = register_module("conv_shortcut", nn::Conv2d(in, out, 1));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = conv1(at::silu(norm1(x)));
    h = conv2(at::silu(norm2(h)));
    return (conv_shortcut.is_empty() ? x : conv_shortcut(x)) + h;
  }
  nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
};

// Attention with group_norm, heads = 1, residual (UNetMidBlock2D's attention, AttnProcessor2_0).
struct VaeAttention : torch::nn::Module {
  VaeAttention(int64_t c, int64_t groups) {
    group_norm = register_module("group_norm", nn::GroupNorm(groups, c, kEps));
    to_q = register_module("to_q", nn::Linear(c, c));
    to_k = register_module("to_k", nn::Linear(c, c));
    to_v = register_module("to_v", nn::Linear(c, c));
    to_out_list = register_module("to_out", torch::nn::ModuleList());
    to_out = nn::Linear(c, c);
    to_out_list->push_back(to_out.ptr());
  }
  at::Tensor forward(const at::Tensor& x) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor h = group_norm(x).view({B, C, H * W}).transpose(1, 2);  // [B, HW, C]
    auto heads1 = [&](const at::Tensor& t) { return t.view({B, -1, 1, C}).transpose(1, 2); };
    at::Tensor q = heads1(to_q(h)), k = heads1(to_k(h)), v = heads1(to_v(h));
    AttentionDesc desc;
    desc.model = "vae";
    desc.heads = 1;
    desc.image = {0, H * W};
    desc.text = {H * W, H * W};
    at::Tensor o = attention(q, k, v, desc).transpose(1, 2).reshape({B, -1, C}).to(q.scalar_type());
    o = to_out(o).transpose(-1, -2).reshape({B, C, H, W});
    return o + x;
  }
  nn::GroupNorm group_norm{nullptr};
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
  torch::nn::ModuleList to_out_list{nullptr};
};

struct MidBlock : torch::nn::Module {
  MidBlock(int64_t c, int64_t groups, bool add_attention) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    r0 = std::make_shared<ResnetBlock>(c, c, groups);
    r1 = std::make_shared<ResnetBlock>(c, c, groups);
    resnets->push_back(r0);
    resnets->push_back(r1);
    if (add_attention) {
      attentions = register_module("attentions", torch::nn::ModuleList());
      attn = std::make_shared<VaeAttention>(c, groups);
      attentions->push_back(attn);
    }
  }
  at::Tensor forward(at::Tensor x) {
    x = r0->forward(x);
    if (attn) x = attn->forward(x);
    return r1->forward(x);
  }
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
  std::shared_ptr<ResnetBlock> r0, r1;
  std::shared_ptr<VaeAttention> attn;
};

// Downsample2D(use_conv, padding=0): pad right/bottom by one, 3x3 conv stride 2.
struct Downsample : torch::nn::Module {
  explicit Downsample(int64_t c) { conv = register_module("conv", nn::Conv2d(c, c, 3, 2, 0)); }
  at::Tensor forward(const at::Tensor& x) { return conv(at::constant_pad_nd(x, {0, 1, 0, 1}, 0)); }
  nn::Conv2d conv{nullptr};
};

// Upsample2D(use_conv): nearest x2, 3x3 conv.
struct Upsample : torch::nn::Module {
  explicit Upsample(int64_t c) { conv = register_module("conv", nn::Conv2d(c, c, 3, 1, 1)); }
  at::Tensor forward(const at::Tensor& x) {
    return conv(at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}, 2.0, 2.0));
  }
  nn::Conv2d conv{nullptr};
};

// DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional down/upsampler.
struct SampleBlock : torch::nn::Module {
  SampleBlock(int64_t in, int64_t out, int64_t layers, int64_t groups, bool down, bool add_sampler) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) {
      res.push_back(std::make_shared<ResnetBlock>(i == 0 ? in : out, out, groups));
      resnets->push_back(res.back());
    }
    if (add_sampler) {
      auto list = register_module(down ? "downsamplers" : "upsamplers", torch::nn::ModuleList());
      if (down) {
        downsampler = std::make_shared<Downsample>(out);
        list->push_back(downsampler);
      } else {
        upsampler = std::make_shared<Upsample>(out);
        list->push_back(upsampler);
      }
    }
  }
  at::Tensor forward(at::Tensor x) {
    for (auto& r : res) x = r->forward(x);
    if (downsampler) x = downsampler->forward(x);
    if (upsampler) x = upsampler->forward(x);
    return x;
  }
  torch::nn::ModuleList resnets{nullptr};
  std::vector<std::shared_ptr<ResnetBlock>> res;
  std::shared_ptr<Downsample> downsampler;
  std::shared_ptr<Upsample> upsampler;
};

}  // namespace

struct VaeEncoder : torch::nn::Module {
  explicit VaeEncoder(const VaeConfig& c) {
    const auto& boc = c.block_out_channels;
    const int64_t g = c.norm_num_groups;
    conv_in = register_module("conv_in", nn::Conv2d(c.in_channels, boc[0], 3, 1, 1));
    auto list = register_module("down_blocks", torch::nn::ModuleList());
    int64_t out = boc[0];
    for (size_t i = 0; i < boc.size(); ++i) {
      const int64_t in = out;
      out = boc[i];
      blocks.push_back(std::make_shared<SampleBlock>(in, out, c.layers_per_block, g, true, i + 1 < boc.size()));
      list->push_back(blocks.back());
    }
    mid_block = register_module("mid_block", std::make_shared<MidBlock>(boc.back(), g, c.mid_block_add_attention));
    conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(g, boc.back(), kEps));
    conv_out = register_module("conv_out", nn::Conv2d(boc.back(), 2 * c.latent_channels, 3, 1, 1));
  }
  at::Tensor forward(at::Tensor x) {
    x = conv_in(x);
    for (auto& b : blocks) x = b->forward(x);
    x = mid_block->forward(x);
    return conv_out(at::silu(conv_norm_out(x)));
  }
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<std::shared_ptr<SampleBlock>> blocks;
  std::shared_ptr<MidBlock> mid_block;
  nn::GroupNorm conv_norm_out{nullptr};
};

struct VaeDecoder : torch::nn::Module {
  explicit VaeDecoder(const VaeConfig& c) {
    const auto& boc = c.block_out_channels;
    const int64_t g = c.norm_num_groups;
    conv_in = register_module("conv_in", nn::Conv2d(c.latent_channels, boc.back(), 3, 1, 1));
    mid_block = register_module("mid_block", std::make_shared<MidBlock>(boc.back(), g, c.mid_block_add_attention));
    auto list = register_module("up_blocks", torch::nn::ModuleList());
    std::vector<int64_t> rev(boc.rbegin(), boc.rend());
    int64_t out = rev[0];
    for (size_t i = 0; i < rev.size(); ++i) {
      const int64_t prev = out;
      out = rev[i];
      blocks.push_back(std::make_shared<SampleBlock>(prev, out, c.layers_per_block + 1, g, false, i + 1 < rev.size()));
      list->push_back(blocks.back());
    }
    conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(g, boc[0], kEps));
    conv_out = register_module("conv_out", nn::Conv2d(boc[0], c.out_channels, 3, 1, 1));
  }
  at::Tensor forward(at::Tensor x) {
    x = conv_in(x);
    x = mid_block->forward(x);
    for (auto& b : blocks) x = b->forward(x);
    return conv_out(at::silu(conv_norm_out(x)));
  }
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<std::shared_ptr<SampleBlock>> blocks;
  std::shared_ptr<MidBlock> mid_block;
  nn::GroupNorm conv_norm_out{nullptr};
};

VaeConfig VaeConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "vae config");
  VaeConfig c;
  f.get("in_channels", c.in_channels);
  f.get("out_channels", c.out_channels);
  f.get("latent_channels", c.latent_channels);
  f.get("layers_per_block", c.layers_per_block);
  f.get("norm_num_groups", c.norm_num_groups);
  f.get("scaling_factor", c.scaling_factor);
  f.get("shift_factor", c.shift_factor);
  f.get("use_quant_conv", c.use_quant_conv);
  f.get("use_post_quant_conv", c.use_post_quant_conv);
  f.get("mid_block_add_attention", c.mid_block_add_attention);
  f.get("block_out_channels", c.block_out_channels);
  if (c.block_out_channels.empty()) throw FormatError("vae config: 'block_out_channels' is an empty list");
  auto check_types = [&](const char* key, const char* want) {
    if (!f.has(key)) return;
    if (!j[key].is_array() || j[key].size() != c.block_out_channels.size())
      throw FormatError(std::string("vae config: '") + key + "' must list one block per block_out_channels entry");
    for (const auto& v : j[key])
      if (!v.is_string() || v.get<std::string>() != want)
        throw FormatError(std::string("vae config: ") + key + " other than " + want + " is not supported");
  };
  check_types("down_block_types", "DownEncoderBlock2D");
  check_types("up_block_types", "UpDecoderBlock2D");
  if (f.has("act_fn") && j["act_fn"] != "silu") throw FormatError("vae config: act_fn other than silu is not supported");
  for (int64_t ch : c.block_out_channels)
    if (ch % c.norm_num_groups != 0)
      throw FormatError("vae config: block_out_channels " + std::to_string(ch) + " not divisible by norm_num_groups " +
                        std::to_string(c.norm_num_groups));
  return c;
}

AutoencoderKL::AutoencoderKL(const VaeConfig& c) : config_(c) {
  encoder_ = register_module("encoder", std::make_shared<VaeEncoder>(c));
  decoder_ = register_module("decoder", std::make_shared<VaeDecoder>(c));
  if (c.use_quant_conv)
    quant_conv_ = register_module("quant_conv", nn::Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1).ptr());
  if (c.use_post_quant_conv)
    post_quant_conv_ = register_module("post_quant_conv", nn::Conv2d(c.latent_channels, c.latent_channels, 1).ptr());
}

at::Tensor AutoencoderKL::decode(const at::Tensor& z) {
  if (z.dim() != 4 || z.size(1) != config_.latent_channels)
    throw ShapeError("vae decode: latents must be [B, " + std::to_string(config_.latent_channels) + ", h, w], got " +
                     shape_string(z.sizes()));
  at::Tensor x = z;
  if (post_quant_conv_) x = std::static_pointer_cast<nn::Conv2dImpl>(post_quant_conv_)->forward(x);
  return decoder_->forward(x);
}

at::Tensor AutoencoderKL::decode_latents(const at::Tensor& latents) {
  return decode(latents / config_.scaling_factor + config_.shift_factor);
}

at::Tensor AutoencoderKL::encode_moments(const at::Tensor& image) {
  const int64_t f = downscale();
  if (image.dim() != 4 || image.size(1) != config_.in_channels || image.size(2) % f || image.size(3) % f)
    throw ShapeError("vae encode: image must be [B, " + std::to_string(config_.in_channels) + ", H, W] with H, W multiples of " +
                     std::to_string(f) + ", got " + shape_string(image.sizes()));
  at::Tensor m = encoder_->forward(image);
  if (quant_conv_) m = std::static_pointer_cast<nn::Conv2dImpl>(quant_conv_)->forward(m);
  return m;
}

at::Tensor AutoencoderKL::encode_mean(const at::Tensor& image) {
  return encode_moments(image).narrow(1, 0, config_.latent_channels);
}

at::Tensor AutoencoderKL::encode_latents(const at::Tensor& image) {
  return (encode_mean(image) - config_.shift_factor) * config_.scaling_factor;
}

namespace {

const char* kLdmPrefixes[] = {"first_stage_model.", "vae."};

WeightStore ldm_view(const WeightStore& store) {
  for (const char* prefix : kLdmPrefixes)
    for (const auto& n : store.names())
      if (n.rfind(prefix, 0) == 0) return store.with_prefix(prefix);
  return store;
}

}  // namespace

std::shared_ptr<AutoencoderKL> AutoencoderKL::load(const std::filesystem::path& component_dir, at::Device device,
                                                   at::ScalarType dtype) {
  const auto j = read_json_object(component_dir / "config.json");
  auto config = VaeConfig::from_json(j);
  auto store = WeightStore::open(component_dir);
  return nn::build_model<AutoencoderKL>(config, device, dtype, [&](AutoencoderKL& m) { load_module(m, store); });
}

std::vector<RenameRule> ldm_vae_rules(int64_t num_blocks) {
  using TR = Transform;
  const std::string W = R"((weight|bias))";
  std::vector<RenameRule> r = {
      {R"((encoder|decoder)\.(conv_in|conv_out)\.)" + W, {"$1.$2.$3"}},
      {R"((encoder|decoder)\.norm_out\.)" + W, {"$1.conv_norm_out.$2"}},
      {R"((quant_conv|post_quant_conv)\.)" + W, {"$1.$2"}},
      {R"(encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut\.)" + W, {"encoder.down_blocks.$1.resnets.$2.conv_shortcut.$3"}},
      {R"(encoder\.down\.(\d+)\.block\.(\d+)\.(norm1|conv1|norm2|conv2)\.)" + W, {"encoder.down_blocks.$1.resnets.$2.$3.$4"}},
      {R"(encoder\.down\.(\d+)\.downsample\.conv\.)" + W, {"encoder.down_blocks.$1.downsamplers.0.conv.$2"}},
      {R"((encoder|decoder)\.mid\.block_1\.(norm1|conv1|norm2|conv2)\.)" + W, {"$1.mid_block.resnets.0.$2.$3"}},
      {R"((encoder|decoder)\.mid\.block_2\.(norm1|conv1|norm2|conv2)\.)" + W, {"$1.mid_block.resnets.1.$2.$3"}},
      {R"((encoder|decoder)\.mid\.attn_1\.norm\.)" + W, {"$1.mid_block.attentions.0.group_norm.$2"}},
      {R"((encoder|decoder)\.mid\.attn_1\.(q|k|v)\.)" + W, {"$1.mid_block.attentions.0.to_$2.$3"}, TR::SqueezeConv},
      {R"((encoder|decoder)\.mid\.attn_1\.proj_out\.)" + W, {"$1.mid_block.attentions.0.to_out.0.$2"}, TR::SqueezeConv},
  };
  // LDM numbers decoder levels from the lowest resolution up the other way round: up.N = up_blocks[n-1-N].
  for (int64_t n = 0; n < num_blocks; ++n) {
    const std::string ldm = std::to_string(n), dif = std::to_string(num_blocks - 1 - n);
    r.push_back({R"(decoder\.up\.)" + ldm + R"(\.block\.(\d+)\.nin_shortcut\.)" + W,
                 {"decoder.up_blocks." + dif + ".resnets.$1.conv_shortcut.$2"}});
    r.push_back({R"(decoder\.up\.)" + ldm + R"(\.block\.(\d+)\.(norm1|conv1|norm2|conv2)\.)" + W,
                 {"decoder.up_blocks." + dif + ".resnets.$1.$2.$3"}});
    r.push_back({R"(decoder\.up\.)" + ldm + R"(\.upsample\.conv\.)" + W, {"decoder.up_blocks." + dif + ".upsamplers.0.conv.$1"}});
  }
  return r;
}

VaeConfig infer_vae_config(const WeightStore& full, int64_t norm_num_groups) {
  WeightStore store = ldm_view(full);
  auto shape = [&](const std::string& name) -> std::vector<int64_t> {
    const TensorInfo* info = store.info(name);
    if (!info || info->shape.size() < 2) throw FormatError("not an LDM VAE checkpoint: no usable tensor '" + name + "'");
    return info->shape;
  };
  VaeConfig c;
  c.norm_num_groups = norm_num_groups;
  c.in_channels = shape("encoder.conv_in.weight")[1];
  c.out_channels = shape("decoder.conv_out.weight")[0];
  c.latent_channels = shape("decoder.conv_in.weight")[1];
  c.block_out_channels.clear();
  for (int64_t i = 0; store.has("encoder.down." + std::to_string(i) + ".block.0.conv1.weight"); ++i)
    c.block_out_channels.push_back(shape("encoder.down." + std::to_string(i) + ".block.0.conv1.weight")[0]);
  if (c.block_out_channels.empty()) throw FormatError("not an LDM VAE checkpoint: no encoder.down blocks");
  c.layers_per_block = 0;
  while (store.has("encoder.down.0.block." + std::to_string(c.layers_per_block) + ".conv1.weight")) ++c.layers_per_block;
  c.use_quant_conv = store.has("quant_conv.weight");
  c.use_post_quant_conv = store.has("post_quant_conv.weight");
  c.mid_block_add_attention = store.has("encoder.mid.attn_1.q.weight");
  if (c.latent_channels == 16) {
    c.scaling_factor = 1.5305;
    c.shift_factor = 0.0609;
  } else {
    c.scaling_factor = 0.18215;
    c.shift_factor = 0.0;
  }
  return c;
}

std::shared_ptr<AutoencoderKL> load_vae_single_file(const WeightStore& store, const VaeConfig& config, at::Device device,
                                                    at::ScalarType dtype) {
  TensorMap tensors = convert_weights(ldm_view(store), ldm_vae_rules(int64_t(config.block_out_channels.size())));
  return nn::build_model<AutoencoderKL>(config, device, dtype, [&](AutoencoderKL& m) { load_module(m, tensors); });
}

}  // namespace mmdit
