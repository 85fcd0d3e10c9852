#include "models/flux_transformer.h"

#include <cmath>
#include <fstream>
#include <set>

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
#include "models/fast_layers.h"
#include "models/fused_ops.h"
#include "models/layers.h"

namespace mmdit {
namespace {

using nn::timestep_embedding;
using nn::TwoLinear;
using nn::AdaNormZero;
using nn::FeedForward;
using nn::modulate;
using nn::NoParams;

// torch.nn.RMSNorm(head_dim, eps=1e-6) as FluxAttention uses it (not diffusers' RMSNorm).
struct TorchRMSNorm : torch::nn::Module {
  explicit TorchRMSNorm(int64_t dim) : dim(dim) { weight = register_parameter("weight", nn::empty_param({dim}), false); }
  at::Tensor forward(const at::Tensor& x) { return at::rms_norm(x, {dim}, weight, 1e-6); }
  at::Tensor weight;
  int64_t dim;
};

// apply_rotary_emb(use_real=True, use_real_unbind_dim=-1): interleaved (real, imag) pairs, in float32.
// x [B, H, S, D]; cos, sin [S, D].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto sizes = x.sizes().vec();
  sizes.back() /= 2;
  sizes.push_back(2);
  auto parts = x.reshape(sizes).unbind(-1);
  at::Tensor rotated = at::stack({-parts[1], parts[0]}, -1).flatten(3);
  return (x.to(at::kFloat) * cos + rotated.to(at::kFloat) * sin).to(x.scalar_type());
}

// FluxAttention + FluxAttnProcessor. joint: with the context projections (double blocks); otherwise
// pre_only self-attention over the already joined sequence (single blocks: no output projection).
struct FluxAttention : torch::nn::Module {
  FluxAttention(int64_t dim, int64_t heads, int64_t head_dim, bool joint) : heads(heads), head_dim(head_dim) {
    const int64_t inner = heads * head_dim;
    norm_q = register_module("norm_q", std::make_shared<TorchRMSNorm>(head_dim));
    norm_k = register_module("norm_k", std::make_shared<TorchRMSNorm>(head_dim));
    to_q = register_module("to_q", nn::Linear(dim, inner));
    to_k = register_module("to_k", nn::Linear(dim, inner));
    to_v = register_module("to_v", nn::Linear(dim, inner));
    if (joint) {
      to_out_list = register_module("to_out", torch::nn::ModuleList());
      to_out = nn::Linear(inner, dim);
      to_out_list->push_back(to_out.ptr());
      to_out_list->push_back(std::make_shared<NoParams>());
      norm_added_q = register_module("norm_added_q", std::make_shared<TorchRMSNorm>(head_dim));
      norm_added_k = register_module("norm_added_k", std::make_shared<TorchRMSNorm>(head_dim));
      add_q_proj = register_module("add_q_proj", nn::Linear(dim, inner));
      add_k_proj = register_module("add_k_proj", nn::Linear(dim, inner));
      add_v_proj = register_module("add_v_proj", nn::Linear(dim, inner));
      to_add_out = register_module("to_add_out", nn::Linear(inner, dim));
    }
  }

  at::Tensor heads_view(const at::Tensor& x) const { return x.view({x.size(0), -1, heads, head_dim}).transpose(1, 2); }

  // Double blocks: returns {image output, text output}. Single blocks (ctx undefined): {joint output, {}}.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& ctx, const at::Tensor& cos,
                                            const at::Tensor& sin, AttentionDesc desc) {
    const int64_t batch = x.size(0);
    at::Tensor q = norm_q->forward(heads_view(to_q(x))), k = norm_k->forward(heads_view(to_k(x))), v = heads_view(to_v(x));
    int64_t n_txt = 0;
    if (ctx.defined()) {
      n_txt = ctx.size(1);
      at::Tensor cq = norm_added_q->forward(heads_view(add_q_proj(ctx)));
      at::Tensor ck = norm_added_k->forward(heads_view(add_k_proj(ctx)));
      at::Tensor cv = heads_view(add_v_proj(ctx));
      // FluxAttnProcessor concatenates [text, image].
      q = at::cat({cq, q}, 2);
      k = at::cat({ck, k}, 2);
      v = at::cat({cv, v}, 2);
    }
    q = apply_rope(q, cos, sin);
    k = apply_rope(k, cos, sin);
    desc.heads = heads;
    at::Tensor o = attention(q, k, v, desc);
    o = o.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(q.scalar_type());
    if (!ctx.defined()) return {o, at::Tensor()};
    at::Tensor txt = to_add_out(o.narrow(1, 0, n_txt).contiguous());
    at::Tensor img = to_out(o.narrow(1, n_txt, o.size(1) - n_txt).contiguous());
    return {img, txt};
  }

