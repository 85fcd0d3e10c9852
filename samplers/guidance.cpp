#include "samplers/guidance.h"

#include "models/pipeline.h"

namespace mmdit {

GuidanceConfig GuidanceConfig::from_request(const GenerateRequest& r, bool cfg) {
  GuidanceConfig c;
  c.cfg = cfg;
  c.apg = r.apg;
  c.apg_eta = r.apg_eta;
  c.apg_norm_threshold = r.apg_norm_threshold;
  c.apg_momentum = r.apg_momentum;
  c.cfg_zero_star = r.cfg_zero_star;
  c.cfg_zero_steps = r.cfg_zero_steps;
  return c;
}

Guidance::Guidance(const GuidanceConfig& config, std::vector<std::unique_ptr<Control>> controls, const ModelShape& model)
    : config_(config), controls_(std::move(controls)), model_(model) {
  int id = 0;
  for (auto& c : controls_) c->branch_id = id++;
}

ControlContext Guidance::context(int step, int num_steps, double timestep, int64_t n) const {
  ControlContext ctx;
  ctx.model = model_;
  ctx.step = step;
  ctx.num_steps = num_steps;
  ctx.timestep = timestep;
  int64_t row = 0;
  auto add = [&](Branch b, int id, double scale) {
    ctx.rows.push_back({b, id, scale, row, row + n});
    row += n;
  };
  if (config_.cfg) add(Branch::Uncond, 0, 0.0);
  add(Branch::Cond, 0, 0.0);
  for (const auto& c : controls_) ctx.region_text = ctx.region_text || c->wants_region_text(step);
  for (const auto& c : controls_)
    if (c->wants_base_rows(step)) {
      add(Branch::Base, 0, 0.0);
      break;
    }
  for (const auto& c : controls_) {
    ctx.controls.push_back(c.get());
    const double s = c->guidance_scale(step, num_steps, timestep);
    if (s != 0.0) add(Branch::Perturbed, c->branch_id, s);
  }
  return ctx;
}

ControlContext Guidance::single_control_context(int step, int num_steps, double timestep, const std::string& name) const {
  ControlContext ctx;
  ctx.model = model_;
  ctx.step = step;
  ctx.num_steps = num_steps;
  ctx.timestep = timestep;
  ctx.rows = {{Branch::Cond, 0, 0.0, 0, 1}};
  for (const auto& c : controls_)
    if (c->name() == name) ctx.controls.push_back(c.get());
  return ctx;
}

at::Tensor Guidance::by_branch(const ControlContext& ctx, const at::Tensor& cond, const at::Tensor& uncond,
                               const at::Tensor& base) {
  if (ctx.rows.size() == 1) return cond;
  std::vector<at::Tensor> parts;
  for (const auto& r : ctx.rows)
    parts.push_back(r.branch == Branch::Uncond ? uncond : r.branch == Branch::Base && base.defined() ? base : cond);
  return at::cat(parts);
}

at::Tensor apg_guidance(const at::Tensor& cond, const at::Tensor& uncond, double scale, double eta,
                        double norm_threshold, double momentum, at::Tensor& running) {
  // diffusers guiders/adaptive_projected_guidance.py normalized_guidance, norm over every non-batch dim.
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < cond.dim(); ++d) dims.push_back(d);
  at::Tensor diff = cond - uncond;
  running = running.defined() ? diff + momentum * running : diff;  // MomentumBuffer.update
  diff = running;
  if (norm_threshold > 0) {
    at::Tensor norm = diff.norm(2, dims, true);
    diff = diff * at::minimum(at::ones_like(diff), norm_threshold / norm);
  }
  at::Tensor v0 = diff.to(at::kDouble), v1 = cond.to(at::kDouble);
  v1 = v1 / v1.norm(2, dims, true).clamp_min(1e-12);  // F.normalize
  at::Tensor parallel = (v0 * v1).sum(dims, true) * v1;
  at::Tensor orthogonal = v0 - parallel;
  at::Tensor update = orthogonal.to(diff.scalar_type()) + eta * parallel.to(diff.scalar_type());
  return uncond + scale * update;
}

at::Tensor cfg_zero_star_guidance(const at::Tensor& cond, const at::Tensor& uncond, double scale) {
  // cfg_zero_star_scale: alpha = <cond, uncond> / (|uncond|^2 + 1e-8) per batch entry, in float32.
  at::Tensor c = cond.flatten(1).to(at::kFloat), u = uncond.flatten(1).to(at::kFloat);
  at::Tensor alpha = ((c * u).sum(1, true) / ((u * u).sum(1, true) + 1e-8)).to(cond.scalar_type());
  std::vector<int64_t> shape(size_t(cond.dim()), 1);
  shape[0] = -1;
  at::Tensor scaled_uncond = uncond * alpha.view(shape);
  return scaled_uncond + scale * (cond - scaled_uncond);
}

at::Tensor Guidance::cfg(const at::Tensor& cond, const at::Tensor& uncond, int step, double scale) {
  if (step == 0) momentum_ = at::Tensor();
  if (config_.apg)
    return apg_guidance(cond, uncond, scale, config_.apg_eta, config_.apg_norm_threshold, config_.apg_momentum, momentum_);
  if (config_.cfg_zero_star) return cfg_zero_star_guidance(cond, uncond, scale);
  return uncond + scale * (cond - uncond);
}

at::Tensor Guidance::combine(const at::Tensor& pred, const ControlContext& ctx, double cfg_scale) {
  auto rows = [&](const BranchRows& r) { return pred.narrow(0, r.begin, r.size()); };
  const BranchRows* c = ctx.find(Branch::Cond);
  const BranchRows* u = ctx.find(Branch::Uncond);
  at::Tensor cond = rows(*c);
  at::Tensor out = u ? cfg(cond, rows(*u), ctx.step, cfg_scale) : cond;
  bool rescale = false;
  for (const auto& r : ctx.rows) {
    if (r.branch != Branch::Perturbed) continue;
    out = out + r.scale * (cond - rows(r));
    rescale = rescale || controls_[size_t(r.id)]->rescales();
  }
  if (rescale) {  // STGuidance: factor = std(cond) / std(pred), 0.7 * factor + 0.3
    at::Tensor factor = cond.std() / out.std();
    out = out * (0.7 * factor + (1 - 0.7));
  }
  return out;
}

void Guidance::begin(const GenerationInfo& info) {
  for (auto& c : controls_) c->begin(info);
}

void Guidance::end(const std::vector<Image>& images) {
  for (auto& c : controls_) c->end(images);
}

}  // namespace mmdit
