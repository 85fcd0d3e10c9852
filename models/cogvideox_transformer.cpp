#include "models/cogvideox_transformer.h"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "controls/control.h"
#include "core/attention.h"
#include "core/attention_fp8.h"
#include "core/errors.h"
#include "core/parallel.h"
#include "core/torch_util.h"
#include "core/model_folder.h"
#include "core/weights.h"
#include "models/cogvideox_layers.h"
#include "models/fast_layers.h"
#include "models/fused_ops.h"

namespace mmdit {
namespace {

using nn::timestep_embedding;
using nn::TwoLinear;
using nn::FeedForward;

// get_1d_sincos_pos_embed_from_grid: float64 frequencies, [sin, cos].
at::Tensor sincos_1d(int64_t dim, const at::Tensor& pos) {
  at::Tensor omega = at::arange(dim / 2, at::TensorOptions().dtype(at::kDouble));
  omega = omega / (double(dim) / 2.0);
  omega = at::reciprocal(at::pow(10000, omega));
  at::Tensor out = at::outer(pos.reshape({-1}).to(at::kDouble), omega);
  return at::cat({at::sin(out), at::cos(out)}, 1);
}

// get_3d_sincos_pos_embed(embed_dim, (w, h), t, ...) flattened: [t * h * w, dim] float64.
at::Tensor sincos_3d(int64_t dim, int64_t h, int64_t w, int64_t t, double spatial_scale, double temporal_scale) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const int64_t dim_spatial = 3 * dim / 4, dim_temporal = dim / 4;
  at::Tensor grid_h = at::arange(h, f32) / spatial_scale;
  at::Tensor grid_w = at::arange(w, f32) / spatial_scale;
  // meshgrid(grid_w, grid_h, indexing="xy"): [h, w] grids of the w and the h coordinate.
  at::Tensor gw = grid_w.unsqueeze(0).expand({h, w}), gh = grid_h.unsqueeze(1).expand({h, w});
  at::Tensor spatial = at::cat({sincos_1d(dim_spatial / 2, gw), sincos_1d(dim_spatial / 2, gh)}, 1);  // [h*w, 3D/4]
  at::Tensor temporal = sincos_1d(dim_temporal, at::arange(t, f32) / temporal_scale);                  // [t, D/4]
  at::Tensor pe = at::cat({temporal.unsqueeze(1).expand({t, h * w, dim_temporal}),
                           spatial.unsqueeze(0).expand({t, h * w, dim_spatial})}, -1);
  return pe.reshape({t * h * w, dim});
}

// get_1d_rotary_pos_embed(dim, pos, use_real=True, repeat_interleave_real=True), float32.
std::pair<at::Tensor, at::Tensor> rope_1d(int64_t dim, const at::Tensor& pos) {
  at::Tensor freqs = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kFloat)) / dim;
  freqs = at::reciprocal(at::pow(10000.0, freqs));
  freqs = at::outer(pos, freqs);
  return {freqs.cos().repeat_interleave(2, 1), freqs.sin().repeat_interleave(2, 1)};
}

// apply_rotary_emb(x, (cos, sin)) on x [B, H, S, D].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto sizes = x.sizes().vec();
  sizes.back() /= 2;
  sizes.push_back(2);
  auto parts = x.reshape(sizes).unbind(-1);
  at::Tensor rotated = at::stack({-parts[1], parts[0]}, -1).flatten(3);
  return (x.to(at::kFloat) * cos + rotated.to(at::kFloat) * sin).to(x.scalar_type());
}