  // The fast path (models/fused_ops.h): one QKV GEMM per stream; QK norm and RoPE written straight into the
  // joint [text, image] buffers. Double blocks: {image output, text output}; single blocks: {attention
  // output [B, N, inner] before any projection, {}}, or with fp8 attention {its e4m3 output, its descale [1]}.
  // x may lack the last rows of ctx: rows that repeat the image rows `copies` (BlockPlan::image_copies); the image
  // output then has x's rows. xq: x already quantized for --fp8 (single blocks share it with their MLP).
  std::pair<at::Tensor, at::Tensor> forward_fused(const at::Tensor& x, const at::Tensor& ctx, const at::Tensor& cos,
                                                  const at::Tensor& sin, AttentionDesc desc,
                                                  const std::vector<int64_t>& copies = {},
                                                  const fp8::Rows* xq = nullptr) {
    qkv.fuse(to_q, to_k, to_v);
    add_qkv.fuse(add_q_proj, add_k_proj, add_v_proj);
    const int64_t own = x.size(0), batch = own + int64_t(copies.size());
    const int64_t n_txt = ctx.defined() ? ctx.size(1) : 0, n = x.size(1) + n_txt;
    fused::Qkv buf = fused::qkv_buffers(batch, n, heads, head_dim, x.options());
    if (ctx.defined())
      fused::qkv_prepare(add_qkv(ctx), norm_spec(norm_added_q, norm_added_k), cos, sin,
                         0, buf, 0);
    fused::Qkv head = fused::rows(buf, 0, own);
    fused::qkv_prepare(qkv(x, xq), norm_spec(norm_q, norm_k), cos, sin, 0, head, n_txt);
    fused::copy_image_rows(buf, n_txt, n, copies);
    desc.heads = heads;
    if (fp8_attention)
      if (auto o8 = attention_fp8(fused::heads(buf.q), fused::heads(buf.k), fused::heads(buf.v), desc)) {
        if (!ctx.defined()) return {o8->values, o8->descale};
        const at::ScalarType dtype = x.scalar_type();
        return {nn::project_fp8(to_out, o8->values.narrow(0, 0, own).narrow(1, n_txt, n - n_txt), o8->descale, dtype),
                nn::project_fp8(to_add_out, o8->values.narrow(1, 0, n_txt), o8->descale, dtype)};
      }
    at::Tensor o = attention(fused::heads(buf.q), fused::heads(buf.k), fused::heads(buf.v), desc);
    o = o.transpose(1, 2).reshape({batch, n, heads * head_dim});
    if (!ctx.defined()) return {o, at::Tensor()};
    return {to_out(o.narrow(0, 0, own).narrow(1, n_txt, n - n_txt)), to_add_out(o.narrow(1, 0, n_txt))};
  }

  // --fp8 (models/fp8.h): the fused projections as e4m3; to_out and to_add_out go with the block's other layers.
  // attention: --fp8-attention (core/attention_fp8.h) on the fast path.
  void to_fp8(bool attention) {
    qkv.to_fp8(to_q, to_k, to_v);
    add_qkv.to_fp8(add_q_proj, add_k_proj, add_v_proj);
    fp8_attention = attention;
  }

  static fused::QkNormSpec norm_spec(const std::shared_ptr<TorchRMSNorm>& nq, const std::shared_ptr<TorchRMSNorm>& nk) {
    fused::QkNormSpec s;
    s.kind = kernels::QkNorm::Rms;  // torch.nn.RMSNorm: the weight applies in float32
    s.q_w = nq->weight;
    s.k_w = nk->weight;
    return s;
  }

  int64_t heads, head_dim;
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, add_q_proj{nullptr}, add_k_proj{nullptr},
      add_v_proj{nullptr}, to_add_out{nullptr}, to_out{nullptr};
  std::shared_ptr<TorchRMSNorm> norm_q, norm_k, norm_added_q, norm_added_k;
  torch::nn::ModuleList to_out_list{nullptr};
  nn::QkvProjection qkv, add_qkv;  // the fast path's fused projections
  bool fp8_attention = false;
};

at::Tensor clip_fp16(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? x.clamp(-65504, 65504) : x;
}

}  // namespace

