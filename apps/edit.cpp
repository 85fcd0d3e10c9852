// `mmdit edit`: consistent editing. The source prompt and the target prompt (--prompt) are made from the same noise
// in one batch (with --image, the noise the given image inverts to, and the source follows the inverted path); the
// target goes to -o, the source to --source-output, the derived edit mask to --mask-output (docs/CONTROLS.md).
// Every `generate` flag applies.
#include "apps/commands.h"
#include "apps/request_flags.h"
#include "core/errors.h"
#include "models/pipeline.h"

namespace mmdit {

Command add_edit_command(CLI::App& app) {
  auto f = std::make_shared<RequestFlags>();
  auto* sub = app.add_subcommand("edit", "Edit an image consistently: source and target prompts from the same noise");
  add_request_flags(sub, f);
  return {sub, [f] {
            GenerateRequest& r = complete_request(*f);
            if (r.source_prompt.empty()) throw UsageError("--source-prompt: mmdit edit needs the source image's prompt");
            generate(r);
          }};
}

}  // namespace mmdit
