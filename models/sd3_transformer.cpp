#include "models/sd3_transformer.h"

#include <cmath>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "controls/control.h"
#include "core/attention.h"
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

// diffusers Attention with JointAttnProcessor2_0 (joint: image + context projections) or, without
// added projections, plain self-attention (attn2 of SD3.5-medium's dual-attention blocks).
struct SD3Attention : torch::nn::Module {
  SD3Attention(int64_t dim, int64_t heads, int64_t head_dim, bool joint, bool context_pre_only, bool qk_rms)
      : heads(heads), head_dim(head_dim) {
    const int64_t inner = heads * head_dim;
    to_q = register_module("to_q", nn::Linear(dim, inner));
    to_k = register_module("to_k", nn::Linear(dim, inner));
    to_v = register_module("to_v", nn::Linear(dim, inner));
    if (qk_rms) {
      norm_q = register_module("norm_q", nn::RMSNorm(head_dim, 1e-6));
      norm_k = register_module("norm_k", nn::RMSNorm(head_dim, 1e-6));
    }
    if (joint) {
      add_q_proj = register_module("add_q_proj", nn::Linear(dim, inner));
      add_k_proj = register_module("add_k_proj", nn::Linear(dim, inner));
      add_v_proj = register_module("add_v_proj", nn::Linear(dim, inner));
      if (qk_rms) {
        norm_added_q = register_module("norm_added_q", nn::RMSNorm(head_dim, 1e-6));
        norm_added_k = register_module("norm_added_k", nn::RMSNorm(head_dim, 1e-6));
      }
      if (!context_pre_only) to_add_out = register_module("to_add_out", nn::Linear(inner, dim));
    }
    to_out_list = register_module("to_out", torch::nn::ModuleList());
    to_out = nn::Linear(inner, dim);
    to_out_list->push_back(to_out.ptr());
  }

  at::Tensor heads_view(const at::Tensor& x) const {
    return x.view({x.size(0), -1, heads, head_dim}).transpose(1, 2);
  }

