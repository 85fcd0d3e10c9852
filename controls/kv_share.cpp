// DiTCtrl's KV sharing (KVSharingAdaLNMixin.attention_fn, ../shared/research/controls.md §1): in a multi-prompt
// video each adjacent tile pair runs as [source, target] in every branch, and on the chosen layers and steps the
// target's attention reads the source's keys and values, its whole joint sequence (text and video, after the QK
// norm and RoPE): O_t = SDPA(Q_t, K_s, V_s). The source attends as usual. Made by the multi-prompt sampler
// (models/cogvideox_pipeline.cpp), not by a flag of its own. With --kv-share-words, the mask-guided form below.
#include "controls/kv_share.h"

#include <algorithm>
#include <set>

#include "core/attention.h"
#include "core/errors.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

// Where the sharing acts: the shared layers, during steps first..last, on the joint attention of a paired pass.
struct ShareWindow {
  ShareWindow(const std::vector<int>& l, int f, int t) : layers(l.begin(), l.end()), first(f), last(t) {}
  bool in_pass(const AttentionDesc& desc, const ControlContext& ctx) const {
    return ctx.pairs && desc.sub == 0 && ctx.step >= first && ctx.step <= last;
  }
  bool shared(int layer) const { return layers.count(layer) != 0; }
  std::set<int> layers;
  int first, last;
};

class KvShare : public Control {
 public:
  KvShare(const std::vector<int>& layers, int first, int last) : window_(layers, first, last) {}
  std::string name() const override { return "kv-share"; }
  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return window_.in_pass(desc, ctx) && window_.shared(desc.layer);
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
  ShareWindow window_;
};

class MaskedKvShareImpl : public MaskedKvShare {
 public:
  MaskedKvShareImpl(const std::vector<int>& layers, int first, int last, int64_t frames, int64_t grid_h, int64_t grid_w,
                    double threshold)
      : window_(layers, first, last), frames_(frames), tokens_(frames * grid_h * grid_w), threshold_(threshold) {}
  std::string name() const override { return "kv-share-words"; }
  void set_words(std::vector<int64_t> source, std::vector<int64_t> target) override {
    source_ = at::tensor(source, at::kLong);
    target_ = at::tensor(target, at::kLong);
    acc_source_ = acc_target_ = at::Tensor();  // a new pass: the maps accumulate over its layers
    count_ = 0;
  }
  // Every layer of the sharing steps: the shared ones change the target's attention, the others give their maps.
  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return window_.in_pass(desc, ctx) && ctx.find(Branch::Cond) && desc.image.size() == tokens_;
  }
  bool needs_lse(const AttentionDesc& desc, const ControlContext&) const override { return !window_.shared(desc.layer); }
  void before(AttentionCall& call) override {
    if (!window_.shared(call.desc.layer)) return;
    // A shared layer's own maps come from the attention before the sharing: its own log-sum-exp of the cond rows.
    const int64_t rs = call.ctx.find(Branch::Cond)->begin;
    AttentionCall own = call;
    own.q = call.q.narrow(0, rs, 2), own.k = call.k.narrow(0, rs, 2), own.v = call.v.narrow(0, rs, 2);
    own.lse = attention_with_lse(own.q, own.k, own.v, call.scale).second;
    accumulate(own, 0);
  }
  void after(AttentionCall& call) override {
    if (!window_.shared(call.desc.layer)) {
      accumulate(call, call.ctx.find(Branch::Cond)->begin);
      return;
    }
    const at::Tensor ms = kv_share_mask(acc_source_ / count_, frames_, threshold_);
    const at::Tensor mt = kv_share_mask(acc_target_ / count_, frames_, threshold_);
    const TokenRange& img = call.desc.image;
    const int64_t S = call.q.size(2);
    const auto opts = at::TensorOptions().device(call.q.device());
    // Keys: text and the source's foreground video, or text and its background.
    at::Tensor fg = at::ones({S}, opts.dtype(at::kBool)), bg = fg.clone();
    fg.narrow(0, img.begin, img.size()).copy_(ms);
    bg.narrow(0, img.begin, img.size()).copy_(ms.logical_not());
    // Target queries: video rows by the target's mask, text rows 1 on the subject tokens.
    at::Tensor w = at::zeros({S}, opts.dtype(call.q.scalar_type()));
    w.narrow(0, img.begin, img.size()).copy_(mt);
    w.index_fill_(0, target_.to(call.q.device()) + call.desc.text.begin, 1.0);
    at::Tensor out = call.out.clone();
    for (const BranchRows& b : call.ctx.rows)
      for (int64_t r = b.begin; r + 1 < b.end; r += 2) {
        const at::Tensor q = call.q.narrow(0, r + 1, 1), k = call.k.narrow(0, r, 1), v = call.v.narrow(0, r, 1);
        const at::Tensor o_fg = at::scaled_dot_product_attention(q, k, v, fg.view({1, 1, 1, S}), 0.0, false, call.scale);
        const at::Tensor o_bg = at::scaled_dot_product_attention(q, k, v, bg.view({1, 1, 1, S}), 0.0, false, call.scale);
        out.narrow(0, r + 1, 1).copy_(o_bg + (o_fg - o_bg) * w.view({1, 1, S, 1}));
      }
    call.out = out;
  }

 private:
  // The cond [source, target] rows' video->text probabilities, averaged over heads, summed over each tile's subject
  // tokens; `rs` is the source row in call's batch.
  void accumulate(const AttentionCall& call, int64_t rs) {
    const auto dev = call.q.device();
    const at::Tensor ps = call.image_text_probs(rs, rs + 1, source_.to(dev)).mean(1).sum(-1).view(-1);
    const at::Tensor pt = call.image_text_probs(rs + 1, rs + 2, target_.to(dev)).mean(1).sum(-1).view(-1);
    acc_source_ = acc_source_.defined() ? acc_source_ + ps : ps;
    acc_target_ = acc_target_.defined() ? acc_target_ + pt : pt;
    ++count_;
  }

  ShareWindow window_;
  int64_t frames_, tokens_;
  double threshold_;
  at::Tensor source_, target_, acc_source_, acc_target_;
  int count_ = 0;
};

}  // namespace