// CombinedTimestepTextProjEmbeddings, or CombinedTimestepGuidanceTextProjEmbeddings with a guidance embedder.
struct FluxTimeTextEmbed : torch::nn::Module {
  FluxTimeTextEmbed(int64_t dim, int64_t pooled_dim, bool guidance) {
    timestep_embedder = register_module("timestep_embedder", std::make_shared<TwoLinear>(256, dim));
    if (guidance) guidance_embedder = register_module("guidance_embedder", std::make_shared<TwoLinear>(256, dim));
    text_embedder = register_module("text_embedder", std::make_shared<TwoLinear>(pooled_dim, dim));
  }
  at::Tensor forward(const at::Tensor& timestep, const at::Tensor& guidance, const at::Tensor& pooled) {
    at::Tensor t = timestep_embedder->forward(timestep_embedding(timestep, 256).to(pooled.scalar_type()));
    if (guidance_embedder) t = t + guidance_embedder->forward(timestep_embedding(guidance, 256).to(pooled.scalar_type()));
    return t + text_embedder->forward(pooled);
  }
  std::shared_ptr<TwoLinear> timestep_embedder, guidance_embedder, text_embedder;
};

// AdaLayerNormContinuous(elementwise_affine=False, eps=1e-6): scale first, then shift.
struct FluxAdaNormContinuous : torch::nn::Module {
  explicit FluxAdaNormContinuous(int64_t dim) { linear = register_module("linear", nn::Linear(dim, 2 * dim)); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cond) {
    auto ss = linear(at::silu(cond).to(x.scalar_type())).chunk(2, 1);
    return nn::layer_norm(x, 1e-6) * (1 + ss[0]).unsqueeze(1) + ss[1].unsqueeze(1);
  }
  at::Tensor forward_fused(const at::Tensor& x, const at::Tensor& cond) {
    auto ss = linear(at::silu(cond).to(x.scalar_type())).chunk(2, 1);
    return fused::ln_modulate(x, {}, {ss[1], ss[0]}, 1e-6).second;
  }
  nn::Linear linear{nullptr};
};

// FluxTransformerBlock (double stream).
struct FluxDoubleBlock : torch::nn::Module {
  explicit FluxDoubleBlock(const FluxTransformerConfig& c) {
    const int64_t dim = c.inner_dim();
    norm1 = register_module("norm1", std::make_shared<AdaNormZero>(dim, 6));
    norm1_context = register_module("norm1_context", std::make_shared<AdaNormZero>(dim, 6));
    attn = register_module("attn", std::make_shared<FluxAttention>(dim, c.num_attention_heads, c.attention_head_dim, true));
    ff = register_module("ff", std::make_shared<FeedForward>(dim));
    ff_context = register_module("ff_context", std::make_shared<FeedForward>(dim));
  }

  // Returns {context, image}.
  std::pair<at::Tensor, at::Tensor> forward(at::Tensor x, at::Tensor ctx, const at::Tensor& temb, const at::Tensor& cos,
                                            const at::Tensor& sin, const AttentionDesc& desc) {
    auto m = norm1->forward(temb);  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    auto c = norm1_context->forward(temb);
    at::Tensor norm_x = modulate(nn::layer_norm(x, 1e-6), m[0], m[1]);
    at::Tensor norm_ctx = modulate(nn::layer_norm(ctx, 1e-6), c[0], c[1]);
    auto [attn_out, ctx_attn_out] = attn->forward(norm_x, norm_ctx, cos, sin, desc);
    x = x + m[2].unsqueeze(1) * attn_out;
    x = x + m[5].unsqueeze(1) * ff->forward(modulate(nn::layer_norm(x, 1e-6), m[3], m[4]));
    ctx = ctx + c[2].unsqueeze(1) * ctx_attn_out;
    ctx = ctx + c[5].unsqueeze(1) * ff_context->forward(modulate(nn::layer_norm(ctx, 1e-6), c[3], c[4]));
    return {clip_fp16(ctx), x};
  }

  // The same block on the fast path (models/fused_ops.h).
  // copies: BlockPlan::image_copies (the image side of those last rows is computed once, from the rows they copy).
  std::pair<at::Tensor, at::Tensor> forward_fused(const at::Tensor& x_all, const at::Tensor& ctx, const at::Tensor& temb,
                                                  const at::Tensor& cos, const at::Tensor& sin, const AttentionDesc& desc,
                                                  const std::vector<int64_t>& copies) {
    const int64_t own = x_all.size(0) - int64_t(copies.size());
    const at::Tensor x = x_all.narrow(0, 0, own);
    auto m = norm1->forward(temb.narrow(0, 0, own));
    auto c = norm1_context->forward(temb);
    const double eps = 1e-6;
    at::Tensor norm_x = fused::ln_modulate(x, {}, {m[0], m[1]}, eps).second;
    at::Tensor norm_ctx = fused::ln_modulate(ctx, {}, {c[0], c[1]}, eps).second;
    auto [attn_out, ctx_attn_out] = attn->forward_fused(norm_x, norm_ctx, cos, sin, desc, copies);
    auto [x1, norm_ff] = fused::ln_modulate(x, attn_out, {m[3], m[4], m[2]}, eps);
    auto [ctx1, norm_cff] = fused::ln_modulate(ctx, ctx_attn_out, {c[3], c[4], c[2]}, eps);
    return {clip_fp16(fused::residual(ctx1, c[5], nn::feed_forward_fused(*ff_context, norm_cff))),
            fused::with_copies(fused::residual(x1, m[5], nn::feed_forward_fused(*ff, norm_ff)), copies)};
  }