  // Returns {image output, context output (undefined without context or when context_pre_only)}.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& ctx, AttentionDesc desc) {
    const int64_t batch = x.size(0), n_img = x.size(1);
    at::Tensor q = heads_view(to_q(x)), k = heads_view(to_k(x)), v = heads_view(to_v(x));
    if (!norm_q.is_empty()) q = norm_q(q);
    if (!norm_k.is_empty()) k = norm_k(k);
    int64_t n_txt = 0;
    if (ctx.defined()) {
      n_txt = ctx.size(1);
      at::Tensor cq = heads_view(add_q_proj(ctx)), ck = heads_view(add_k_proj(ctx)), cv = heads_view(add_v_proj(ctx));
      if (!norm_added_q.is_empty()) cq = norm_added_q(cq);
      if (!norm_added_k.is_empty()) ck = norm_added_k(ck);
      // JointAttnProcessor2_0 concatenates [image, text].
      q = at::cat({q, cq}, 2);
      k = at::cat({k, ck}, 2);
      v = at::cat({v, cv}, 2);
    }
    desc.heads = heads;
    desc.image = {0, n_img};
    desc.text = {n_img, n_img + n_txt};
    at::Tensor o = attention(q, k, v, desc);
    o = o.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(q.scalar_type());
    at::Tensor img = o.narrow(1, 0, n_img), txt;
    if (ctx.defined() && !to_add_out.is_empty()) txt = to_add_out(o.narrow(1, n_img, n_txt));
    return {to_out(img), txt};
  }

  // The fast path (models/fused_ops.h): one QKV GEMM per stream, QK norm written straight into the joint
  // [image, text] buffers, the same attention call. x may lack the last rows of ctx: rows that repeat the image
  // rows `copies` (BlockPlan::image_copies); the image output then has x's rows.
  std::pair<at::Tensor, at::Tensor> forward_fused(const at::Tensor& x, const at::Tensor& ctx, AttentionDesc desc,
                                                  const std::vector<int64_t>& copies = {}) {
    qkv.fuse(to_q, to_k, to_v);
    add_qkv.fuse(add_q_proj, add_k_proj, add_v_proj);
    const int64_t own = x.size(0), batch = own + int64_t(copies.size()), n_img = x.size(1);
    const int64_t n_txt = ctx.defined() ? ctx.size(1) : 0;
    fused::Qkv buf = fused::qkv_buffers(batch, n_img + n_txt, heads, head_dim, x.options());
    fused::Qkv head = fused::rows(buf, 0, own);
    fused::qkv_prepare(qkv(x), norm_spec(norm_q, norm_k), {}, {}, 0, head, 0);
    fused::copy_image_rows(buf, 0, n_img, copies);
    if (ctx.defined())
      fused::qkv_prepare(add_qkv(ctx), norm_spec(norm_added_q, norm_added_k), {}, {},
                         0, buf, n_img);
    desc.heads = heads;
    desc.image = {0, n_img};
    desc.text = {n_img, n_img + n_txt};
    at::Tensor o = attention(fused::heads(buf.q), fused::heads(buf.k), fused::heads(buf.v), desc);
    o = o.transpose(1, 2).reshape({batch, -1, heads * head_dim});
    at::Tensor txt;
    if (ctx.defined() && !to_add_out.is_empty()) txt = to_add_out(o.narrow(1, n_img, n_txt));
    return {to_out(o.narrow(0, 0, own).narrow(1, 0, n_img)), txt};
  }

  // --fp8 (models/fp8.h): the fused projections as e4m3; to_out and to_add_out go with the block's other layers.
  void to_fp8() {
    qkv.to_fp8(to_q, to_k, to_v);
    add_qkv.to_fp8(add_q_proj, add_k_proj, add_v_proj);
  }

  static fused::QkNormSpec norm_spec(const nn::RMSNorm& nq, const nn::RMSNorm& nk) {
    fused::QkNormSpec s;
    if (nq.is_empty()) return s;
    s.kind = kernels::QkNorm::Rms;
    s.rms_round = true;  // diffusers' RMSNorm
    s.q_w = nq->weight;
    s.k_w = nk->weight;
    s.eps = nq->eps;
    return s;
  }

  int64_t heads, head_dim;
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, add_q_proj{nullptr}, add_k_proj{nullptr},
      add_v_proj{nullptr}, to_add_out{nullptr}, to_out{nullptr};
  nn::RMSNorm norm_q{nullptr}, norm_k{nullptr}, norm_added_q{nullptr}, norm_added_k{nullptr};
  torch::nn::ModuleList to_out_list{nullptr};
  nn::QkvProjection qkv, add_qkv;  // the fast path's fused projections
};

}  // namespace

// PatchEmbed with pos_embed_max_size: conv patchify + center-cropped sin-cos table (a checkpoint buffer).
struct SD3PatchEmbed : torch::nn::Module {
  SD3PatchEmbed(int64_t in_channels, int64_t dim, int64_t patch, int64_t max_size) : patch(patch), max_size(max_size) {
    proj = register_module("proj", nn::Conv2d(in_channels, dim, patch, patch));
    pos_embed = register_buffer("pos_embed", nn::empty_param({1, max_size * max_size, dim}));
  }
  at::Tensor forward(const at::Tensor& latent) {
    const int64_t h = latent.size(2) / patch, w = latent.size(3) / patch;
    at::Tensor x = proj(latent).flatten(2).transpose(1, 2);
    const int64_t top = (max_size - h) / 2, left = (max_size - w) / 2;
    at::Tensor pe = pos_embed.reshape({1, max_size, max_size, -1})
                        .narrow(1, top, h)
                        .narrow(2, left, w)
                        .reshape({1, h * w, pos_embed.size(-1)});
    return (x + pe).to(x.scalar_type());
  }
  nn::Conv2d proj{nullptr};
  at::Tensor pos_embed;
  int64_t patch, max_size;
};

// CombinedTimestepTextProjEmbeddings.
struct SD3TimeTextEmbed : torch::nn::Module {
  SD3TimeTextEmbed(int64_t dim, int64_t pooled_dim) {
    timestep_embedder = register_module("timestep_embedder", std::make_shared<TwoLinear>(256, dim));
    text_embedder = register_module("text_embedder", std::make_shared<TwoLinear>(pooled_dim, dim));
  }
  at::Tensor forward(const at::Tensor& timestep, const at::Tensor& pooled) {
    at::Tensor t = timestep_embedder->forward(timestep_embedding(timestep, 256).to(pooled.scalar_type()));
    return t + text_embedder->forward(pooled);
  }
  std::shared_ptr<TwoLinear> timestep_embedder, text_embedder;
};

