// Perturbed-attention guidance: PAG on whole layers and HeadHunter's SoftPAG on single heads
// (research/controls.md §3-4). In the perturbed branch's rows the selected heads give
//   (1 - u) * attention + u * target
// where the target is the identity attention (output = V), over every token (--pag-mode full: diffusers'
// guider and HeadHunter) or image->image only, with image->text and the text rows unchanged (--pag-mode image:
// diffusers' PAGJointAttnProcessor2_0). QK-norm and RoPE are applied before, as in the normal path. The guidance
// adds s_t (cond - perturbed), s_t = max(0, s - a (1000 - t)) with --pag-adaptive-scale a (diffusers'
// _get_pag_scale). No N x N matrix: full identity is V itself, image identity a softmax over the text keys plus
// each token's own score (O(N T)).
#include <algorithm>
#include <map>

#include "controls/registry.h"
#include "core/errors.h"
#include "core/options.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

class Pag : public Control {
 public:
  Pag(double scale, double adaptive, double u, bool full, std::map<int, std::vector<int64_t>> heads)
      : scale_(scale), adaptive_(adaptive), u_(u), full_(full), heads_(std::move(heads)) {}

  std::string name() const override { return "pag"; }

  double guidance_scale(int, int, double timestep) const override {
    if (adaptive_ <= 0) return scale_;
    return std::max(0.0, scale_ - adaptive_ * (1000.0 - timestep));
  }

  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return desc.sub == 0 && heads_.count(desc.layer) && ctx.find(Branch::Perturbed, branch_id);
  }

  void after(AttentionCall& call) override {
    const BranchRows& rows = *call.ctx.find(Branch::Perturbed, branch_id);
    const std::vector<int64_t>& heads = heads_.at(call.desc.layer);
    at::Tensor out = call.out.narrow(0, rows.begin, rows.size());
    auto pick = [&](const at::Tensor& t) {  // the perturbed rows, and the selected heads only
      at::Tensor r = t.narrow(0, rows.begin, rows.size());
      return heads.empty() ? r : r.index_select(1, head_index(heads, t.device()));
    };
    at::Tensor o = pick(call.out);
    at::Tensor target = full_ ? pick(call.v) : image_identity(pick(call.q), pick(call.k), pick(call.v), o, call);
    at::Tensor mixed = u_ == 1.0 ? target : (1 - u_) * o + u_ * target;
    if (heads.empty()) out.copy_(mixed);
    else out.index_copy_(1, head_index(heads, out.device()), mixed.to(out.scalar_type()));
  }

 private:
  // diffusers' PAG mask: image rows attend to the text keys and to themselves only; text rows are unchanged.
  at::Tensor image_identity(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& normal,
                            const AttentionCall& call) const {
    const TokenRange img = call.desc.image, txt = call.desc.text;
    at::Tensor qi = q.narrow(2, img.begin, img.size()).to(at::kFloat);
    at::Tensor ki = k.narrow(2, img.begin, img.size()).to(at::kFloat);
    at::Tensor vi = v.narrow(2, img.begin, img.size()).to(at::kFloat);
    at::Tensor kt = k.narrow(2, txt.begin, txt.size()).to(at::kFloat);
    at::Tensor vt = v.narrow(2, txt.begin, txt.size()).to(at::kFloat);
    at::Tensor scores = at::cat({at::matmul(qi, kt.transpose(-2, -1)), (qi * ki).sum(-1, true)}, -1) * call.scale;
    at::Tensor p = at::softmax(scores, -1);
    at::Tensor out_img = at::matmul(p.narrow(-1, 0, txt.size()), vt) + p.narrow(-1, txt.size(), 1) * vi;
    at::Tensor target = normal.clone();
    target.narrow(2, img.begin, img.size()).copy_(out_img);
    return target;
  }

  const at::Tensor& head_index(const std::vector<int64_t>& heads, const at::Device& device) {
    at::Tensor& t = index_[&heads];
    if (!t.defined() || t.device() != device) t = at::tensor(heads, at::kLong).to(device);
    return t;
  }

  double scale_, adaptive_, u_;
  bool full_;
  std::map<int, std::vector<int64_t>> heads_;  // layer -> its perturbed heads (empty: all of them)
  std::map<const std::vector<int64_t>*, at::Tensor> index_;
};

}  // namespace

std::unique_ptr<Control> make_pag(const GenerateRequest& r, const ModelShape& model) {
  const auto pairs = parse_head_list(r.pag_heads, "--pag-heads");
  if (r.pag_scale <= 0) {
    if (!r.pag_layers.empty() || !pairs.empty())
      throw UsageError(std::string(r.pag_layers.empty() ? "--pag-heads" : "--pag-layers") +
                       ": perturbed-attention guidance needs --pag-scale > 0");
    return nullptr;
  }
  if (r.pag_mode != "image" && r.pag_mode != "full")
    throw UsageError("--pag-mode: expected image or full, got '" + r.pag_mode + "'");
  if (r.pag_u < 0 || r.pag_u > 1) throw UsageError("--pag-u: must be between 0 and 1, got " + fmt_num(r.pag_u));
  std::map<int, std::vector<int64_t>> heads;
  // diffusers' StableDiffusion3PAGPipeline perturbs "blocks.1" unless told otherwise.
  std::vector<int> layers = r.pag_layers.empty() && pairs.empty() ? std::vector<int>{1} : r.pag_layers;
  check_layers(layers, model, "--pag-layers");
  for (int l : layers) heads[l] = {};
  for (auto [l, h] : pairs) {
    check_layers({l}, model, "--pag-heads");
    if (h < 0 || h >= model.heads)
      throw UsageError("--pag-heads: head " + std::to_string(h) + " does not exist (the " + model.family + " model has " +
                       std::to_string(model.heads) + " heads per layer, 0.." + std::to_string(model.heads - 1) + ")");
    auto it = heads.find(l);
    if (it != heads.end() && it->second.empty() && std::count(layers.begin(), layers.end(), l)) continue;  // whole layer
    auto& list = heads[l];
    if (std::find(list.begin(), list.end(), h) == list.end()) list.push_back(h);
  }
  for (auto& [l, list] : heads) {
    std::sort(list.begin(), list.end());
    if (int64_t(list.size()) == model.heads) list.clear();  // every head: the whole layer
  }
  return std::make_unique<Pag>(r.pag_scale, r.pag_adaptive_scale, r.pag_u, r.pag_mode == "full", std::move(heads));
}

}  // namespace mmdit