  std::shared_ptr<AdaNormZero> norm1, norm1_context;
  std::shared_ptr<FluxAttention> attn;
  std::shared_ptr<FeedForward> ff, ff_context;
};

// FluxSingleTransformerBlock: attention and MLP in parallel over the joined [text, image] sequence.
struct FluxSingleBlock : torch::nn::Module {
  explicit FluxSingleBlock(const FluxTransformerConfig& c) {
    const int64_t dim = c.inner_dim(), mlp = 4 * dim;
    norm = register_module("norm", std::make_shared<AdaNormZero>(dim, 3));
    proj_mlp = register_module("proj_mlp", nn::Linear(dim, mlp));
    proj_out = register_module("proj_out", nn::Linear(dim + mlp, dim));
    attn = register_module("attn", std::make_shared<FluxAttention>(dim, c.num_attention_heads, c.attention_head_dim, false));
  }

  // x: the joined sequence [B, T + N, dim].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb, const at::Tensor& cos, const at::Tensor& sin,
                     const AttentionDesc& desc) {
    auto m = norm->forward(temb);  // shift, scale, gate
    at::Tensor nx = modulate(nn::layer_norm(x, 1e-6), m[0], m[1]);
    at::Tensor mlp = at::gelu(proj_mlp(nx), "tanh");
    at::Tensor a = attn->forward(nx, at::Tensor(), cos, sin, desc).first;
    return clip_fp16(x + m[2].unsqueeze(1) * proj_out(at::cat({a, mlp}, 2)));
  }

  // The fast path: the MLP's GELU in its GEMM, and proj_out of [attention | MLP] as two GEMMs into one output.
  at::Tensor forward_fused(const at::Tensor& x, const at::Tensor& temb, const at::Tensor& cos, const at::Tensor& sin,
                           const AttentionDesc& desc) {
    auto m = norm->forward(temb);  // shift, scale, gate
    at::Tensor nx = fused::ln_modulate(x, {}, {m[0], m[1]}, 1e-6).second;
    if (proj_out->q.defined() && proj_mlp->q.defined() && attn->qkv.q.defined()) {
      // --fp8: nx quantized once for the MLP and the QKV GEMMs; [attention | GELU(mlp)] quantized as one row.
      const fp8::Rows nxq = fp8::quantize(nx);
      at::Tensor mlp = fp8::linear(nxq, proj_mlp->q, proj_mlp->bias, x.scalar_type());
      auto [a, a_scale] = attn->forward_fused(nx, at::Tensor(), cos, sin, desc, {}, &nxq);
      const fp8::Rows aq = a_scale.defined() ? fp8::quantize(a, a_scale, mlp, /*gelu_c=*/true)
                                             : fp8::quantize(a, mlp, /*gelu_c=*/true);
      at::Tensor y = fp8::linear(aq, proj_out->q, proj_out->bias, x.scalar_type());
      return clip_fp16(fused::residual(x, m[2], y));
    }
    at::Tensor mlp = fused::linear_gelu(nx, proj_mlp->weight, proj_mlp->bias);
    at::Tensor a = attn->forward_fused(nx, at::Tensor(), cos, sin, desc).first;
    return clip_fp16(fused::residual(x, m[2], fused::linear_of_concat(a, mlp, proj_out->weight, proj_out->bias)));
  }

  std::shared_ptr<AdaNormZero> norm;
  nn::Linear proj_mlp{nullptr}, proj_out{nullptr};
  std::shared_ptr<FluxAttention> attn;
};