// CogVideoXLayerNormZero: one LayerNorm, separate shift/scale/gate for video and text.
struct LayerNormZero : torch::nn::Module {
  LayerNormZero(int64_t cond_dim, int64_t dim, double eps) {
    linear = register_module("linear", nn::Linear(cond_dim, 6 * dim));
    norm = register_module("norm", nn::AffineLayerNorm(dim, eps));
  }
  // Returns {norm x, norm ctx, gate x, gate ctx}.
  std::array<at::Tensor, 4> forward(const at::Tensor& x, const at::Tensor& ctx, const at::Tensor& temb) {
    auto m = linear(at::silu(temb)).chunk(6, 1);
    at::Tensor nx = norm(x) * (1 + m[1]).unsqueeze(1) + m[0].unsqueeze(1);
    at::Tensor nc = norm(ctx) * (1 + m[4]).unsqueeze(1) + m[3].unsqueeze(1);
    return {nx, nc, m[2].unsqueeze(1), m[5].unsqueeze(1)};
  }
  nn::Linear linear{nullptr};
  nn::AffineLayerNorm norm{nullptr};
};

// Attention with CogVideoXAttnProcessor2_0: joint [text, video] projections, per-head LayerNorm on q/k,
// RoPE on the video part of q and k.
struct CogAttention : torch::nn::Module {
  CogAttention(int64_t dim, int64_t heads, int64_t head_dim, bool bias) : heads(heads), head_dim(head_dim) {
    const int64_t inner = heads * head_dim;
    to_q = register_module("to_q", nn::Linear(dim, inner, bias));
    to_k = register_module("to_k", nn::Linear(dim, inner, bias));
    to_v = register_module("to_v", nn::Linear(dim, inner, bias));
    norm_q = register_module("norm_q", nn::AffineLayerNorm(head_dim, 1e-6));
    norm_k = register_module("norm_k", nn::AffineLayerNorm(head_dim, 1e-6));
    to_out_list = register_module("to_out", torch::nn::ModuleList());
    to_out = nn::Linear(inner, dim);
    to_out_list->push_back(to_out.ptr());
  }
  at::Tensor heads_view(const at::Tensor& x) const { return x.view({x.size(0), -1, heads, head_dim}).transpose(1, 2); }

  // Returns {video, text}.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& ctx,
                                            const std::optional<std::pair<at::Tensor, at::Tensor>>& rope,
                                            AttentionDesc desc) {
    const int64_t T = ctx.size(1), batch = x.size(0);
    at::Tensor h = at::cat({ctx, x}, 1);
    at::Tensor q = norm_q(heads_view(to_q(h))), k = norm_k(heads_view(to_k(h))), v = heads_view(to_v(h));
    if (rope) {
      const int64_t n = q.size(2) - T;
      q = at::cat({q.narrow(2, 0, T), apply_rope(q.narrow(2, T, n), rope->first, rope->second)}, 2);
      k = at::cat({k.narrow(2, 0, T), apply_rope(k.narrow(2, T, n), rope->first, rope->second)}, 2);
    }
    desc.heads = heads;
    desc.text = {0, T};
    desc.image = {T, q.size(2)};
    at::Tensor o = attention(q, k, v, desc);
    o = to_out(o.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(q.scalar_type()));
    return {o.narrow(1, T, o.size(1) - T), o.narrow(1, 0, T)};
  }
  // The fast path (models/fused_ops.h) on the joint [text, video] sequence h: one QKV GEMM, the per-head
  // LayerNorm and the video tokens' RoPE written straight into the Q/K/V buffers. Returns to_out's output
  // for all of h.
  at::Tensor forward_fused(const at::Tensor& h, int64_t T, const std::optional<std::pair<at::Tensor, at::Tensor>>& rope,
                           AttentionDesc desc) {
    qkv.fuse(to_q, to_k, to_v);
    const int64_t batch = h.size(0), L = h.size(1);
    at::Tensor qkv = this->qkv(h);
    fused::QkNormSpec spec;
    spec.kind = kernels::QkNorm::Layer;
    spec.q_w = norm_q->weight, spec.q_b = norm_q->bias, spec.k_w = norm_k->weight, spec.k_b = norm_k->bias;
    spec.eps = norm_q->eps;
    fused::Qkv buf = fused::qkv_buffers(batch, L, heads, head_dim, h.options());
    const at::Tensor cos = rope ? rope->first : at::Tensor(), sin = rope ? rope->second : at::Tensor();
    fused::qkv_prepare(qkv.narrow(1, 0, T), spec, cos, sin, T, buf, 0);
    fused::qkv_prepare(qkv.narrow(1, T, L - T), spec, cos, sin, T, buf, T);
    desc.heads = heads;
    desc.text = {0, T};
    desc.image = {T, L};
    if (fp8_attention)
      if (auto o8 = attention_fp8(fused::heads(buf.q), fused::heads(buf.k), fused::heads(buf.v), desc))
        return nn::project_fp8(to_out, o8->values, o8->descale, h.scalar_type());
    at::Tensor o = attention(fused::heads(buf.q), fused::heads(buf.k), fused::heads(buf.v), desc);
    return to_out(o.transpose(1, 2).reshape({batch, L, heads * head_dim}));
  }

  int64_t heads, head_dim;
  bool fp8_attention = false;
  // --fp8 (models/fp8.h): the fused projection as e4m3; to_out goes with the block's other layers. attention:
  // --fp8-attention (core/attention_fp8.h) on the fast path.
  void to_fp8(bool attention) {
    qkv.to_fp8(to_q, to_k, to_v);
    fp8_attention = attention;
  }

  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
  nn::AffineLayerNorm norm_q{nullptr}, norm_k{nullptr};
  torch::nn::ModuleList to_out_list{nullptr};
  nn::QkvProjection qkv;  // the fast path's fused projection
};