// AdaLayerNormContinuous(elementwise_affine=False, eps=1e-6): scale first, then shift.
struct SD3AdaNormContinuous : torch::nn::Module {
  explicit SD3AdaNormContinuous(int64_t dim) { linear = register_module("linear", nn::Linear(dim, 2 * dim)); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cond) {
    auto ss = linear(at::silu(cond).to(x.scalar_type())).chunk(2, 1);
    return nn::layer_norm(x, 1e-6) * (1 + ss[0]).unsqueeze(1) + ss[1].unsqueeze(1);
  }
  // Fast path: one pass over x.
  at::Tensor forward_fused(const at::Tensor& x, const at::Tensor& cond) {
    auto ss = linear(at::silu(cond).to(x.scalar_type())).chunk(2, 1);
    return fused::ln_modulate(x, {}, {ss[1], ss[0]}, 1e-6).second;
  }
  nn::Linear linear{nullptr};
};

// JointTransformerBlock.
struct SD3JointBlock : torch::nn::Module {
  SD3JointBlock(const SD3TransformerConfig& c, bool context_pre_only, bool dual)
      : context_pre_only(context_pre_only), dual(dual) {
    const int64_t dim = c.inner_dim();
    const bool qk = !c.qk_norm.empty();
    norm1 = register_module("norm1", std::make_shared<AdaNormZero>(dim, dual ? 9 : 6));
    if (context_pre_only)
      norm1_context_cont = register_module("norm1_context", std::make_shared<SD3AdaNormContinuous>(dim));
    else
      norm1_context = register_module("norm1_context", std::make_shared<AdaNormZero>(dim, 6));
    attn = register_module("attn", std::make_shared<SD3Attention>(dim, c.num_attention_heads, c.attention_head_dim,
                                                                  /*joint=*/true, context_pre_only, qk));
    if (dual)
      attn2 = register_module("attn2", std::make_shared<SD3Attention>(dim, c.num_attention_heads, c.attention_head_dim,
                                                                      /*joint=*/false, false, qk));
    ff = register_module("ff", std::make_shared<FeedForward>(dim));
    if (!context_pre_only) ff_context = register_module("ff_context", std::make_shared<FeedForward>(dim));
  }