FluxTransformerConfig FluxTransformerConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "transformer config");
  FluxTransformerConfig c;
  for (auto [key, field] : {std::pair{"patch_size", &c.patch_size}, {"in_channels", &c.in_channels},
                            {"num_layers", &c.num_layers}, {"num_single_layers", &c.num_single_layers},
                            {"attention_head_dim", &c.attention_head_dim}, {"num_attention_heads", &c.num_attention_heads},
                            {"joint_attention_dim", &c.joint_attention_dim},
                            {"pooled_projection_dim", &c.pooled_projection_dim}})
    f.get(key, *field);
  c.out_channels = c.in_channels;
  f.get("out_channels", c.out_channels);
  f.get("guidance_embeds", c.guidance_embeds);
  f.get("axes_dims_rope", c.axes_dims_rope);
  for (int64_t a : c.axes_dims_rope)
    if (a % 2) throw FormatError("transformer config: 'axes_dims_rope' must hold positive even integers");
  if (c.patch_size != 1) throw FormatError("transformer config: patch_size " + std::to_string(c.patch_size) + " is not supported (FLUX uses 1)");
  int64_t sum = 0;
  for (int64_t a : c.axes_dims_rope) sum += a;
  if (sum != c.attention_head_dim)
    throw FormatError("transformer config: axes_dims_rope sum to " + std::to_string(sum) + ", not attention_head_dim " +
                      std::to_string(c.attention_head_dim));
  return c;
}

FluxTransformer::FluxTransformer(const FluxTransformerConfig& c) : config_(c) {
  const int64_t dim = c.inner_dim();
  time_text_embed_ = register_module("time_text_embed", std::make_shared<FluxTimeTextEmbed>(dim, c.pooled_projection_dim, c.guidance_embeds));
  context_embedder_ = register_module("context_embedder", nn::Linear(c.joint_attention_dim, dim).ptr());
  x_embedder_ = register_module("x_embedder", nn::Linear(c.in_channels, dim).ptr());
  auto list = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    blocks_.push_back(std::make_shared<FluxDoubleBlock>(c));
    list->push_back(blocks_.back());
  }
  auto single = register_module("single_transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_single_layers; ++i) {
    single_blocks_.push_back(std::make_shared<FluxSingleBlock>(c));
    single->push_back(single_blocks_.back());
  }
  norm_out_ = register_module("norm_out", std::make_shared<FluxAdaNormContinuous>(dim));
  proj_out_ = register_module("proj_out", nn::Linear(dim, c.patch_size * c.patch_size * c.out_channels).ptr());
}

void FluxTransformer::to_fp8(bool attention) {
  for (auto& b : blocks_) {
    b->attn->to_fp8(attention);
    nn::linears_to_fp8(*b);
  }
  for (auto& b : single_blocks_) {
    b->attn->to_fp8(attention);
    nn::linears_to_fp8(*b);
  }
}

std::pair<at::Tensor, at::Tensor> FluxTransformer::rotary(const at::Tensor& ids) const {
  // get_1d_rotary_pos_embed(dim, pos, theta=10000, use_real=True, repeat_interleave_real=True, float64).
  at::Tensor pos = ids.to(at::kFloat);
  std::vector<at::Tensor> cos, sin;
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(ids.device());
  for (size_t i = 0; i < config_.axes_dims_rope.size(); ++i) {
    const int64_t d = config_.axes_dims_rope[i];
    at::Tensor freqs = 1.0 / at::pow(10000.0, at::arange(0, d, 2, f64) / double(d));
    at::Tensor f = at::outer(pos.select(1, int64_t(i)).to(at::kDouble), freqs);
    cos.push_back(f.cos().repeat_interleave(2, 1).to(at::kFloat));
    sin.push_back(f.sin().repeat_interleave(2, 1).to(at::kFloat));
  }
  return {at::cat(cos, -1), at::cat(sin, -1)};
}

