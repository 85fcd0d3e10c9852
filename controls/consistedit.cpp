// ConsistEdit (zxYin/ConsistEdit_Code, research/controls.md §7): consistent editing of a generated image. Two passes
// over the same noise:
//   1. the source prompt alone (rows [uncond, cond]): the mean-over-heads image->text attention probabilities of
//      the edit words' tokens, averaged over every controlled layer and step, summed over the tokens, min-max
//      normalised over the image; above 0.1 is the edited region, the rest (m = 1) is kept. The probabilities are
//      exact, through the log-sum-exp trick (the official code materialises the N x N map). A given image
//      (--image) takes them from its inversion instead, as the official real-image code does;
//   2. source and target together (rows [uncond source, uncond target, cond source, cond target]): before every
//      controlled attention the target's image tokens take, from the source's,
//        V = m V_s + (1 - m) V_t                       at every step,
//        Q, K = m_qk {Q, K}_s + (1 - m_qk) {Q, K}_t    with m_qk = 1 everywhere for the first floor(alpha steps)
//      steps (--strength alpha), m after; text tokens stay the target's own.
// SD3/SD3.5: every joint attention; FLUX: the single-stream blocks only, as the official FLUX editor.
// --edit-mask-steps N (not in the official code; cheaper): pass 1 stops after N steps. From step N on, pass 2
// keeps recording the source row's probabilities (the source row of the pair is never edited, so they are pass 1's
// would-be values), and each step's mask averages every step before it.
#include <algorithm>
#include <cctype>
#include <filesystem>

#include "controls/consistedit.h"
#include "controls/freeflux.h"
#include "controls/registry.h"
#include "core/errors.h"
#include "core/image_io.h"
#include "core/log.h"
#include "core/torch_util.h"
#include "models/pipeline.h"
#include "samplers/inversion.h"

namespace mmdit {
namespace {

class ConsistEdit : public Control {
 public:
  ConsistEdit(double alpha, bool flux, int double_layers, std::string mask_output, int mask_steps)
      : alpha_(alpha), flux_(flux), double_layers_(double_layers), mask_output_(std::move(mask_output)),
        mask_steps_(mask_steps) {}

  std::string name() const override { return "consistedit"; }

  void begin(const GenerationInfo& info) override {
    info_ = info;
    cols_ = at::tensor(info.edit_tokens, at::kLong);
    sum_ = mask_ = at::Tensor();
    count_ = 0;
    mask_step_ = -1;
    // No edit words (a given image with its own prompt): nothing is edited, the source is kept everywhere.
    if (info.edit_tokens.empty()) mask_ = at::ones({info.grid_h * info.grid_w});
  }

  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    if (desc.sub != 0 || desc.text.size() == 0 || (flux_ && desc.layer < double_layers_)) return false;
    if (!ctx.pairs && mask_.defined()) return false;  // nothing left to record
    return ctx.pairs || ctx.find(Branch::Cond);
  }
  bool needs_lse(const AttentionDesc&, const ControlContext& ctx) const override {
    return ctx.pairs ? online(ctx) : !mask_.defined();
  }

  void before(AttentionCall& call) override {
    if (!call.ctx.pairs) return;
    if (!mask_.defined() || (online(call.ctx) && call.ctx.step != mask_step_)) {
      derive_mask();  // once, or with --edit-mask-steps once a step, from the steps before this one
      mask_step_ = call.ctx.step;
    }
    const TokenRange img = call.desc.image;
    at::Tensor m = mask_.to(call.q.device(), call.q.scalar_type()).view({1, 1, -1, 1});
    at::Tensor m_qk = call.ctx.step < int(call.ctx.num_steps * alpha_) ? at::ones_like(m) : m;
    call.q = call.q.clone(), call.k = call.k.clone(), call.v = call.v.clone();
    for (const auto& r : call.ctx.rows) {
      if (r.size() != 2) throw RuntimeFailure("consistedit: a branch without its [source, target] rows");
      auto fuse = [&](at::Tensor& t, const at::Tensor& w) {
        at::Tensor s = t.narrow(0, r.begin, 1).narrow(2, img.begin, img.size());
        at::Tensor g = t.narrow(0, r.begin + 1, 1).narrow(2, img.begin, img.size());
        g.copy_(s * w + g * (1 - w));
      };
      fuse(call.q, m_qk);
      fuse(call.k, m_qk);
      fuse(call.v, m);
    }
  }

