// FreeFlux (wtybest/FreeFlux @ 98f17b1, research/controls.md §6): RoPE-aware, layer-specific key/value injection on
// FLUX. Source and target run as a [source, target] pair from the same noise; in the chosen attention layers (call
// order 0-56: 19 double blocks, then 38 single blocks) the target's image tokens take the source's
//   nonrigid    K and V, layers 0,7,8,9,10,18,25,28,37,42,45,50,56, every step (content-similarity layers: the
//               target may change pose while keeping appearance);
//   add         K and V, layers 1,2,4,26,30,54,55, every step, except inside the added object's region, where the
//               target keeps its own. The region comes from a first "reasoning" pass of the pair (with the same
//               injection everywhere) to step 7 of 50: the target's text<->image attention of the added words in
//               single blocks 40-43, (P[word -> image] + P[image -> word]) / 2 averaged over heads, a 3x3 Gaussian
//               (sigma 0.5, the official kernel), averaged over the words and layers, min-max normalised, above 0.3,
//               the largest 8-connected region kept;
//   background  V only, every layer, the first 45 of 50 steps, at the foreground object's tokens (same place in
//               both: no shift): the object is kept, the background follows the target prompt. The foreground is
//               the same map of the object's words (--edit-words) from a first pass of the source alone to step 7,
//               above 0.3, the largest region (the official code refines it with SAM2 clicks; mmdit has no SAM2).
// The probabilities come from the row's own attention (before the injection, as the official processor computes
// them) through the log-sum-exp trick, at one step and four layers. On a FLUX whose depth differs from FLUX.1's 19 +
// 38 blocks, the layer indices are mapped proportionally within the double and the single blocks.
#include <algorithm>
#include <cmath>
#include <set>

#include "controls/consistedit.h"
#include "controls/freeflux.h"
#include "controls/registry.h"
#include "core/errors.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

enum class Mode { NonRigid, Add, Background };

// FLUX.1's layer index (of 19 + 38) on a FLUX with `doubles` + `singles` blocks.
int map_layer(int l, int doubles, int singles) {
  if (l < 19) return std::min(doubles - 1, int(std::lround(l * doubles / 19.0)));
  return doubles + std::min(singles - 1, int(std::lround((l - 19) * singles / 38.0)));
}

std::set<int> map_layers(const std::vector<int>& ls, const ModelShape& m) {
  std::set<int> out;
  for (int l : ls) out.insert(map_layer(l, m.double_layers, m.layers - m.double_layers));
  return out;
}

// The official GaussianSmoothing(channels=1, kernel_size=3, sigma=0.5) on a reflect-padded map, [h, w].
at::Tensor smooth(const at::Tensor& map) {
  std::vector<double> k1(3);
  for (int i = 0; i < 3; ++i) k1[size_t(i)] = 1 / (0.5 * std::sqrt(2 * M_PI)) * std::exp(-std::pow((i - 1) / (2 * 0.5), 2));
  at::Tensor k = at::tensor(k1, at::kFloat);
  k = at::outer(k, k);
  k = (k / k.sum()).view({1, 1, 3, 3});
  at::Tensor x = at::reflection_pad2d(map.unsqueeze(0).unsqueeze(0), {1, 1, 1, 1});
  return at::conv2d(x, k)[0][0];
}

// remove_small_white_regions: the largest 8-connected region of a binary [h, w] mask.
at::Tensor largest_region(const at::Tensor& mask) {
  const int64_t h = mask.size(0), w = mask.size(1);
  at::Tensor m = mask.to(at::kByte).contiguous();
  const uint8_t* p = m.data_ptr<uint8_t>();
  std::vector<int> label(size_t(h * w), 0);
  std::vector<int64_t> sizes{0};
  for (int64_t s = 0; s < h * w; ++s) {
    if (!p[s] || label[size_t(s)]) continue;
    const int id = int(sizes.size());
    sizes.push_back(0);
    std::vector<int64_t> stack{s};
    label[size_t(s)] = id;
    while (!stack.empty()) {
      const int64_t c = stack.back();
      stack.pop_back();
      ++sizes.back();
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int64_t y = c / w + dy, x = c % w + dx;
          if (y < 0 || y >= h || x < 0 || x >= w) continue;
          const int64_t n = y * w + x;
          if (p[n] && !label[size_t(n)]) label[size_t(n)] = id, stack.push_back(n);
        }
    }
  }
  if (sizes.size() == 1) return m.to(at::kFloat);  // nothing above the threshold: the mask as it is
  const int best = int(std::max_element(sizes.begin() + 1, sizes.end()) - sizes.begin());
  at::Tensor out = at::zeros({h, w}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t s = 0; s < h * w; ++s) o[s] = label[size_t(s)] == best ? 1.0f : 0.0f;
  return out;
}

class FreeFlux : public Control {
 public:
  FreeFlux(Mode mode, const ModelShape& m, std::string mask_output) : mode_(mode), mask_output_(std::move(mask_output)) {
    if (mode == Mode::NonRigid) layers_ = map_layers({0, 7, 8, 9, 10, 18, 25, 28, 37, 42, 45, 50, 56}, m);
    else if (mode == Mode::Add) layers_ = map_layers({1, 2, 4, 26, 30, 54, 55}, m);
    else for (int l = 0; l < m.layers; ++l) layers_.insert(l);
    map_layers_ = map_layers({40, 41, 42, 43}, m);
  }

  std::string name() const override { return "freeflux"; }