// [ctx, x] along the tokens: a view when they already are the two parts of one joint tensor (the fast
// path's blocks return them so), else a copy.
at::Tensor joint_of(const at::Tensor& ctx, const at::Tensor& x) {
  const int64_t B = x.size(0), T = ctx.size(1), L = T + x.size(1), C = x.size(2);
  const bool parts = ctx.dim() == 3 && ctx.size(0) == B && ctx.size(2) == C && ctx.scalar_type() == x.scalar_type() &&
                     ctx.storage().is_alias_of(x.storage()) && ctx.stride(0) == L * C && ctx.stride(1) == C &&
                     ctx.stride(2) == 1 && x.strides() == ctx.strides() &&
                     x.storage_offset() == ctx.storage_offset() + T * C;
  return parts ? ctx.as_strided({B, L, C}, {L * C, C, 1}, ctx.storage_offset()) : at::cat({ctx, x}, 1);
}

}  // namespace

// CogVideoXPatchEmbed.
struct CogVideoXPatchEmbed : torch::nn::Module {
  explicit CogVideoXPatchEmbed(const CogVideoXTransformerConfig& c) : c(c) {
    const int64_t dim = c.inner_dim();
    if (c.patch_size_t == 0)
      proj2d = register_module("proj", nn::Conv2d(c.in_channels, dim, c.patch_size, c.patch_size, 0, c.patch_bias));
    else
      proj_lin = register_module("proj", nn::Linear(c.in_channels * c.patch_size * c.patch_size * c.patch_size_t, dim));
    text_proj = register_module("text_proj", nn::Linear(c.text_embed_dim, dim));
    if (c.use_learned_positional_embeddings) {
      const int64_t n = (c.sample_height / c.patch_size) * (c.sample_width / c.patch_size) *
                        ((c.sample_frames - 1) / c.temporal_compression_ratio + 1);
      pos_embedding = register_buffer("pos_embedding", nn::empty_param({1, c.max_text_seq_length + n, dim}));
    }
  }
  at::Tensor forward(const at::Tensor& text, const at::Tensor& image) {
    at::Tensor t = text_proj(text);
    const int64_t B = image.size(0), F = image.size(1), C = image.size(2), H = image.size(3), W = image.size(4);
    const int64_t p = c.patch_size;
    at::Tensor x;
    if (c.patch_size_t == 0) {
      x = proj2d(image.reshape({-1, C, H, W}));
      x = x.view({B, F, x.size(1), x.size(2), x.size(3)}).flatten(3).transpose(2, 3).flatten(1, 2);
    } else {
      const int64_t pt = c.patch_size_t;
      x = image.permute({0, 1, 3, 4, 2}).reshape({B, F / pt, pt, H / p, p, W / p, p, C});
      x = proj_lin(x.permute({0, 1, 3, 5, 7, 2, 4, 6}).flatten(4, 7).flatten(1, 3));
    }
    at::Tensor embeds = at::cat({t, x}, 1).contiguous();
    if (c.use_learned_positional_embeddings) {
      if (H != c.sample_height || W != c.sample_width)
        throw ShapeError("cogvideox transformer: learned positional embeddings only fit the sample size " +
                         std::to_string(c.sample_height) + "x" + std::to_string(c.sample_width) + " latents");
      embeds = embeds + pos_embedding.to(embeds.scalar_type());
    } else if (!c.use_rotary_positional_embeddings) {
      // Sin-cos positions for this size (diffusers recomputes them for sizes other than the sample's);
      // zeros on the max_text_seq_length text positions.
      if (text.size(1) != c.max_text_seq_length)
        throw ShapeError("cogvideox transformer: " + std::to_string(text.size(1)) + " text tokens, but the model's "
                         "positional embeddings need max_text_seq_length = " + std::to_string(c.max_text_seq_length));
      const int64_t pre = (F - 1) * c.temporal_compression_ratio + 1;
      at::Tensor pe = sincos_3d(c.inner_dim(), H / p, W / p, (pre - 1) / c.temporal_compression_ratio + 1,
                                c.spatial_interpolation_scale, c.temporal_interpolation_scale);
      pe = at::cat({at::zeros({c.max_text_seq_length, pe.size(1)}, pe.options()), pe}, 0).unsqueeze(0);
      embeds = embeds + pe.to(embeds.options());
    }
    return embeds;
  }
  CogVideoXTransformerConfig c;
  nn::Conv2d proj2d{nullptr};
  nn::Linear proj_lin{nullptr}, text_proj{nullptr};
  at::Tensor pos_embedding;
};