  void after(AttentionCall& call) override {
    if (call.ctx.pairs ? !online(call.ctx) : mask_.defined()) return;
    const BranchRows& cond = *call.ctx.find(Branch::Cond);  // pairs: its first row is the source
    if (cols_.device() != call.q.device()) cols_ = cols_.to(call.q.device());
    // [1, N]: summed over the edit tokens, averaged over heads (the official map's order of sums commutes).
    at::Tensor p = call.image_text_probs(cond.begin, cond.begin + 1, cols_).mean(1).sum(-1);
    sum_ = sum_.defined() ? sum_ + p : p;
    ++count_;
  }

  void end(const std::vector<Image>&) override {
    if (mask_output_.empty() || !mask_.defined()) return;
    write_edit_mask(mask_output_, 1 - mask_, info_.grid_h, info_.grid_w, info_.height, info_.width);
  }

 private:
  // --edit-mask-steps: the pair's steps after the source pass record the source row and refine the mask.
  bool online(const ControlContext& ctx) const {
    return mask_steps_ > 0 && ctx.step >= mask_steps_ && !info_.edit_tokens.empty();
  }

  // attention_map_controller.get_value_to_text_mask, then the editor's threshold and inversion (on the device:
  // no sync when the mask is refined every step).
  void derive_mask() {
    if (!count_) throw RuntimeFailure("consistedit: the source pass recorded no attention");
    at::Tensor map = (sum_ / double(count_)).view({-1});
    at::Tensor norm = (map - map.min()) / (map.max() - map.min() + 1e-6);
    mask_ = 1 - (norm > 0.1).to(at::kFloat);  // 1: the source is kept
  }

  double alpha_;
  bool flux_;
  int double_layers_;
  std::string mask_output_;
  GenerationInfo info_;
  int mask_steps_;  // --edit-mask-steps, 0: off
  at::Tensor cols_, sum_, mask_;
  int64_t count_ = 0;
  int mask_step_ = -1;  // the step mask_ was derived for
};

// Words of a prompt: split at white space and commas, lower case, punctuation trimmed.
std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  auto flush = [&] {
    while (!w.empty() && std::ispunct(static_cast<unsigned char>(w.back()))) w.pop_back();
    size_t start = 0;
    while (start < w.size() && std::ispunct(static_cast<unsigned char>(w[start]))) ++start;
    if (start < w.size()) out.push_back(w.substr(start));
    w.clear();
  };
  for (unsigned char c : text) {
    if (std::isspace(c) || c == ',') flush();
    else w += char(std::tolower(c));
  }
  flush();
  return out;
}

}  // namespace

std::vector<std::string> edit_words(const GenerateRequest& r) {
  if (!r.edit_words.empty()) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos <= r.edit_words.size()) {
      size_t end = r.edit_words.find(',', pos);
      if (end == std::string::npos) end = r.edit_words.size();
      std::string w = r.edit_words.substr(pos, end - pos);
      w.erase(0, w.find_first_not_of(' '));
      w.erase(w.find_last_not_of(' ') + 1);
      if (!w.empty()) out.push_back(w);
      pos = end + 1;
    }
    if (out.empty()) throw UsageError("--edit-words: no word in '" + r.edit_words + "'");
    return out;
  }
  const auto target = words_of(r.prompt);
  std::vector<std::string> out;
  for (const auto& w : words_of(r.source_prompt))
    if (std::find(target.begin(), target.end(), w) == target.end() && std::find(out.begin(), out.end(), w) == out.end())
      out.push_back(w);
  // A given image edited with its own prompt is reconstructed: nothing is edited.
  if (out.empty() && r.image.empty())
    throw UsageError("--source-prompt: the source has no word the target lacks; name the edited words with --edit-words");
  return out;
}

