#include "controls/regional.h"

#include <filesystem>

#include "controls/registry.h"
#include "core/errors.h"
#include "core/image_io.h"
#include "core/options.h"

namespace mmdit {
namespace fs = std::filesystem;
namespace {

constexpr int64_t kTextBudget = 4096;  // text tokens of all regions together
RegionKernel region_kernel = RegionKernel::Dense;

// Text tokens of one encoded prompt: SD3's 77 CLIP + T5 tokens, FLUX's T5 tokens.
int64_t prompt_tokens(const ModelShape& model, const GenerateRequest& r) {
  return model.family == "sd3" ? 77 + r.max_sequence_length : r.max_sequence_length;
}

// A mask image scaled to height x width (nearest), white (> 127 in its first channel) = the region.
at::Tensor read_mask(const std::string& path, int height, int width) {
  Image img;
  try {
    img = read_image(path);  // its message names the file and what is wrong with it
  } catch (const FileError& e) {
    throw FileError(std::string("--region-mask ") + e.what());
  } catch (const FormatError& e) {
    throw FormatError(std::string("--region-mask ") + e.what());
  }
  at::Tensor t = at::from_blob(img.pixels.data(), {img.height, img.width, img.channels}, at::kByte).select(2, 0).clone();
  return region_tokens((t > 127).unsqueeze(0), height, width).view({height, width});
}

class Regional : public Control {
 public:
  Regional(at::Tensor pixels, double base_ratio, int steps, int64_t prompt_tokens, bool flux_single_after, int double_layers)
      : pixels_(std::move(pixels)), base_ratio_(base_ratio), steps_(steps), prompt_tokens_(prompt_tokens),
        flux_(flux_single_after), double_layers_(double_layers) {}

  std::string name() const override { return "regions"; }
  // With --region-base-ratio 0 the blend takes nothing of the base rows, so they are left out: one row per image.
  bool wants_base_rows(int step) const override { return step < steps_ && base_ratio_ > 0; }
  bool wants_region_text(int step) const override { return step < steps_; }

  void begin(const GenerationInfo& info) override {
    cells_ = region_tokens(pixels_, info.grid_h, info.grid_w);  // [slots, N] in the image tokens' order
    mask_ = at::Tensor();
    groups_ = Groups();
    split_ = (cells_.sum(0) == 1).all().item<bool>();  // every image token in exactly one region
  }

  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return desc.sub == 0 && desc.text.size() > 0 && ctx.region_text;
  }

  // Where the base rows take the blend (after()), their image stream is the cond rows' at every block's entry and
  // exit: the fast path computes it once. The base rows close the batch, each the copy of the cond row at its place.
  void plan_block(const ControlContext& ctx, int layer, BlockPlan& plan) const override {
    const BranchRows *cond = ctx.find(Branch::Cond), *base = ctx.find(Branch::Base);
    if ((flux_ && layer >= double_layers_) || !cond || !base || base->end != ctx.batch() || base->size() != cond->size())
      return;
    for (int64_t i = 0; i < base->size(); ++i) plan.image_copies.push_back(cond->begin + i);
  }

  void before(AttentionCall& call) override {
    check_layout(call);
    if (split_ && region_kernel == RegionKernel::Dense) call.out = dense_attention(call);
    else call.mask = batch_mask(call);
  }

  void after(AttentionCall& call) override {
    if (!call.ctx.find(Branch::Base)) return;  // base ratio 0: nothing to blend
    const BranchRows& cond = *call.ctx.find(Branch::Cond);
    const BranchRows& base = *call.ctx.find(Branch::Base);
    const TokenRange img = call.desc.image;
    at::Tensor c = call.out.narrow(0, cond.begin, cond.size()).narrow(2, img.begin, img.size());
    at::Tensor b = call.out.narrow(0, base.begin, base.size()).narrow(2, img.begin, img.size());
    at::Tensor blended = c * (1 - base_ratio_) + b * base_ratio_;
    c.copy_(blended);
    // One image stream in the double-stream blocks: the base row goes on with the blend as well.
    if (!flux_ || call.desc.layer < double_layers_) b.copy_(blended);
  }

 private:
  void check_layout(const AttentionCall& call) const {
    const int64_t slots = cells_.size(0), T = prompt_tokens_;
    if (call.desc.text.size() != slots * T || call.desc.image.size() != cells_.size(1))
      throw RuntimeFailure("regions: the joint sequence does not hold " + std::to_string(slots) + " prompts of " +
                           std::to_string(T) + " tokens and " + std::to_string(cells_.size(1)) + " image tokens");
  }