at::Tensor FluxTransformer::forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                    const at::Tensor& pooled, const at::Tensor& timestep, const at::Tensor& img_ids,
                                    const at::Tensor& txt_ids, const at::Tensor& guidance,
                                    const ControlContext* controls) {
  const auto& c = config_;
  if (hidden_states.dim() != 3 || hidden_states.size(2) != c.in_channels)
    throw ShapeError("flux transformer: packed latents must be [B, N, " + std::to_string(c.in_channels) + "], got " +
                     shape_string(hidden_states.sizes()));
  const int64_t batch = hidden_states.size(0), n_img = hidden_states.size(1);
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != c.joint_attention_dim)
    throw ShapeError("flux transformer: text embeddings must be [" + std::to_string(batch) + ", T, " +
                     std::to_string(c.joint_attention_dim) + "], got " + shape_string(encoder_hidden_states.sizes()));
  const int64_t n_txt = encoder_hidden_states.size(1);
  if (pooled.dim() != 2 || pooled.size(0) != batch || pooled.size(1) != c.pooled_projection_dim)
    throw ShapeError("flux transformer: pooled embeddings must be [" + std::to_string(batch) + ", " +
                     std::to_string(c.pooled_projection_dim) + "], got " + shape_string(pooled.sizes()));
  if (timestep.dim() != 1 || timestep.size(0) != batch)
    throw ShapeError("flux transformer: timestep must be [" + std::to_string(batch) + "], got " + shape_string(timestep.sizes()));
  const int64_t axes = int64_t(c.axes_dims_rope.size());
  if (img_ids.dim() != 2 || img_ids.size(0) != n_img || img_ids.size(1) != axes)
    throw ShapeError("flux transformer: img_ids must be [" + std::to_string(n_img) + ", " + std::to_string(axes) +
                     "], got " + shape_string(img_ids.sizes()));
  if (txt_ids.dim() != 2 || txt_ids.size(0) != n_txt || txt_ids.size(1) != axes)
    throw ShapeError("flux transformer: txt_ids must be [" + std::to_string(n_txt) + ", " + std::to_string(axes) +
                     "], got " + shape_string(txt_ids.sizes()));
  if (c.guidance_embeds && (!guidance.defined() || guidance.dim() != 1 || guidance.size(0) != batch))
    throw ShapeError("flux transformer: this model embeds the guidance scale: guidance must be [" + std::to_string(batch) + "]");

  at::Tensor x = std::static_pointer_cast<nn::LinearImpl>(x_embedder_)->forward(hidden_states);
  const auto dtype = x.scalar_type();
  // diffusers: timestep.to(hidden_states.dtype) * 1000 (rounded to the model dtype first), same for guidance.
  at::Tensor t = timestep.to(dtype) * 1000;
  at::Tensor g = c.guidance_embeds ? guidance.to(dtype) * 1000 : at::Tensor();
  at::Tensor temb = time_text_embed_->forward(t, g, pooled);
  at::Tensor ctx = std::static_pointer_cast<nn::LinearImpl>(context_embedder_)->forward(encoder_hidden_states);
  auto [cos, sin] = rotary(at::cat({txt_ids, img_ids}, 0));
  // Ulysses (core/parallel.h): this rank's text and image tokens (and their rotary rows); attention exchanges
  // them by heads. The counts below are this rank's.
  const SequenceShards shards(n_img, n_txt);
  if (shards.active()) {
    auto rows = [&](const at::Tensor& t) {
      return at::cat({shards.text(t.narrow(0, 0, n_txt), 0), shards.image(t.narrow(0, n_txt, n_img), 0)}, 0);
    };
    cos = rows(cos);
    sin = rows(sin);
    x = shards.image(x);
    ctx = shards.text(ctx);
  }
  const int64_t t_local = ctx.size(1), i_local = x.size(1);

  AttentionDesc desc;
  desc.model = "flux";
  desc.controls = controls;
  desc.text = {0, t_local};
  desc.image = {t_local, t_local + i_local};
  const bool fast = fused::active(x);
  // The block-level hook at every block (double blocks are layers 0.., single blocks continue the count).
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const BlockPlan plan = block_plan(controls, int(i));
    if (plan.skip) continue;
    if (plan.text_scale != 1.0) ctx = ctx * plan.text_scale;
    desc.layer = int(i);
    auto [ctx_out, x_out] = fast ? blocks_[i]->forward_fused(x, ctx, temb, cos, sin, desc, plan.image_copies)
                                 : blocks_[i]->forward(x, ctx, temb, cos, sin, desc);
    x = keep_input_rows(x_out, x, plan);
    ctx = keep_input_rows(ctx_out, ctx, plan);
  }
  at::Tensor joint = at::cat({ctx, x}, 1);
  for (int64_t i = 0; i < c.num_single_layers; ++i) {
    const BlockPlan plan = block_plan(controls, int(c.num_layers + i));
    if (plan.skip) continue;
    if (plan.text_scale != 1.0)
      joint = at::cat({joint.narrow(1, 0, t_local) * plan.text_scale, joint.narrow(1, t_local, i_local)}, 1);
    desc.layer = int(c.num_layers + i);
    at::Tensor out = fast ? single_blocks_[i]->forward_fused(joint, temb, cos, sin, desc)
                          : single_blocks_[i]->forward(joint, temb, cos, sin, desc);
    joint = keep_input_rows(out, joint, plan);
  }
  x = joint.narrow(1, t_local, i_local);
  x = fast ? norm_out_->forward_fused(x.contiguous(), temb) : norm_out_->forward(x, temb);
  return shards.gather_image(std::static_pointer_cast<nn::LinearImpl>(proj_out_)->forward(x));
}

// --- latent layout ------------------------------------------------------------------------------------

