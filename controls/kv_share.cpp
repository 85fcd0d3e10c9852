// DiTCtrl's KV sharing (KVSharingAdaLNMixin.attention_fn, ../shared/research/controls.md §1): in a multi-prompt
// video each adjacent tile pair runs as [source, target] in every branch, and on the chosen layers and steps the
// target's attention reads the source's keys and values, its whole joint sequence (text and video, after the QK
// norm and RoPE): O_t = SDPA(Q_t, K_s, V_s). The source attends as usual. Made by the multi-prompt sampler
// (models/cogvideox_pipeline.cpp), not by a flag of its own.
#include "controls/kv_share.h"

#include <set>

#include "core/errors.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

class KvShare : public Control {
 public:
  KvShare(const std::vector<int>& layers, int first, int last) : layers_(layers.begin(), layers.end()), first_(first), last_(last) {}
  std::string name() const override { return "kv-share"; }
  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return ctx.pairs && desc.sub == 0 && ctx.step >= first_ && ctx.step <= last_ && layers_.count(desc.layer) != 0;
  }
  void before(AttentionCall& call) override {
    at::Tensor k = call.k.clone(), v = call.v.clone();
    for (const BranchRows& b : call.ctx.rows)
      for (int64_t r = b.begin; r + 1 < b.end; r += 2) {
        k.narrow(0, r + 1, 1).copy_(k.narrow(0, r, 1));
        v.narrow(0, r + 1, 1).copy_(v.narrow(0, r, 1));
      }
    call.k = k, call.v = v;
  }

 private:
  std::set<int> layers_;
  int first_, last_;
};

}  // namespace

bool check_multiprompt(const GenerateRequest& r, const ModelShape& model) {
  int tiles = 0;
  for (const auto& e : r.prompts) tiles += e.tiles;
  const bool multi = tiles > 1;
  if (multi && model.family != "cogvideox")
    throw UsageError("--prompt given several times (job key \"prompts\"): a multi-prompt video needs a video model; " +
                     model.family + " makes images");
  const GenerateRequest d;
  const char* flag = r.overlap != d.overlap                     ? "--overlap"
                     : r.transition_tiles != d.transition_tiles ? "--transition-tiles"
                     : !r.kv_share_layers.empty()               ? "--kv-share-layers"
                     : !r.kv_share_steps.empty()                ? "--kv-share-steps"
                     : r.no_kv_share                            ? "--no-kv-share"
                                                                : nullptr;
  if (flag && !multi)
    throw UsageError(std::string(flag) + ": only for a multi-prompt video (give --prompt several times, --prompts-file "
                     "or the job key \"prompts\")");
  check_layers(r.kv_share_layers, model, "--kv-share-layers");
  return multi;
}

std::unique_ptr<Control> make_kv_share(const std::vector<int>& layers, int first_step, int last_step) {
  return std::make_unique<KvShare>(layers, first_step, last_step);
}

}  // namespace mmdit
