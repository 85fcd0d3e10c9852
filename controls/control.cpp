#include "controls/control.h"

#include <cmath>

#include "core/errors.h"

namespace mmdit {

const BranchRows* ControlContext::find(Branch b, int id) const {
  for (const auto& r : rows)
    if (r.branch == b && (b != Branch::Perturbed || r.id == id)) return &r;
  return nullptr;
}

BlockPlan block_plan(const ControlContext* ctx, int layer) {
  BlockPlan plan;
  if (!ctx) return plan;
  for (const Control* c : ctx->controls) c->plan_block(*ctx, layer, plan);
  return plan;
}

at::Tensor keep_input_rows(const at::Tensor& out, const at::Tensor& in, const BlockPlan& plan) {
  if (plan.keep_input.empty() || !out.defined()) return out;
  // STG's forward_with_stg: the block runs on every row, then the skipped rows get their input back.
  at::Tensor o = out;
  for (auto [b, e] : plan.keep_input) o.narrow(0, b, e - b).copy_(in.narrow(0, b, e - b));
  return o;
}

namespace {

// Softmax entries P[i, j] = exp(q_i . k_j * scale - LSE_i) of some query rows and key columns, without the N x N
// matrix; `l` is the query rows' LSE.
at::Tensor softmax_entries(const at::Tensor& qs, const at::Tensor& ks, const at::Tensor& l, double scale) {
  return at::exp(at::matmul(qs.to(at::kFloat), ks.to(at::kFloat).transpose(-2, -1)) * scale - l.unsqueeze(-1));
}

}  // namespace

at::Tensor AttentionCall::image_text_probs(int64_t b, int64_t e, const at::Tensor& cols) const {
  const TokenRange &img = desc.image, &txt = desc.text;
  return softmax_entries(q.narrow(0, b, e - b).narrow(2, img.begin, img.size()),
                         k.narrow(0, b, e - b).narrow(2, txt.begin, txt.size()).index_select(2, cols),
                         lse.narrow(0, b, e - b).narrow(2, img.begin, img.size()), scale);
}

at::Tensor AttentionCall::text_image_probs(int64_t b, int64_t e, const at::Tensor& rows) const {
  const TokenRange &img = desc.image, &txt = desc.text;
  return softmax_entries(q.narrow(0, b, e - b).narrow(2, txt.begin, txt.size()).index_select(2, rows),
                         k.narrow(0, b, e - b).narrow(2, img.begin, img.size()),
                         lse.narrow(0, b, e - b).narrow(2, txt.begin, txt.size()).index_select(2, rows), scale);
}

bool touched(const AttentionDesc& desc) {
  for (const Control* c : desc.controls->controls)
    if (c->touches(desc, *desc.controls)) return true;
  return false;
}

at::Tensor controlled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                                double scale) {
  const ControlContext& ctx = *desc.controls;
  AttentionCall call{desc, ctx, q, k, v, scale > 0 ? scale : 1.0 / std::sqrt(double(q.size(-1))), {}, {}, {}};
  std::vector<Control*> active;
  bool lse = false;
  for (Control* c : ctx.controls) {
    if (!c->touches(desc, ctx)) continue;
    active.push_back(c);
    lse = lse || c->needs_lse(desc, ctx);
  }
  for (Control* c : active) c->before(call);
  const auto mask = call.mask.defined() ? std::optional<at::Tensor>(call.mask) : std::nullopt;
  if (call.out.defined()) {
    if (lse) throw RuntimeFailure("controls: an attention computed by a control has no log-sum-exp");
  } else if (lse) {
    std::tie(call.out, call.lse) = attention_with_lse(call.q, call.k, call.v, scale, mask);
  } else {
    call.out = at::scaled_dot_product_attention(call.q, call.k, call.v, mask, 0.0, false,
                                                scale > 0 ? std::optional<double>(scale) : std::nullopt);
  }
  for (Control* c : active) c->after(call);
  return call.out;
}

void check_layers(const std::vector<int>& layers, const ModelShape& model, const std::string& flag) {
  for (int l : layers)
    if (l < 0 || l >= model.layers)
      throw UsageError(flag + ": layer " + std::to_string(l) + " does not exist (the " + model.family + " model has " +
                       std::to_string(model.layers) + " blocks, 0.." + std::to_string(model.layers - 1) + ")");
}

}  // namespace mmdit