at::Tensor flux_pack_latents(const at::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(2) % 2 || latents.size(3) % 2)
    throw ShapeError("flux: latents to pack must be [B, C, H, W] with even H, W, got " + shape_string(latents.sizes()));
  const int64_t b = latents.size(0), ch = latents.size(1), h = latents.size(2), w = latents.size(3);
  return latents.view({b, ch, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, (h / 2) * (w / 2), ch * 4});
}

at::Tensor flux_unpack_latents(const at::Tensor& packed, int64_t h, int64_t w) {
  if (packed.dim() != 3 || h % 2 || w % 2 || packed.size(1) != (h / 2) * (w / 2) || packed.size(2) % 4)
    throw ShapeError("flux: packed latents " + shape_string(packed.sizes()) + " do not unpack to " + std::to_string(h) +
                     "x" + std::to_string(w));
  const int64_t b = packed.size(0), ch = packed.size(2) / 4;
  return packed.view({b, h / 2, w / 2, ch, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({b, ch, h, w});
}

at::Tensor flux_image_ids(int64_t h, int64_t w, const at::TensorOptions& options) {
  at::Tensor ids = at::zeros({h, w, 3});
  ids.select(2, 1).add_(at::arange(h, at::kFloat).unsqueeze(1));
  ids.select(2, 2).add_(at::arange(w, at::kFloat).unsqueeze(0));
  return ids.reshape({h * w, 3}).to(options);
}

at::Tensor flux_text_ids(int64_t tokens, const at::TensorOptions& options) { return at::zeros({tokens, 3}, options); }

// --- loading --------------------------------------------------------------------------------------------

namespace {

const char* kBflPrefix = "model.diffusion_model.";

WeightStore bfl_view(const WeightStore& store) {
  for (const auto& n : store.names())
    if (n.rfind(kBflPrefix, 0) == 0) return store.with_prefix(kBflPrefix);
  return store;
}

}  // namespace

std::shared_ptr<FluxTransformer> FluxTransformer::load(const std::filesystem::path& component_dir, at::Device device,
                                                       at::ScalarType dtype) {
  auto config = FluxTransformerConfig::from_json(read_json_object(component_dir / "config.json"));
  auto store = WeightStore::open(component_dir);
  return nn::build_model<FluxTransformer>(config, device, dtype, [&](FluxTransformer& m) { load_module(m, store); });
}

std::vector<RenameRule> flux_single_file_rules(int64_t inner_dim, int64_t mlp_hidden_dim) {
  const std::string D = R"(double_blocks\.(\d+)\.)", T = "transformer_blocks.$1.";
  const std::string S = R"(single_blocks\.(\d+)\.)", U = "single_transformer_blocks.$1.";
  const std::string W = R"((weight|bias))";
  auto mlp = [](const std::string& from, const std::string& to) -> std::vector<RenameRule> {
    const std::string W = R"((weight|bias))";
    return {{from + R"(\.in_layer\.)" + W, {to + ".linear_1.$1"}}, {from + R"(\.out_layer\.)" + W, {to + ".linear_2.$1"}}};
  };
  std::vector<RenameRule> rules;
  for (auto& r : mlp("time_in", "time_text_embed.timestep_embedder")) rules.push_back(r);
  for (auto& r : mlp("vector_in", "time_text_embed.text_embedder")) rules.push_back(r);
  for (auto& r : mlp("guidance_in", "time_text_embed.guidance_embedder")) rules.push_back(r);
  std::vector<RenameRule> rest = {
      {R"(txt_in\.)" + W, {"context_embedder.$1"}},
      {R"(img_in\.)" + W, {"x_embedder.$1"}},
      {D + R"(img_mod\.lin\.)" + W, {T + "norm1.linear.$2"}},
      {D + R"(txt_mod\.lin\.)" + W, {T + "norm1_context.linear.$2"}},
      {D + R"(img_attn\.qkv\.)" + W, {T + "attn.to_q.$2", T + "attn.to_k.$2", T + "attn.to_v.$2"}},
      {D + R"(txt_attn\.qkv\.)" + W, {T + "attn.add_q_proj.$2", T + "attn.add_k_proj.$2", T + "attn.add_v_proj.$2"}},
      {D + R"(img_attn\.norm\.query_norm\.scale)", {T + "attn.norm_q.weight"}},
      {D + R"(img_attn\.norm\.key_norm\.scale)", {T + "attn.norm_k.weight"}},
      {D + R"(txt_attn\.norm\.query_norm\.scale)", {T + "attn.norm_added_q.weight"}},
      {D + R"(txt_attn\.norm\.key_norm\.scale)", {T + "attn.norm_added_k.weight"}},
      {D + R"(img_mlp\.0\.)" + W, {T + "ff.net.0.proj.$2"}},
      {D + R"(img_mlp\.2\.)" + W, {T + "ff.net.2.$2"}},
      {D + R"(txt_mlp\.0\.)" + W, {T + "ff_context.net.0.proj.$2"}},
      {D + R"(txt_mlp\.2\.)" + W, {T + "ff_context.net.2.$2"}},
      {D + R"(img_attn\.proj\.)" + W, {T + "attn.to_out.0.$2"}},
      {D + R"(txt_attn\.proj\.)" + W, {T + "attn.to_add_out.$2"}},
      {S + R"(modulation\.lin\.)" + W, {U + "norm.linear.$2"}},
      {S + R"(linear1\.)" + W,
       {U + "attn.to_q.$2", U + "attn.to_k.$2", U + "attn.to_v.$2", U + "proj_mlp.$2"},
       Transform::Copy,
       {inner_dim, inner_dim, inner_dim, mlp_hidden_dim}},
      {S + R"(norm\.query_norm\.scale)", {U + "attn.norm_q.weight"}},
      {S + R"(norm\.key_norm\.scale)", {U + "attn.norm_k.weight"}},
      {S + R"(linear2\.)" + W, {U + "proj_out.$2"}},
      {R"(final_layer\.linear\.)" + W, {"proj_out.$1"}},
      // AdaLayerNormContinuous: (shift, scale) in BFL, (scale, shift) in diffusers.
      {R"(final_layer\.adaLN_modulation\.1\.)" + W, {"norm_out.linear.$1"}, Transform::SwapHalves},
  };
  rules.insert(rules.end(), rest.begin(), rest.end());
  return rules;
}

FluxTransformerConfig infer_flux_config(const WeightStore& full) {
  WeightStore store = bfl_view(full);
  auto shape = [&](const std::string& name) -> std::vector<int64_t> {
    const TensorInfo* info = store.info(name);
    if (!info) throw FormatError("not a FLUX single-file checkpoint: no tensor '" + name + "'");
    return info->shape;
  };
  FluxTransformerConfig c;
  auto img = shape("img_in.weight"), txt = shape("txt_in.weight"), vec = shape("vector_in.in_layer.weight");
  auto qn = shape("double_blocks.0.img_attn.norm.query_norm.scale"), fl = shape("final_layer.linear.weight");
  if (img.size() != 2 || txt.size() != 2 || vec.size() != 2 || qn.size() != 1 || fl.size() != 2)
    throw FormatError("FLUX single-file checkpoint: unexpected embedding tensor ranks");
  const int64_t dim = img[0], head = qn[0];
  c.in_channels = img[1];
  c.out_channels = fl[0];
  c.joint_attention_dim = txt[1];
  c.pooled_projection_dim = vec[1];
  if (head <= 0 || dim % head)
    throw ShapeError("FLUX single-file checkpoint: hidden size " + std::to_string(dim) + " is not a multiple of head dim " +
                     std::to_string(head));
  c.attention_head_dim = head;
  c.num_attention_heads = dim / head;
  if (head % 32)
    throw ShapeError("FLUX single-file checkpoint: head dim " + std::to_string(head) +
                     " is not a multiple of 32, so the rotary axes cannot be inferred");
  c.axes_dims_rope = {head / 8, 7 * head / 16, 7 * head / 16};
  std::set<int64_t> dbl, sgl;
  auto index = [](const std::string& n, size_t at) { return std::stoll(n.substr(at, n.find('.', at) - at)); };
  for (const auto& n : store.names()) {
    if (n.rfind("double_blocks.", 0) == 0) dbl.insert(index(n, 14));
    if (n.rfind("single_blocks.", 0) == 0) sgl.insert(index(n, 14));
    if (n.rfind("guidance_in.", 0) == 0) c.guidance_embeds = true;
  }
  if (dbl.empty()) throw FormatError("not a FLUX single-file checkpoint: no double_blocks");
  c.num_layers = *dbl.rbegin() + 1;
  c.num_single_layers = sgl.empty() ? 0 : *sgl.rbegin() + 1;
  return c;
}

std::shared_ptr<FluxTransformer> load_flux_single_file(const WeightStore& store, const FluxTransformerConfig& config,
                                                       at::Device device, at::ScalarType dtype) {
  // Whole-pipeline files (ComfyUI) also hold the VAE and text encoders: keep only the diffusion model.
  TensorMap tensors = convert_weights(bfl_view(store), flux_single_file_rules(config.inner_dim(), 4 * config.inner_dim()));
  return nn::build_model<FluxTransformer>(config, device, dtype, [&](FluxTransformer& m) { load_module(m, tensors); });
}

}  // namespace mmdit