  // Returns {context (undefined after a context_pre_only block), image}.
  std::pair<at::Tensor, at::Tensor> forward(at::Tensor x, at::Tensor ctx, const at::Tensor& temb, const AttentionDesc& desc) {
    auto m = norm1->forward(temb);  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift2, scale2, gate2]
    at::Tensor xn = nn::layer_norm(x, 1e-6);
    at::Tensor norm_x = modulate(xn, m[0], m[1]);
    at::Tensor norm_ctx;
    std::vector<at::Tensor> c;
    if (context_pre_only) {
      norm_ctx = norm1_context_cont->forward(ctx, temb);
    } else {
      c = norm1_context->forward(temb);
      norm_ctx = modulate(nn::layer_norm(ctx, 1e-6), c[0], c[1]);
    }
    auto [attn_out, ctx_attn_out] = attn->forward(norm_x, norm_ctx, desc);
    x = x + m[2].unsqueeze(1) * attn_out;
    if (dual) {
      at::Tensor norm_x2 = modulate(xn, m[6], m[7]);
      AttentionDesc desc2 = desc;
      desc2.sub = 1;
      x = x + m[8].unsqueeze(1) * attn2->forward(norm_x2, at::Tensor(), desc2).first;
    }
    x = x + m[5].unsqueeze(1) * ff->forward(modulate(nn::layer_norm(x, 1e-6), m[3], m[4]));
    if (context_pre_only) return {at::Tensor(), x};
    ctx = ctx + c[2].unsqueeze(1) * ctx_attn_out;
    ctx = ctx + c[5].unsqueeze(1) * ff_context->forward(modulate(nn::layer_norm(ctx, 1e-6), c[3], c[4]));
    return {ctx, x};
  }

  // The same block on the fast path (models/fused_ops.h): norm + modulation in one pass, the residual
  // fused into the next norm, GELU in the GEMM.
  // copies: BlockPlan::image_copies (the image side of those last rows is computed once, from the rows they copy).
  std::pair<at::Tensor, at::Tensor> forward_fused(const at::Tensor& x_all, const at::Tensor& ctx, const at::Tensor& temb,
                                                  const AttentionDesc& desc, const std::vector<int64_t>& copies) {
    const int64_t own = x_all.size(0) - int64_t(copies.size());
    const at::Tensor x = x_all.narrow(0, 0, own);
    auto m = norm1->forward(temb.narrow(0, 0, own));  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift2, scale2, gate2]
    const double eps = 1e-6;
    at::Tensor norm_x = fused::ln_modulate(x, {}, {m[0], m[1]}, eps).second;
    std::vector<at::Tensor> c;
    at::Tensor norm_ctx;
    if (context_pre_only) {
      norm_ctx = norm1_context_cont->forward_fused(ctx, temb);
    } else {
      c = norm1_context->forward(temb);
      norm_ctx = fused::ln_modulate(ctx, {}, {c[0], c[1]}, eps).second;
    }
    auto [attn_out, ctx_attn_out] = attn->forward_fused(norm_x, norm_ctx, desc, copies);
    at::Tensor x1, norm_ff;
    if (dual) {
      at::Tensor norm_x2 = fused::ln_modulate(x, {}, {m[6], m[7]}, eps).second;
      AttentionDesc desc2 = desc;
      desc2.sub = 1;
      at::Tensor xa = fused::residual(x, m[2], attn_out);
      std::tie(x1, norm_ff) = fused::ln_modulate(xa, attn2->forward_fused(norm_x2, at::Tensor(), desc2).first,
                                                 {m[3], m[4], m[8]}, eps);
    } else {
      std::tie(x1, norm_ff) = fused::ln_modulate(x, attn_out, {m[3], m[4], m[2]}, eps);
    }
    at::Tensor x_out = fused::with_copies(fused::residual(x1, m[5], nn::feed_forward_fused(*ff, norm_ff)), copies);
    if (context_pre_only) return {at::Tensor(), x_out};
    auto [ctx1, norm_cff] = fused::ln_modulate(ctx, ctx_attn_out, {c[3], c[4], c[2]}, eps);
    return {fused::residual(ctx1, c[5], nn::feed_forward_fused(*ff_context, norm_cff)), x_out};
  }

  bool context_pre_only, dual;
  std::shared_ptr<AdaNormZero> norm1, norm1_context;
  std::shared_ptr<SD3AdaNormContinuous> norm1_context_cont;
  std::shared_ptr<SD3Attention> attn, attn2;
  std::shared_ptr<FeedForward> ff, ff_context;
};

SD3TransformerConfig SD3TransformerConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "transformer config");
  SD3TransformerConfig c;
  for (auto [key, field] : {std::pair{"sample_size", &c.sample_size}, {"patch_size", &c.patch_size},
                            {"in_channels", &c.in_channels}, {"num_layers", &c.num_layers},
                            {"attention_head_dim", &c.attention_head_dim}, {"num_attention_heads", &c.num_attention_heads},
                            {"joint_attention_dim", &c.joint_attention_dim},
                            {"caption_projection_dim", &c.caption_projection_dim},
                            {"pooled_projection_dim", &c.pooled_projection_dim}})
    f.get(key, *field);
  c.out_channels = c.in_channels;
  f.get("out_channels", c.out_channels);
  if (j.contains("pos_embed_max_size") && j["pos_embed_max_size"].is_null())
    throw FormatError("transformer config: pos_embed_max_size null (uncropped position embeddings) is not supported");
  f.get("pos_embed_max_size", c.pos_embed_max_size);
  f.get("dual_attention_layers", c.dual_attention_layers, 0);
  f.get("qk_norm", c.qk_norm, {"rms_norm"});
  if (c.caption_projection_dim != c.inner_dim())
    throw FormatError("transformer config: caption_projection_dim " + std::to_string(c.caption_projection_dim) +
                      " differs from num_attention_heads * attention_head_dim = " + std::to_string(c.inner_dim()));
  return c;
}

