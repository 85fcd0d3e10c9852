// `mmdit edit`: consistent editing of a generated image. The source prompt and the target prompt (--prompt) are
// made from the same noise in one batch; the target goes to -o, the source to --source-output, the derived edit
// mask to --mask-output (docs/CONTROLS.md). Every `generate` flag applies.
#include <random>

#include "apps/commands.h"
#include "apps/request_flags.h"
#include "core/errors.h"
#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {

Command add_edit_command(CLI::App& app) {
  auto f = std::make_shared<RequestFlags>();
  auto* sub = app.add_subcommand("edit", "Edit an image consistently: source and target prompts from the same noise");
  add_request_flags(sub, f);
  return {sub, [f] {
            finish_request_flags(*f);
            GenerateRequest& r = f->req;
            if (r.source_prompt.empty()) throw UsageError("--source-prompt: mmdit edit needs the source image's prompt");
            if (r.model.empty()) r.model = builtin_model();
            if (!f->seed_given) r.seed = std::random_device{}() & 0xffffffffu;
            generate(r);
          }};
}

}  // namespace mmdit
