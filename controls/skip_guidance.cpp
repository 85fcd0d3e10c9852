// Guidance by skipping blocks in a perturbed branch (research/controls.md §5):
//   - skip-layer guidance (SLG, Stability's sd3.5 and diffusers' StableDiffusion3Pipeline): the cond prediction
//     with --slg-layers left out, in the strict window steps*start < i < steps*stop; every family, CFG on or off;
//   - STG-R for CogVideoX (junhahyung/STGuidance): --stg-layers left out at every step, the guided prediction
//     optionally rescaled to the cond prediction's spread (--stg-rescale).
// The guidance adds s (cond - perturbed). The skipped block runs on every row and its perturbed rows get their
// input back, as STGuidance's forward_with_stg does.
#include <set>

#include "controls/registry.h"
#include "core/errors.h"
#include "core/options.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

class SkipGuidance : public Control {
 public:
  SkipGuidance(std::string name, double scale, std::vector<int> layers, double start, double stop, bool rescale)
      : name_(std::move(name)), scale_(scale), layers_(layers.begin(), layers.end()), start_(start), stop_(stop),
        rescale_(rescale) {}

  std::string name() const override { return name_; }
  bool rescales() const override { return rescale_; }

  double guidance_scale(int step, int num_steps, double) const override {
    const bool open = step > num_steps * start_ && step < num_steps * stop_;
    return open ? scale_ : 0.0;
  }

  void plan_block(const ControlContext& ctx, int layer, BlockPlan& plan) const override {
    if (!layers_.count(layer)) return;
    if (const BranchRows* rows = ctx.find(Branch::Perturbed, branch_id)) plan.keep_input.emplace_back(rows->begin, rows->end);
  }

 private:
  std::string name_;
  double scale_;
  std::set<int> layers_;
  double start_, stop_;
  bool rescale_;
};

}  // namespace

std::unique_ptr<Control> make_skip_layer_guidance(const GenerateRequest& r, const ModelShape& model) {
  if (r.slg_scale <= 0) {
    if (!r.slg_layers.empty()) throw UsageError("--slg-layers: skip-layer guidance needs --slg-scale > 0");
    return nullptr;
  }
  if (r.slg_layers.empty())
    throw UsageError("--slg-scale: skip-layer guidance needs --slg-layers (SD3.5-medium's are 7,8,9)");
  check_layers(r.slg_layers, model, "--slg-layers");
  if (r.slg_start > r.slg_stop)
    throw UsageError("--slg-start must not exceed --slg-stop (" + fmt_num(r.slg_start) + " > " + fmt_num(r.slg_stop) + ")");
  return std::make_unique<SkipGuidance>("skip-layer-guidance", r.slg_scale, r.slg_layers, r.slg_start, r.slg_stop, false);
}

std::unique_ptr<Control> make_stg(const GenerateRequest& r, const ModelShape& model) {
  if (r.stg_scale <= 0) {
    if (!r.stg_layers.empty() || r.stg_rescale)
      throw UsageError(std::string(r.stg_rescale ? "--stg-rescale" : "--stg-layers") +
                       ": spatiotemporal guidance needs --stg-scale > 0");
    return nullptr;
  }
  if (model.family != "cogvideox")
    throw UsageError("--stg-scale: STG is for CogVideoX video models; on " + model.family +
                     " use skip-layer guidance (--slg-scale, --slg-layers)");
  // STGuidance's CogVideoX default (CogVideoX/inference.py): block 11.
  const std::vector<int> layers = r.stg_layers.empty() ? std::vector<int>{11} : r.stg_layers;
  check_layers(layers, model, "--stg-layers");
  return std::make_unique<SkipGuidance>("stg", r.stg_scale, layers, -1.0, 2.0, r.stg_rescale);
}

}  // namespace mmdit