SD3Transformer::SD3Transformer(const SD3TransformerConfig& c) : config_(c) {
  const int64_t dim = c.inner_dim();
  pos_embed_ = register_module("pos_embed", std::make_shared<SD3PatchEmbed>(c.in_channels, dim, c.patch_size, c.pos_embed_max_size));
  time_text_embed_ = register_module("time_text_embed", std::make_shared<SD3TimeTextEmbed>(dim, c.pooled_projection_dim));
  context_embedder_ = register_module("context_embedder", nn::Linear(c.joint_attention_dim, c.caption_projection_dim).ptr());
  auto list = register_module("transformer_blocks", torch::nn::ModuleList());
  std::set<int64_t> dual(c.dual_attention_layers.begin(), c.dual_attention_layers.end());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    blocks_.push_back(std::make_shared<SD3JointBlock>(c, i == c.num_layers - 1, dual.count(i) != 0));
    list->push_back(blocks_.back());
  }
  norm_out_ = register_module("norm_out", std::make_shared<SD3AdaNormContinuous>(dim));
  proj_out_ = register_module("proj_out", nn::Linear(dim, c.patch_size * c.patch_size * c.out_channels).ptr());
}

void SD3Transformer::to_fp8() {
  for (auto& b : blocks_) {
    b->attn->to_fp8();
    if (b->attn2) b->attn2->to_fp8();
    nn::linears_to_fp8(*b);
  }
}

at::Tensor SD3Transformer::forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                   const at::Tensor& pooled, const at::Tensor& timestep,
                                   const ControlContext* controls) {
  const auto& c = config_;
  if (hidden_states.dim() != 4 || hidden_states.size(1) != c.in_channels)
    throw ShapeError("sd3 transformer: latents must be [B, " + std::to_string(c.in_channels) + ", H, W], got " +
                     shape_string(hidden_states.sizes()));
  const int64_t batch = hidden_states.size(0), H = hidden_states.size(2), W = hidden_states.size(3), p = c.patch_size;
  if (H % p || W % p)
    throw ShapeError("sd3 transformer: latent size " + std::to_string(H) + "x" + std::to_string(W) +
                     " is not a multiple of the patch size " + std::to_string(p));
  if (H / p > c.pos_embed_max_size || W / p > c.pos_embed_max_size)
    throw ShapeError("sd3 transformer: latent size " + std::to_string(H) + "x" + std::to_string(W) + " exceeds " +
                     std::to_string(c.pos_embed_max_size * p) + " (pos_embed_max_size " +
                     std::to_string(c.pos_embed_max_size) + " patches)");
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != c.joint_attention_dim)
    throw ShapeError("sd3 transformer: text embeddings must be [" + std::to_string(batch) + ", T, " +
                     std::to_string(c.joint_attention_dim) + "], got " + shape_string(encoder_hidden_states.sizes()));
  if (pooled.dim() != 2 || pooled.size(0) != batch || pooled.size(1) != c.pooled_projection_dim)
    throw ShapeError("sd3 transformer: pooled embeddings must be [" + std::to_string(batch) + ", " +
                     std::to_string(c.pooled_projection_dim) + "], got " + shape_string(pooled.sizes()));
  if (timestep.dim() != 1 || timestep.size(0) != batch)
    throw ShapeError("sd3 transformer: timestep must be [" + std::to_string(batch) + "], got " + shape_string(timestep.sizes()));

  at::Tensor x = pos_embed_->forward(hidden_states).contiguous();
  at::Tensor temb = time_text_embed_->forward(timestep, pooled);
  at::Tensor ctx = std::static_pointer_cast<nn::LinearImpl>(context_embedder_)->forward(encoder_hidden_states);
  // Ulysses (core/parallel.h): this rank's image and text tokens; attention exchanges them by heads.
  const SequenceShards shards(x.size(1), ctx.size(1));
  x = shards.image(x);
  ctx = shards.text(ctx);
  AttentionDesc desc;
  desc.model = "sd3";
  desc.controls = controls;
  const bool fast = fused::active(x);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    // The block-level hook: skip the block (for some rows), scale the text stream entering it.
    const BlockPlan plan = block_plan(controls, int(i));
    if (plan.skip) continue;
    if (plan.text_scale != 1.0) ctx = ctx * plan.text_scale;
    desc.layer = int(i);
    auto [ctx_out, x_out] = fast ? blocks_[i]->forward_fused(x, ctx, temb, desc, plan.image_copies) : blocks_[i]->forward(x, ctx, temb, desc);
    x = keep_input_rows(x_out, x, plan);
    ctx = keep_input_rows(ctx_out, ctx, plan);
  }
  x = fast ? norm_out_->forward_fused(x.contiguous(), temb) : norm_out_->forward(x, temb);
  x = shards.gather_image(std::static_pointer_cast<nn::LinearImpl>(proj_out_)->forward(x));
  const int64_t h = H / p, w = W / p;
  x = x.reshape({batch, h, w, p, p, c.out_channels}).permute({0, 5, 1, 3, 2, 4});  // nhwpqc -> nchpwq
  return x.reshape({batch, c.out_channels, H, W});
}