struct CogVideoXTimeEmbed : TwoLinear {
  using TwoLinear::TwoLinear;
};

// AdaLayerNorm(chunk_dim=1): shift first, then scale.
struct CogVideoXAdaNormOut : torch::nn::Module {
  CogVideoXAdaNormOut(int64_t cond_dim, int64_t dim, double eps) {
    linear = register_module("linear", nn::Linear(cond_dim, 2 * dim));
    norm = register_module("norm", nn::AffineLayerNorm(dim, eps));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb) {
    auto ss = linear(at::silu(temb)).chunk(2, 1);
    return norm(x) * (1 + ss[1].unsqueeze(1)) + ss[0].unsqueeze(1);
  }
  nn::Linear linear{nullptr};
  nn::AffineLayerNorm norm{nullptr};
};

// CogVideoXBlock.
struct CogVideoXBlock : torch::nn::Module {
  explicit CogVideoXBlock(const CogVideoXTransformerConfig& c) {
    const int64_t dim = c.inner_dim();
    norm1 = register_module("norm1", std::make_shared<LayerNormZero>(c.time_embed_dim, dim, c.norm_eps));
    attn1 = register_module("attn1", std::make_shared<CogAttention>(dim, c.num_attention_heads, c.attention_head_dim,
                                                                   c.attention_bias));
    norm2 = register_module("norm2", std::make_shared<LayerNormZero>(c.time_embed_dim, dim, c.norm_eps));
    ff = register_module("ff", std::make_shared<FeedForward>(dim));
  }
  // Returns {video, text}.
  std::pair<at::Tensor, at::Tensor> forward(at::Tensor x, at::Tensor ctx, const at::Tensor& temb,
                                            const std::optional<std::pair<at::Tensor, at::Tensor>>& rope,
                                            const AttentionDesc& desc) {
    const int64_t T = ctx.size(1);
    auto [nx, nc, gx, gc] = norm1->forward(x, ctx, temb);
    auto [ax, ac] = attn1->forward(nx, nc, rope, desc);
    x = x + gx * ax;
    ctx = ctx + gc * ac;
    auto [nx2, nc2, gx2, gc2] = norm2->forward(x, ctx, temb);
    at::Tensor f = ff->forward(at::cat({nc2, nx2}, 1));
    x = x + gx2 * f.narrow(1, T, f.size(1) - T);
    ctx = ctx + gc2 * f.narrow(1, 0, T);
    return {x, ctx};
  }
  // The same block on the fast path (models/fused_ops.h): one joint sequence throughout, each norm +
  // modulation (and the residual before it) in one pass, GELU in the GEMM. Returns views of one tensor.
  std::pair<at::Tensor, at::Tensor> forward_fused(const at::Tensor& x, const at::Tensor& ctx, const at::Tensor& temb,
                                                  const std::optional<std::pair<at::Tensor, at::Tensor>>& rope,
                                                  const AttentionDesc& desc) {
    const int64_t T = ctx.size(1), N = x.size(1);
    at::Tensor h = joint_of(ctx, x);
    auto m1 = norm1->linear(at::silu(temb)).chunk(6, 1);  // video shift, scale, gate; text shift, scale, gate
    auto m2 = norm2->linear(at::silu(temb)).chunk(6, 1);
    const auto& ln1 = norm1->norm;
    const auto& ln2 = norm2->norm;
    at::Tensor nh = fused::ln_modulate(h, {}, {m1[0], m1[1], {}, m1[3], m1[4], {}, T}, ln1->eps, ln1->weight, ln1->bias).second;
    at::Tensor a = attn1->forward_fused(nh, T, rope, desc);
    auto [h1, nh2] = fused::ln_modulate(h, a, {m2[0], m2[1], m1[2], m2[3], m2[4], m1[5], T}, ln2->eps, ln2->weight, ln2->bias);
    at::Tensor f = nn::feed_forward_fused(*ff, nh2);
    fused::add_residual_(h1, {{}, {}, m2[2], {}, {}, m2[5], T}, f);
    return {h1.narrow(1, T, N), h1.narrow(1, 0, T)};
  }

