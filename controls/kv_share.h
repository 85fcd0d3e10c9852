// DiTCtrl's KV sharing between adjacent tiles of a multi-prompt video (controls/kv_share.cpp).
#pragma once
#include <memory>
#include <vector>

#include "controls/control.h"

namespace mmdit {

// On `layers` during steps first_step..last_step (inclusive), in a pass whose branches are [source, target]
// row pairs (ControlContext::pairs), the target rows attend with the source rows' keys and values.
std::unique_ptr<Control> make_kv_share(const std::vector<int>& layers, int first_step, int last_step);

// Whether the request is a multi-prompt video (more than one tile), and its flags checked against the model:
// throws UsageError for several prompts on an image model, a multi-prompt flag without several prompts, or a
// --kv-share-layers layer the model lacks.
bool check_multiprompt(const GenerateRequest& r, const ModelShape& model);

}  // namespace mmdit
