// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family.
#include "apps/commands.h"
#include "apps/request_flags.h"
#include "core/log.h"
#include "models/pipeline.h"

namespace mmdit {

Command add_generate_command(CLI::App& app) {
  auto f = std::make_shared<RequestFlags>();
  auto* sub = app.add_subcommand("generate", "Generate an image or a video from a prompt");
  // The flags come from the table that also defines `mmdit run`'s job keys (core/options.h).
  add_request_flags(sub, f);
  return {sub, [f] {
            GenerateRequest& r = complete_request(*f);
            if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
            generate(r);
          }};
}

}  // namespace mmdit