  std::shared_ptr<LayerNormZero> norm1, norm2;
  std::shared_ptr<CogAttention> attn1;
  std::shared_ptr<FeedForward> ff;
};

CogVideoXTransformerConfig CogVideoXTransformerConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "transformer config");
  CogVideoXTransformerConfig c;
  f.get("num_attention_heads", c.num_attention_heads, 0);
  f.get("attention_head_dim", c.attention_head_dim, 0);
  f.get("in_channels", c.in_channels, 0);
  c.out_channels = c.in_channels;
  f.get("out_channels", c.out_channels, 0);
  f.get("flip_sin_to_cos", c.flip_sin_to_cos);
  f.get("freq_shift", c.freq_shift, 0);
  f.get("time_embed_dim", c.time_embed_dim, 0);
  f.get("ofs_embed_dim", c.ofs_embed_dim, 0);
  f.get("text_embed_dim", c.text_embed_dim, 0);
  f.get("num_layers", c.num_layers, 0);
  f.get("attention_bias", c.attention_bias);
  f.get("sample_width", c.sample_width, 0);
  f.get("sample_height", c.sample_height, 0);
  f.get("sample_frames", c.sample_frames, 0);
  f.get("patch_size", c.patch_size, 0);
  f.get("patch_size_t", c.patch_size_t, 0);
  f.get("temporal_compression_ratio", c.temporal_compression_ratio, 0);
  f.get("max_text_seq_length", c.max_text_seq_length, 0);
  f.get("norm_elementwise_affine", c.norm_elementwise_affine);
  f.get("norm_eps", c.norm_eps);
  f.get("spatial_interpolation_scale", c.spatial_interpolation_scale);
  f.get("temporal_interpolation_scale", c.temporal_interpolation_scale);
  f.get("use_rotary_positional_embeddings", c.use_rotary_positional_embeddings);
  f.get("use_learned_positional_embeddings", c.use_learned_positional_embeddings);
  f.get("patch_bias", c.patch_bias);
  for (const char* k : {"activation_fn"})
    if (f.has(k) && j[k] != "gelu-approximate") throw FormatError(std::string("transformer config: ") + k + " must be gelu-approximate");
  if (f.has("timestep_activation_fn") && j["timestep_activation_fn"] != "silu")
    throw FormatError("transformer config: timestep_activation_fn must be silu");
  if (!c.norm_elementwise_affine) throw FormatError("transformer config: norm_elementwise_affine false is not supported");
  if (c.num_attention_heads <= 0 || c.attention_head_dim <= 0 || c.patch_size <= 0 || c.num_layers <= 0 ||
      c.temporal_compression_ratio <= 0)
    throw FormatError("transformer config: heads, head dim, patch size, layers and compression must be positive");
  if (!c.use_rotary_positional_embeddings && c.use_learned_positional_embeddings)
    throw FormatError("transformer config: learned positional embeddings without rotary embeddings do not exist");
  if (!c.use_rotary_positional_embeddings && c.inner_dim() % 4 != 0)
    throw FormatError("transformer config: sin-cos positions need a width divisible by 4");
  if (c.ofs_embed_dim != 0 && c.ofs_embed_dim != c.time_embed_dim)
    throw FormatError("transformer config: ofs_embed_dim must equal time_embed_dim");
  return c;
}

