// Block-level controls from "Unraveling MMDiT Blocks" (research/controls.md §8), on every row and step:
//   --text-scale L,L:lambda  the text stream entering those blocks is multiplied by lambda (0 disables the
//                            block's text condition, 2 enhances it);
//   --skip-blocks L,L        those blocks are left out (both streams), e.g. to trade quality for speed.
#include <set>

#include "controls/registry.h"
#include "core/errors.h"
#include "core/options.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

class TextScale : public Control {
 public:
  TextScale(std::vector<int> layers, double factor) : layers_(layers.begin(), layers.end()), factor_(factor) {}
  std::string name() const override { return "text-scale"; }
  void plan_block(const ControlContext&, int layer, BlockPlan& plan) const override {
    if (layers_.count(layer)) plan.text_scale *= factor_;
  }

 private:
  std::set<int> layers_;
  double factor_;
};

class SkipBlocks : public Control {
 public:
  explicit SkipBlocks(std::vector<int> layers) : layers_(layers.begin(), layers.end()) {}
  std::string name() const override { return "skip-blocks"; }
  void plan_block(const ControlContext&, int layer, BlockPlan& plan) const override {
    if (layers_.count(layer)) plan.skip = true;
  }

 private:
  std::set<int> layers_;
};

}  // namespace

std::unique_ptr<Control> make_text_scale(const GenerateRequest& r, const ModelShape& model) {
  if (r.text_scale.empty()) return nullptr;
  auto [layers, factor] = parse_layer_scale(r.text_scale, "--text-scale");
  check_layers(layers, model, "--text-scale");
  return std::make_unique<TextScale>(layers, factor);
}

std::unique_ptr<Control> make_skip_blocks(const GenerateRequest& r, const ModelShape& model) {
  if (r.skip_blocks.empty()) return nullptr;
  check_layers(r.skip_blocks, model, "--skip-blocks");
  if (int(std::set<int>(r.skip_blocks.begin(), r.skip_blocks.end()).size()) == model.layers)
    throw UsageError("--skip-blocks: leaves out every block of the model");
  return std::make_unique<SkipBlocks>(r.skip_blocks);
}

}  // namespace mmdit
