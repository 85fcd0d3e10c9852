// The guidance stage, one for every family: which branches a step's batch holds (uncond, cond, one perturbed
// branch per guidance control whose window is open), and how their predictions combine:
//   pred = CFG(uncond, cond) [or APG, or CFG-Zero*]   (cond alone without CFG)
//        + sum_j s_j (cond - perturbed_j)             (PAG, SoftPAG, SLG, STG)
//        [* STG's rescale to the cond prediction's spread]
// The formulas are diffusers' (pipelines, pag_utils, guiders) and the official method code; see docs/CONTROLS.md.
#pragma once
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "controls/control.h"

namespace mmdit {

struct GuidanceConfig {
  bool cfg = false;  // classifier-free guidance on (the pipeline decides: cfg > 1, and for FLUX a negative prompt)
  bool apg = false;  // adaptive projected guidance instead of plain CFG (diffusers AdaptiveProjectedGuidance)
  double apg_eta = 1.0, apg_norm_threshold = 15.0, apg_momentum = 0.0;
  bool cfg_zero_star = false;  // diffusers ClassifierFreeZeroStarGuidance
  int cfg_zero_steps = 1;      // its zero_init_steps: the first steps predict zero
  static GuidanceConfig from_request(const GenerateRequest& r, bool cfg);
};

class Guidance {
 public:
  Guidance(const GuidanceConfig& config, std::vector<std::unique_ptr<Control>> controls, const ModelShape& model);

  // The context of step `step`'s forward pass: n rows per branch, [uncond], cond, [base], [perturbed...].
  ControlContext context(int step, int num_steps, double timestep, int64_t n) const;
  // A pass of one cond row that only the control named `name` sees (none: no control): inverting a given image,
  // where the edit control records the source's attention and nothing else acts.
  ControlContext single_control_context(int step, int num_steps, double timestep, const std::string& name) const;
  // Whether this step predicts zero without running the model (CFG-Zero*'s zero-init steps).
  bool zero_step(int step) const { return config_.cfg_zero_star && step < config_.cfg_zero_steps; }
  // An input laid out like the batch: `cond` ([n, ...]) in cond and perturbed rows, `uncond` in uncond rows,
  // `base` (or `cond` when undefined) in the base helper rows.
  static at::Tensor by_branch(const ControlContext& ctx, const at::Tensor& cond, const at::Tensor& uncond,
                              const at::Tensor& base = {});
  // The guided prediction [n, ...] from the batch's predictions; cfg_scale may change per step (CogVideoX's
  // dynamic CFG).
  at::Tensor combine(const at::Tensor& pred, const ControlContext& ctx, double cfg_scale);

  void begin(const GenerationInfo& info);
  void end(const std::vector<Image>& images);
  const std::vector<std::unique_ptr<Control>>& controls() const { return controls_; }

 private:
  at::Tensor cfg(const at::Tensor& cond, const at::Tensor& uncond, int step, double scale);

  GuidanceConfig config_;
  std::vector<std::unique_ptr<Control>> controls_;
  ModelShape model_;
  at::Tensor momentum_;  // APG's running average of cond - uncond
};

// diffusers' guider formulas on their own (tested against recorded predictions).
// normalized_guidance (APG): `momentum` holds the running average (undefined before the first step).
at::Tensor apg_guidance(const at::Tensor& cond, const at::Tensor& uncond, double scale, double eta,
                        double norm_threshold, double momentum, at::Tensor& running);
// ClassifierFreeZeroStarGuidance after its zero-init steps.
at::Tensor cfg_zero_star_guidance(const at::Tensor& cond, const at::Tensor& uncond, double scale);

}  // namespace mmdit