std::pair<at::Tensor, at::Tensor> cogvideox_rotary_embeddings(const CogVideoXTransformerConfig& c, int64_t height,
                                                              int64_t width, int64_t latent_frames, int64_t vae_scale) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const int64_t p = c.patch_size;
  const int64_t gh = height / (vae_scale * p), gw = width / (vae_scale * p);
  const int64_t base_w = c.sample_width / p, base_h = c.sample_height / p;
  const int64_t D = c.attention_head_dim;
  const int64_t dim_t = D / 4, dim_h = D / 8 * 3, dim_w = D / 8 * 3;
  at::Tensor grid_h, grid_w, grid_t;
  int64_t T = latent_frames;
  if (c.patch_size_t == 0) {
    // get_resize_crop_region_for_grid((gh, gw), base_w, base_h); Python's round is half-to-even.
    const double r = double(gh) / double(gw);
    int64_t rh, rw;
    if (r > double(base_h) / double(base_w)) {
      rh = base_h;
      rw = int64_t(std::nearbyint(double(base_h) / double(gh) * double(gw)));
    } else {
      rw = base_w;
      rh = int64_t(std::nearbyint(double(base_w) / double(gw) * double(gh)));
    }
    const auto top = int64_t(std::nearbyint(double(base_h - rh) / 2.0));
    const auto left = int64_t(std::nearbyint(double(base_w - rw) / 2.0));
    grid_h = at::linspace(double(top), double(top + rh) * double(gh - 1) / double(gh), gh, f32);
    grid_w = at::linspace(double(left), double(left + rw) * double(gw - 1) / double(gw), gw, f32);
    grid_t = at::linspace(0.0, double(T) * double(T - 1) / double(T), T, f32);
  } else {
    T = (latent_frames + c.patch_size_t - 1) / c.patch_size_t;
    if (gh > base_h || gw > base_w)
      throw ShapeError("cogvideox: a " + std::to_string(height) + "x" + std::to_string(width) +
                       " video exceeds the model's RoPE grid (" + std::to_string(c.sample_height * vae_scale) + "x" +
                       std::to_string(c.sample_width * vae_scale) + ")");
    grid_h = at::arange(base_h, f32).narrow(0, 0, gh);
    grid_w = at::arange(base_w, f32).narrow(0, 0, gw);
    grid_t = at::arange(T, f32);
  }
  auto [t_cos, t_sin] = rope_1d(dim_t, grid_t);
  auto [h_cos, h_sin] = rope_1d(dim_h, grid_h);
  auto [w_cos, w_sin] = rope_1d(dim_w, grid_w);
  auto combine = [&](const at::Tensor& ft, const at::Tensor& fh, const at::Tensor& fw) {
    return at::cat({ft.unsqueeze(1).unsqueeze(1).expand({T, gh, gw, -1}), fh.unsqueeze(0).unsqueeze(2).expand({T, gh, gw, -1}),
                    fw.unsqueeze(0).unsqueeze(0).expand({T, gh, gw, -1})}, -1)
        .reshape({T * gh * gw, -1});
  };
  return {combine(t_cos, h_cos, w_cos), combine(t_sin, h_sin, w_sin)};
}