std::vector<std::string> added_words(const GenerateRequest& r) {
  if (!r.edit_words.empty()) return edit_words(r);
  const auto source = words_of(r.source_prompt);
  std::vector<std::string> out;
  for (const auto& w : words_of(r.prompt))
    if (std::find(source.begin(), source.end(), w) == source.end() && std::find(out.begin(), out.end(), w) == out.end())
      out.push_back(w);
  if (out.empty())
    throw UsageError("--prompt: the target adds no word to the source; name the added object with --edit-words");
  return out;
}

void write_edit_mask(const std::string& path, const at::Tensor& edited, int64_t grid_h, int64_t grid_w, int height,
                     int width) {
  at::Tensor grid = edited.to(at::kCPU, at::kFloat).view({1, 1, grid_h, grid_w});
  at::Tensor up = at::upsample_nearest2d(grid, {height, width})[0][0];
  write_png(path, images_from_u8((up * 255).round().to(at::kByte).unsqueeze(0).unsqueeze(-1))[0]);
  log_info("edit mask written to " + path);
}

int consistedit_mask_steps(const GenerateRequest& r, int steps) {
  return r.edit_mask_steps > 0 ? std::min(r.edit_mask_steps, steps) : steps;
}

std::vector<int64_t> token_positions(const std::vector<int64_t>& ids, const std::vector<int64_t>& word) {
  if (word.empty() || word.size() > ids.size()) return {};
  for (size_t i = 0; i + word.size() <= ids.size(); ++i)
    if (std::equal(word.begin(), word.end(), ids.begin() + long(i))) {
      std::vector<int64_t> out;
      for (size_t k = 0; k < word.size(); ++k) out.push_back(int64_t(i + k));
      return out;
    }
  return {};
}

std::unique_ptr<Control> make_consistedit(const GenerateRequest& r, const ModelShape& model) {
  if (r.image.empty() && (r.resize || r.inversion != "uniinv"))
    throw UsageError(std::string(r.resize ? "--resize" : "--inversion") + ": only for edits of a given image (mmdit "
                     "edit --image ...)");
  if (r.source_prompt.empty()) {
    for (auto [flag, value] : {std::pair{"--edit-words", &r.edit_words}, {"--source-output", &r.source_output},
                               {"--mask-output", &r.mask_output}, {"--image", &r.image}})
      if (!value->empty()) throw UsageError(std::string(flag) + ": only for edits (mmdit edit --source-prompt ...)");
    if (r.edit_mask_steps) throw UsageError("--edit-mask-steps: only for edits (mmdit edit --source-prompt ...)");
    return nullptr;
  }
  if (r.edit_mask_steps && (r.edit_method != "consistedit" || !r.image.empty()))
    throw UsageError("--edit-mask-steps: only for ConsistEdit edits of a generated image (" +
                     std::string(r.image.empty() ? "FreeFlux derives its masks at its own step" :
                                                   "a given image's mask comes from its inversion") + ")");
  if (r.edit_method != "consistedit" && !is_freeflux(r.edit_method))
    throw UsageError("--edit-method " + r.edit_method + ": the methods are consistedit, freeflux-nonrigid, freeflux-add "
                     "and freeflux-background");
  if (model.family != "sd3" && model.family != "flux")
    throw UsageError("--source-prompt: consistent editing is for SD3/SD3.5 and FLUX images, not " + model.family);
  if (r.batch != 1) throw UsageError("--batch: an edit makes one source and one target image");
  parse_inversion(r.inversion);
  if (!r.regions.empty()) throw UsageError("--source-prompt: cannot be combined with --region yet");
  if (r.edit_method != "consistedit") return nullptr;  // FreeFlux (controls/freeflux.cpp)
  return std::make_unique<ConsistEdit>(r.strength, model.family == "flux", model.double_layers, r.mask_output,
                                       r.edit_mask_steps);
}

}  // namespace mmdit
