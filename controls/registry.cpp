#include "controls/registry.h"

#include "controls/kv_share.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

struct Entry {
  const char* name;
  ControlFactory make;
};

// Every control mmdit has, in the order they act at a hook point.
const Entry kControls[] = {
    {"pag", make_pag},
    {"skip-layer-guidance", make_skip_layer_guidance},
    {"stg", make_stg},
    {"text-scale", make_text_scale},
    {"skip-blocks", make_skip_blocks},
    {"attention-maps", make_attention_maps},
    {"regions", make_regional},
    {"consistedit", make_consistedit},
    {"freeflux", make_freeflux},
};

}  // namespace

std::vector<std::unique_ptr<Control>> make_controls(const GenerateRequest& r, const ModelShape& model) {
  check_multiprompt(r, model);
  std::vector<std::unique_ptr<Control>> out;
  for (const Entry& e : kControls)
    if (auto c = e.make(r, model)) out.push_back(std::move(c));
  return out;
}

}  // namespace mmdit