CogVideoXTransformer::CogVideoXTransformer(const CogVideoXTransformerConfig& c) : config_(c) {
  const int64_t dim = c.inner_dim();
  patch_embed_ = register_module("patch_embed", std::make_shared<CogVideoXPatchEmbed>(c));
  time_embedding_ = register_module("time_embedding", std::make_shared<CogVideoXTimeEmbed>(dim, c.time_embed_dim));
  if (c.ofs_embed_dim)
    ofs_embedding_ = register_module("ofs_embedding", std::make_shared<CogVideoXTimeEmbed>(c.ofs_embed_dim, c.ofs_embed_dim));
  auto list = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    blocks_.push_back(std::make_shared<CogVideoXBlock>(c));
    list->push_back(blocks_.back());
  }
  norm_final_ = register_module("norm_final", nn::AffineLayerNorm(dim, c.norm_eps).ptr());
  norm_out_ = register_module("norm_out", std::make_shared<CogVideoXAdaNormOut>(c.time_embed_dim, dim, c.norm_eps));
  const int64_t out = c.patch_size * c.patch_size * (c.patch_size_t ? c.patch_size_t : 1) * c.out_channels;
  proj_out_ = register_module("proj_out", nn::Linear(dim, out).ptr());
}

void CogVideoXTransformer::to_fp8(bool attention) {
  for (auto& b : blocks_) {
    b->attn1->to_fp8(attention);
    nn::linears_to_fp8(*b);
  }
}