  void begin(const GenerationInfo& info) override {
    info_ = info;
    cols_ = at::tensor(info.edit_tokens, at::kLong);
    sum_ = mask_ = at::Tensor();
    summed_ = 0;
  }

  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    if (desc.sub != 0 || desc.text.size() == 0) return false;
    if (ctx.prepass && ctx.step == freeflux_derive_step(ctx.num_steps) && map_layers_.count(desc.layer)) return true;
    if (!ctx.pairs || !layers_.count(desc.layer)) return false;
    return mode_ != Mode::Background || ctx.step < int(ctx.num_steps * 0.9);  // the official 45 of 50 steps
  }

  void before(AttentionCall& call) override {
    const ControlContext& ctx = call.ctx;
    if (ctx.prepass && ctx.step == freeflux_derive_step(ctx.num_steps) && map_layers_.count(call.desc.layer))
      record(call);
    if (!ctx.pairs || !layers_.count(call.desc.layer)) return;
    if (!ctx.prepass && mode_ != Mode::NonRigid && !mask_.defined()) derive_mask();
    const TokenRange img = call.desc.image;
    // Where the target takes the source's K/V (1) or keeps its own (0); the reasoning pass injects everywhere.
    at::Tensor take;
    if (mode_ == Mode::Add && mask_.defined()) take = 1 - mask_;
    if (mode_ == Mode::Background) take = mask_;
    if (take.defined()) take = take.to(call.q.device(), call.q.scalar_type()).view({1, 1, -1, 1});
    call.k = call.k.clone(), call.v = call.v.clone();
    for (const auto& r : ctx.rows) {
      if (r.size() != 2) throw RuntimeFailure("freeflux: a branch without its [source, target] rows");
      auto inject = [&](at::Tensor& t) {
        at::Tensor s = t.narrow(0, r.begin, 1).narrow(2, img.begin, img.size());
        at::Tensor g = t.narrow(0, r.begin + 1, 1).narrow(2, img.begin, img.size());
        g.copy_(take.defined() ? s * take + g * (1 - take) : s);
      };
      if (mode_ != Mode::Background) inject(call.k);
      inject(call.v);
    }
  }

  void end(const std::vector<Image>&) override {
    if (mask_output_.empty() || !mask_.defined()) return;
    // Edited: the added object's region, or the background around the kept object.
    write_edit_mask(mask_output_, mode_ == Mode::Add ? mask_ : 1 - mask_, info_.grid_h, info_.grid_w, info_.height,
                    info_.width);
  }

 private:
  // One layer's map of the edit words, from the row's own attention before any injection: the add mode reads the
  // target (the row the added words are in), the background mode the source.
  void record(const AttentionCall& call) {
    const BranchRows& cond = *call.ctx.find(Branch::Cond);
    const int64_t row = cond.begin + (mode_ == Mode::Add ? 1 : 0);
    if (mode_ == Mode::Add && cond.size() != 2) throw RuntimeFailure("freeflux: the reasoning pass needs the pair");
    AttentionCall own = call;
    own.q = call.q.narrow(0, row, 1).to(at::kFloat), own.k = call.k.narrow(0, row, 1).to(at::kFloat);
    own.v = call.v.narrow(0, row, 1).to(at::kFloat);
    own.lse = attention_with_lse(own.q, own.k, own.v, call.scale).second;
    if (cols_.device() != own.q.device()) cols_ = cols_.to(own.q.device());
    // [1, H, words, N]: P[word -> image] and P[image -> word]^T.
    at::Tensor to_img = own.text_image_probs(0, 1, cols_);
    at::Tensor from_img = own.image_text_probs(0, 1, cols_).transpose(-2, -1);
    at::Tensor maps = ((to_img + from_img) / 2).mean(1)[0].to(at::kCPU).view({-1, info_.grid_h, info_.grid_w});
    at::Tensor layer = at::zeros({info_.grid_h, info_.grid_w});
    for (int64_t w = 0; w < maps.size(0); ++w) layer += smooth(maps[w]);
    layer /= double(maps.size(0));
    sum_ = sum_.defined() ? sum_ + layer : layer;
    ++summed_;
  }

  void derive_mask() {
    if (!summed_) throw RuntimeFailure("freeflux: the first pass recorded no attention");
    at::Tensor map = sum_ / double(summed_);
    at::Tensor norm = (map - map.min()) / (map.max() - map.min() + 1e-6);
    mask_ = largest_region(norm > 0.3).view({-1});  // 1: the added object / the kept foreground
  }

  Mode mode_;
  std::string mask_output_;
  std::set<int> layers_, map_layers_;
  GenerationInfo info_;
  at::Tensor cols_, sum_, mask_;
  int summed_ = 0;
};

}  // namespace

bool is_freeflux(const std::string& method) { return method.rfind("freeflux-", 0) == 0; }

int freeflux_derive_step(int steps) { return std::min(steps - 1, std::max(1, int(std::lround(steps * 7 / 50.0)))); }

std::unique_ptr<Control> make_freeflux(const GenerateRequest& r, const ModelShape& model) {
  if (r.source_prompt.empty() || !is_freeflux(r.edit_method)) return nullptr;
  if (model.family != "flux")
    throw UsageError("--edit-method " + r.edit_method + ": FreeFlux's layers are FLUX's; use consistedit on " +
                     model.family);
  if (r.edit_method == "freeflux-nonrigid") {
    if (!r.edit_words.empty() || !r.mask_output.empty())
      throw UsageError(std::string(r.edit_words.empty() ? "--mask-output" : "--edit-words") +
                       ": freeflux-nonrigid uses no mask");
    return std::make_unique<FreeFlux>(Mode::NonRigid, model, "");
  }
  if (r.edit_method == "freeflux-background" && r.edit_words.empty())
    throw UsageError("--edit-words: freeflux-background needs the words of the object to keep");
  return std::make_unique<FreeFlux>(r.edit_method == "freeflux-add" ? Mode::Add : Mode::Background, model,
                                    r.mask_output);
}

}  // namespace mmdit