std::shared_ptr<SD3Transformer> SD3Transformer::load(const std::filesystem::path& component_dir, at::Device device,
                                                     at::ScalarType dtype) {
  auto config = SD3TransformerConfig::from_json(read_json_object(component_dir / "config.json"));
  auto store = WeightStore::open(component_dir);
  return nn::build_model<SD3Transformer>(config, device, dtype, [&](SD3Transformer& m) { load_module(m, store); });
}

// --- SAI single-file layout -----------------------------------------------------------------------

std::vector<RenameRule> sd3_single_file_rules(int64_t num_layers) {
  const std::string last = std::to_string(num_layers - 1);
  const std::string B = R"(joint_blocks\.(\d+)\.)";
  const std::string T = "transformer_blocks.$1.";
  using TR = Transform;
  return {
      {R"(pos_embed)", {"pos_embed.pos_embed"}},
      {R"(x_embedder\.proj\.(weight|bias))", {"pos_embed.proj.$1"}},
      {R"(t_embedder\.mlp\.0\.(weight|bias))", {"time_text_embed.timestep_embedder.linear_1.$1"}},
      {R"(t_embedder\.mlp\.2\.(weight|bias))", {"time_text_embed.timestep_embedder.linear_2.$1"}},
      {R"(y_embedder\.mlp\.0\.(weight|bias))", {"time_text_embed.text_embedder.linear_1.$1"}},
      {R"(y_embedder\.mlp\.2\.(weight|bias))", {"time_text_embed.text_embedder.linear_2.$1"}},
      {R"(context_embedder\.(weight|bias))", {"context_embedder.$1"}},
      {B + R"(x_block\.attn\.qkv\.(weight|bias))", {T + "attn.to_q.$2", T + "attn.to_k.$2", T + "attn.to_v.$2"}},
      {B + R"(context_block\.attn\.qkv\.(weight|bias))",
       {T + "attn.add_q_proj.$2", T + "attn.add_k_proj.$2", T + "attn.add_v_proj.$2"}},
      {B + R"(x_block\.attn2\.qkv\.(weight|bias))", {T + "attn2.to_q.$2", T + "attn2.to_k.$2", T + "attn2.to_v.$2"}},
      {B + R"(x_block\.attn\.ln_q\.weight)", {T + "attn.norm_q.weight"}},
      {B + R"(x_block\.attn\.ln_k\.weight)", {T + "attn.norm_k.weight"}},
      {B + R"(context_block\.attn\.ln_q\.weight)", {T + "attn.norm_added_q.weight"}},
      {B + R"(context_block\.attn\.ln_k\.weight)", {T + "attn.norm_added_k.weight"}},
      {B + R"(x_block\.attn2\.ln_q\.weight)", {T + "attn2.norm_q.weight"}},
      {B + R"(x_block\.attn2\.ln_k\.weight)", {T + "attn2.norm_k.weight"}},
      {B + R"(x_block\.attn\.proj\.(weight|bias))", {T + "attn.to_out.0.$2"}},
      {B + R"(x_block\.attn2\.proj\.(weight|bias))", {T + "attn2.to_out.0.$2"}},
      {B + R"(context_block\.attn\.proj\.(weight|bias))", {T + "attn.to_add_out.$2"}},
      {B + R"(x_block\.adaLN_modulation\.1\.(weight|bias))", {T + "norm1.linear.$2"}},
      // The last block's context adaLN is AdaLayerNormContinuous: (shift, scale) in SAI, (scale, shift) in diffusers.
      {R"(joint_blocks\.()" + last + R"()\.context_block\.adaLN_modulation\.1\.(weight|bias))",
       {T + "norm1_context.linear.$2"}, TR::SwapHalves},
      {B + R"(context_block\.adaLN_modulation\.1\.(weight|bias))", {T + "norm1_context.linear.$2"}},
      {B + R"(x_block\.mlp\.fc1\.(weight|bias))", {T + "ff.net.0.proj.$2"}},
      {B + R"(x_block\.mlp\.fc2\.(weight|bias))", {T + "ff.net.2.$2"}},
      {B + R"(context_block\.mlp\.fc1\.(weight|bias))", {T + "ff_context.net.0.proj.$2"}},
      {B + R"(context_block\.mlp\.fc2\.(weight|bias))", {T + "ff_context.net.2.$2"}},
      {R"(final_layer\.linear\.(weight|bias))", {"proj_out.$1"}},
      {R"(final_layer\.adaLN_modulation\.1\.(weight|bias))", {"norm_out.linear.$1"}, TR::SwapHalves},
  };
}