at::Tensor CogVideoXTransformer::forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                         const at::Tensor& timestep,
                                         const std::optional<std::pair<at::Tensor, at::Tensor>>& rope,
                                         const std::optional<at::Tensor>& ofs, const ControlContext* controls) {
  const auto& c = config_;
  if (hidden_states.dim() != 5 || hidden_states.size(2) != c.in_channels)
    throw ShapeError("cogvideox transformer: latents must be [B, F, " + std::to_string(c.in_channels) + ", H, W], got " +
                     shape_string(hidden_states.sizes()));
  const int64_t B = hidden_states.size(0), F = hidden_states.size(1), H = hidden_states.size(3), W = hidden_states.size(4);
  const int64_t p = c.patch_size, pt = c.patch_size_t ? c.patch_size_t : 1;
  if (H % p || W % p || F % pt)
    throw ShapeError("cogvideox transformer: latent size " + std::to_string(F) + "x" + std::to_string(H) + "x" +
                     std::to_string(W) + " is not a multiple of the patch size");
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != c.text_embed_dim)
    throw ShapeError("cogvideox transformer: text embeddings must be [" + std::to_string(B) + ", T, " +
                     std::to_string(c.text_embed_dim) + "], got " + shape_string(encoder_hidden_states.sizes()));
  if (timestep.dim() != 1 || timestep.size(0) != B)
    throw ShapeError("cogvideox transformer: timestep must be [" + std::to_string(B) + "], got " + shape_string(timestep.sizes()));
  const int64_t n_video = (F / pt) * (H / p) * (W / p);
  std::optional<std::pair<at::Tensor, at::Tensor>> r;
  if (c.use_rotary_positional_embeddings) {
    if (!rope) throw UsageError("cogvideox transformer: this model needs rotary embeddings (cogvideox_rotary_embeddings)");
    if (rope->first.size(0) != n_video)
      throw ShapeError("cogvideox transformer: rotary embeddings for " + std::to_string(rope->first.size(0)) +
                       " tokens, but the video has " + std::to_string(n_video));
    r = std::make_pair(rope->first.to(hidden_states.device()), rope->second.to(hidden_states.device()));
  }
  const auto dtype = hidden_states.scalar_type();
  at::Tensor emb = time_embedding_->forward(timestep_embedding(timestep, c.inner_dim(), c.flip_sin_to_cos, c.freq_shift).to(dtype));
  if (ofs_embedding_) {
    if (!ofs) throw UsageError("cogvideox transformer: this model needs an ofs value");
    emb = emb + ofs_embedding_->forward(timestep_embedding(*ofs, c.ofs_embed_dim, c.flip_sin_to_cos, c.freq_shift).to(dtype));
  }
  at::Tensor h = patch_embed_->forward(encoder_hidden_states, hidden_states);
  const int64_t T = encoder_hidden_states.size(1);
  at::Tensor ctx = h.narrow(1, 0, T), x = h.narrow(1, T, h.size(1) - T);
  // Ulysses (core/parallel.h): this rank's text and video tokens (and their rotary rows); attention exchanges
  // them by heads.
  const SequenceShards shards(x.size(1), T);
  if (shards.active()) {
    ctx = shards.text(ctx);
    x = shards.image(x);
    if (r) r = std::make_pair(shards.image(r->first, 0), shards.image(r->second, 0));
  }
  AttentionDesc desc;
  desc.model = "cogvideox";
  desc.controls = controls;
  const bool fast = fused::active(h);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    // The block-level hook: skip the block (for some rows), scale the text stream entering it.
    const BlockPlan plan = block_plan(controls, int(i));
    if (plan.skip) continue;
    if (plan.text_scale != 1.0) ctx = ctx * plan.text_scale;
    desc.layer = int(i);
    auto [x_out, ctx_out] = fast ? blocks_[size_t(i)]->forward_fused(x, ctx, emb, r, desc)
                                 : blocks_[size_t(i)]->forward(x, ctx, emb, r, desc);
    x = keep_input_rows(x_out, x, plan);
    ctx = keep_input_rows(ctx_out, ctx, plan);
  }
  x = std::static_pointer_cast<nn::AffineLayerNormImpl>(norm_final_)->forward(x);
  x = norm_out_->forward(x, emb);
  x = shards.gather_image(std::static_pointer_cast<nn::LinearImpl>(proj_out_)->forward(x));
  if (c.patch_size_t == 0) {
    x = x.reshape({B, F, H / p, W / p, -1, p, p}).permute({0, 1, 4, 2, 5, 3, 6}).flatten(5, 6).flatten(3, 4);
  } else {
    x = x.reshape({B, (F + pt - 1) / pt, H / p, W / p, -1, pt, p, p})
            .permute({0, 1, 5, 4, 2, 6, 3, 7})
            .flatten(6, 7)
            .flatten(4, 5)
            .flatten(1, 2);
  }
  return x;
}

std::shared_ptr<CogVideoXTransformer> CogVideoXTransformer::load(const std::filesystem::path& dir, at::Device device,
                                                                  at::ScalarType dtype) {
  const auto j = read_json_object(dir / "config.json");
  auto config = CogVideoXTransformerConfig::from_json(j);
  auto store = WeightStore::open(dir);
  return nn::build_model<CogVideoXTransformer>(config, device, dtype, [&](CogVideoXTransformer& m) { load_module(m, store); });
}

}  // namespace mmdit