at::Tensor kv_share_mask(const at::Tensor& probs, int64_t frames, double threshold) {
  const at::Tensor m = probs.to(at::kFloat).reshape({frames, -1});
  const at::Tensor lo = std::get<0>(m.min(1, true)), hi = std::get<0>(m.max(1, true));
  return ((m - lo) / (hi - lo).clamp_min(1e-12) >= threshold).reshape({-1});
}

std::unique_ptr<MaskedKvShare> make_masked_kv_share(const std::vector<int>& layers, int first_step, int last_step,
                                                    int64_t frames, int64_t grid_h, int64_t grid_w, double threshold) {
  return std::make_unique<MaskedKvShareImpl>(layers, first_step, last_step, frames, grid_h, grid_w, threshold);
}

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
                     : !r.kv_share_words.empty()                ? "--kv-share-words"
                                                                : nullptr;
  if (flag && !multi)
    throw UsageError(std::string(flag) + ": only for a multi-prompt video (give --prompt several times, --prompts-file "
                     "or the job key \"prompts\")");
  check_layers(r.kv_share_layers, model, "--kv-share-layers");
  if (!r.kv_share_words.empty()) {
    if (r.no_kv_share) throw UsageError("--kv-share-words: masks the sharing that --no-kv-share turns off; give one of them");
    const size_t words = size_t(std::count(r.kv_share_words.begin(), r.kv_share_words.end(), ',')) + 1;
    if (words != r.prompts.size())
      throw UsageError("--kv-share-words " + r.kv_share_words + ": one subject word per prompt, got " +
                       std::to_string(words) + " for " + std::to_string(r.prompts.size()) + " prompts");
  }
  return multi;
}

std::unique_ptr<Control> make_kv_share(const std::vector<int>& layers, int first_step, int last_step) {
  return std::make_unique<KvShare>(layers, first_step, last_step);
}

}  // namespace mmdit