namespace {
const char* kSaiPrefix = "model.diffusion_model.";

WeightStore sai_view(const WeightStore& store) {
  for (const auto& n : store.names())
    if (n.rfind(kSaiPrefix, 0) == 0) return store.with_prefix(kSaiPrefix);
  return store;
}
}  // namespace

SD3TransformerConfig infer_sd3_config(const WeightStore& full, int64_t attention_head_dim) {
  WeightStore store = sai_view(full);
  auto shape = [&](const std::string& name) -> std::vector<int64_t> {
    const TensorInfo* info = store.info(name);
    if (!info) throw FormatError("not an SD3 single-file checkpoint: no tensor '" + name + "'");
    return info->shape;
  };
  SD3TransformerConfig c;
  auto pe = shape("pos_embed");
  auto xe = shape("x_embedder.proj.weight");
  auto ce = shape("context_embedder.weight");
  auto ye = shape("y_embedder.mlp.0.weight");
  auto fl = shape("final_layer.linear.weight");
  if (pe.size() != 3 || xe.size() != 4 || ce.size() != 2 || ye.size() != 2 || fl.size() != 2)
    throw FormatError("SD3 single-file checkpoint: unexpected embedding tensor ranks");
  const int64_t dim = xe[0];
  c.in_channels = xe[1];
  c.patch_size = xe[2];
  if (dim % attention_head_dim != 0)
    throw ShapeError("SD3 single-file checkpoint: hidden size " + std::to_string(dim) + " is not a multiple of head dim " +
                     std::to_string(attention_head_dim));
  c.attention_head_dim = attention_head_dim;
  c.num_attention_heads = dim / attention_head_dim;
  c.caption_projection_dim = dim;
  c.joint_attention_dim = ce[1];
  c.pooled_projection_dim = ye[1];
  c.out_channels = fl[0] / (c.patch_size * c.patch_size);
  const auto side = int64_t(std::llround(std::sqrt(double(pe[1]))));
  if (side * side != pe[1]) throw ShapeError("SD3 single-file checkpoint: pos_embed length " + std::to_string(pe[1]) + " is not a square");
  c.pos_embed_max_size = side;
  std::set<int64_t> blocks;
  std::set<int64_t> dual;
  bool qk = false;
  const std::string jb = "joint_blocks.";
  for (const auto& n : store.names()) {
    if (n.rfind(jb, 0) != 0) continue;
    const size_t dot = n.find('.', jb.size());
    const int64_t i = std::stoll(n.substr(jb.size(), dot - jb.size()));
    blocks.insert(i);
    if (n.find(".x_block.attn2.") != std::string::npos) dual.insert(i);
    if (n.find(".ln_q.") != std::string::npos) qk = true;
  }
  if (blocks.empty()) throw FormatError("not an SD3 single-file checkpoint: no joint_blocks");
  c.num_layers = *blocks.rbegin() + 1;
  c.dual_attention_layers.assign(dual.begin(), dual.end());
  c.qk_norm = qk ? "rms_norm" : "";
  return c;
}

std::shared_ptr<SD3Transformer> load_sd3_single_file(const WeightStore& store, const SD3TransformerConfig& config,
                                                     at::Device device, at::ScalarType dtype) {
  // Whole-pipeline files also hold the VAE and text encoders; sai_view keeps only the diffusion model.
  TensorMap tensors = convert_weights(sai_view(store), sd3_single_file_rules(config.num_layers));
  return nn::build_model<SD3Transformer>(config, device, dtype, [&](SD3Transformer& m) { load_module(m, tensors); });
}

}  // namespace mmdit