  // The token groups of the dense path, as indices into the joint sequence: each region's text and image tokens,
  // and the real tokens of a row holding one padded prompt (its first text slot and the image).
  struct Groups {
    int64_t text_begin = -1, image_begin = -1;
    std::vector<at::Tensor> regions;
    at::Tensor real;
  };
  const Groups& groups(const AttentionCall& call) {
    const TokenRange img = call.desc.image, txt = call.desc.text;
    if (groups_.real.defined() && groups_.text_begin == txt.begin && groups_.image_begin == img.begin &&
        groups_.real.device() == call.q.device())
      return groups_;
    const int64_t T = prompt_tokens_;
    Groups g{txt.begin, img.begin, {}, {}};
    for (int64_t i = 0; i < cells_.size(0); ++i)
      g.regions.push_back(at::cat({at::arange(txt.begin + i * T, txt.begin + (i + 1) * T, at::kLong),
                                   cells_[i].nonzero().view({-1}) + img.begin}).to(call.q.device()));
    g.real = at::cat({at::arange(txt.begin, txt.begin + T, at::kLong), at::arange(img.begin, img.end, at::kLong)})
                 .to(call.q.device());
    groups_ = std::move(g);
    return groups_;
  }

  // The masked attention without the mask: each group attends among itself. The padding's outputs are zeros
  // (nothing reads them: it is no key of any token).
  at::Tensor dense_attention(const AttentionCall& call) {
    const Groups& g = groups(call);
    const at::Tensor &q = call.q, &k = call.k, &v = call.v;
    at::Tensor out = at::zeros({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options()).transpose(1, 2);
    auto dense = [&](const BranchRows& r, const at::Tensor& idx) {
      auto pick = [&](const at::Tensor& t) { return t.narrow(0, r.begin, r.size()).index_select(2, idx); };
      at::Tensor o = at::scaled_dot_product_attention(pick(q), pick(k), pick(v), std::nullopt, 0.0, false, call.scale);
      out.narrow(0, r.begin, r.size()).index_copy_(2, idx, o);
    };
    for (const auto& r : call.ctx.rows) {
      if (r.branch != Branch::Cond) {
        dense(r, g.real);
        continue;
      }
      for (const auto& idx : g.regions) dense(r, idx);
    }
    return out;
  }

  // The mask of the whole batch, [B, 1, S, S] bool: cond rows the regional mask, the others their padding masked.
  const at::Tensor& batch_mask(const AttentionCall& call) {
    const int64_t B = call.q.size(0), S = call.q.size(2);
    if (mask_.defined() && mask_.size(0) == B && mask_.size(2) == S && mask_.device() == call.q.device()) return mask_;
    const TokenRange img = call.desc.image, txt = call.desc.text;
    const int64_t slots = cells_.size(0), T = prompt_tokens_;
    // Regional-Prompting-FLUX's pipeline (pipeline_flux_regional.py), in the model's token order.
    at::Tensor m = at::zeros({S, S}, at::kBool);
    at::Tensor self_attend = at::zeros({img.size(), img.size()}, at::kBool);
    at::Tensor uni = at::zeros({img.size(), img.size()}, at::kBool);
    for (int64_t i = 0; i < slots; ++i) {
      const int64_t t0 = txt.begin + i * T;
      at::Tensor cell = cells_[i];                                // [N]
      m.narrow(0, t0, T).narrow(1, t0, T).fill_(true);            // its text attends to itself
      m.narrow(0, t0, T).narrow(1, img.begin, img.size()).copy_(cell.unsqueeze(0).expand({T, img.size()}));  // text -> its image
      m.narrow(0, img.begin, img.size()).narrow(1, t0, T).copy_(cell.unsqueeze(1).expand({img.size(), T}));  // image -> its text
      at::Tensor rows = cell.unsqueeze(1).expand({img.size(), img.size()}), cols = rows.t();
      self_attend = self_attend.logical_or(rows.logical_and(cols));
      uni = uni.logical_or(rows.logical_or(cols));
    }
    m.narrow(0, img.begin, img.size()).narrow(1, img.begin, img.size()).copy_(uni.logical_not().logical_or(self_attend));
    // The other rows hold one prompt padded to the same length: its padding is no key.
    at::Tensor keys = at::ones({S}, at::kBool);
    keys.narrow(0, txt.begin + T, txt.size() - T).fill_(false);
    std::vector<at::Tensor> per_row;
    for (const auto& r : call.ctx.rows)
      for (int64_t k = 0; k < r.size(); ++k) per_row.push_back(r.branch == Branch::Cond ? m : keys.unsqueeze(0).expand({S, S}));
    mask_ = at::stack(per_row).unsqueeze(1).to(call.q.device());
    return mask_;
  }

  at::Tensor pixels_, cells_, mask_;
  Groups groups_;
  bool split_ = false;
  double base_ratio_;
  int steps_;
  int64_t prompt_tokens_;
  bool flux_;
  int double_layers_;
};

}  // namespace

void set_region_kernel(RegionKernel k) { region_kernel = k; }

at::Tensor region_tokens(const at::Tensor& pixels, int64_t h, int64_t w) {
  // nearest-exact: output cell i takes input index floor((i + 0.5) * in / out).
  const int64_t H = pixels.size(1), W = pixels.size(2);
  at::Tensor ys = ((at::arange(h, at::kDouble) + 0.5) * double(H) / double(h)).floor().to(at::kLong).clamp_max(H - 1);
  at::Tensor xs = ((at::arange(w, at::kDouble) + 0.5) * double(W) / double(w)).floor().to(at::kLong).clamp_max(W - 1);
  return pixels.index_select(1, ys).index_select(2, xs).reshape({pixels.size(0), h * w});
}

RegionLayout region_layout(const GenerateRequest& r, int max_slots) {
  RegionLayout out;
  std::vector<at::Tensor> masks;
  at::Tensor covered = at::zeros({r.height, r.width}, at::kBool);
  for (const auto& g : r.regions) {
    at::Tensor m;
    if (!g.mask.empty()) {
      m = read_mask(g.mask, r.height, r.width);
    } else {
      if (g.x1 > r.width || g.y1 > r.height)
        throw UsageError("--region " + std::to_string(g.x0) + "," + std::to_string(g.y0) + "," + std::to_string(g.x1) +
                         "," + std::to_string(g.y1) + ": outside the " + std::to_string(r.width) + "x" +
                         std::to_string(r.height) + " image");
      m = at::zeros({r.height, r.width}, at::kBool);
      m.narrow(0, g.y0, g.y1 - g.y0).narrow(1, g.x0, g.x1 - g.x0).fill_(true);
    }
    if (!m.any().item<bool>())
      throw UsageError("--region-mask " + g.mask + ": no white pixel (the region is empty)");
    masks.push_back(m);
    covered = covered.logical_or(m);
    out.prompts.push_back(g.prompt);
  }
  // infer_flux_regional.py: "if regional masks don't cover the whole image, append background prompt and mask".
  if (!covered.all().item<bool>()) {
    masks.push_back(covered.logical_not());
    out.prompts.push_back(r.region_background.empty() ? r.prompt : r.region_background);
  }
  if (int(out.prompts.size()) > max_slots)
    throw UsageError("--region: " + std::to_string(out.prompts.size()) + " prompts (with the background) exceed the text "
                     "budget of " + std::to_string(max_slots) + " prompts for this model");
  out.pixels = at::stack(masks);
  return out;
}

std::unique_ptr<Control> make_regional(const GenerateRequest& r, const ModelShape& model) {
  if (r.regions.empty()) {
    if (!r.region_background.empty()) throw UsageError("--region-background: needs --region or --region-mask");
    return nullptr;
  }
  if (model.family != "sd3" && model.family != "flux")
    throw UsageError("--region: regional prompts are for SD3/SD3.5 and FLUX images, not " + model.family);
  if (r.pag_scale > 0 || r.slg_scale > 0 || r.stg_scale > 0)
    throw UsageError("--region: cannot be combined with perturbation guidance (--pag-*, --slg-*) yet");
  if (!r.attention_maps.empty()) throw UsageError("--region: cannot be combined with --attention-maps yet");
  const int64_t T = prompt_tokens(model, r);
  RegionLayout layout = region_layout(r, int(kTextBudget / T));
  return std::make_unique<Regional>(layout.pixels, r.region_base_ratio, r.region_steps, T, model.family == "flux",
                                    model.double_layers);
}

}  // namespace mmdit
