// Attention controls for transformer-level tests: the controls a request asks for, in one forward pass's
// context whose rows are all of the cond branch.
#pragma once
#include <memory>
#include <vector>

#include "controls/control.h"
#include "models/pipeline.h"

namespace mmdit::test {

struct PassControls {
  std::vector<std::unique_ptr<Control>> owned;
  ControlContext ctx;
  PassControls(const GenerateRequest& r, const ModelShape& model, int64_t batch) : owned(make_controls(r, model)) {
    ctx.model = model;
    ctx.step = 0;
    ctx.num_steps = 1;
    ctx.rows = {BranchRows{Branch::Cond, 0, 0.0, 0, batch}};
    for (auto& c : owned) ctx.controls.push_back(c.get());
  }
};

}  // namespace mmdit::test
