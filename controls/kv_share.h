// DiTCtrl's KV sharing between adjacent tiles of a multi-prompt video (controls/kv_share.cpp).
#pragma once
#include <memory>
#include <vector>

#include "controls/control.h"

namespace mmdit {

// On `layers` during steps first_step..last_step (inclusive), in a pass whose branches are [source, target]
// row pairs (ControlContext::pairs), the target rows attend with the source rows' keys and values.
std::unique_ptr<Control> make_kv_share(const std::vector<int>& layers, int first_step, int last_step);

// DiTCtrl's mask-guided sharing (KVSharingMaskGuidedAdaLNMixin, controls.md §1). In the sharing steps, every layer's
// video->text probabilities of the cond rows (exact, log-sum-exp trick), averaged over heads and summed over each
// tile's subject tokens, accumulate over the layers of the pass. On a shared layer they give a foreground mask per
// tile (per-frame min-max normalised, >= threshold), and the target attends twice to the source's keys and values,
// once to text + the source's foreground video, once to text + its background, blended by the target's mask (text
// rows: 1 on the subject tokens). `frames` x `grid_h` x `grid_w` are the video tokens of a tile.
class MaskedKvShare : public Control {
 public:
  virtual ~MaskedKvShare() = default;
  // The subject tokens (positions in the text range) of the pass's source and target tiles.
  virtual void set_words(std::vector<int64_t> source, std::vector<int64_t> target) = 0;
};
std::unique_ptr<MaskedKvShare> make_masked_kv_share(const std::vector<int>& layers, int first_step, int last_step,
                                                    int64_t frames, int64_t grid_h, int64_t grid_w,
                                                    double threshold = 0.3);

// The foreground mask of accumulated video->text probabilities [frames * grid_h * grid_w]: min-max normalised per
// frame, >= threshold (exposed for tests).
at::Tensor kv_share_mask(const at::Tensor& probs, int64_t frames, double threshold);

// Whether the request is a multi-prompt video (more than one tile), and its flags checked against the model:
// throws UsageError for several prompts on an image model, a multi-prompt flag without several prompts, or a
// --kv-share-layers layer the model lacks.
bool check_multiprompt(const GenerateRequest& r, const ModelShape& model);

}  // namespace mmdit
