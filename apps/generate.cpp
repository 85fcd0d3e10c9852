// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family.
#include <random>

#include "apps/commands.h"
#include "apps/request_flags.h"
#include "core/log.h"
#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {

Command add_generate_command(CLI::App& app) {
  auto f = std::make_shared<RequestFlags>();
  auto* sub = app.add_subcommand("generate", "Generate an image or a video from a prompt");
  // The flags come from the table that also defines `mmdit run`'s job keys (core/options.h).
  add_request_flags(sub, f);
  return {sub, [f] {
            finish_request_flags(*f);
            GenerateRequest& r = f->req;
            if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
            if (r.model.empty()) r.model = builtin_model();
            // Without --seed a seed is drawn; it is printed and embedded, so the image can be reproduced.
            if (!f->seed_given) r.seed = std::random_device{}() & 0xffffffffu;
            generate(r);
          }};
}

}  // namespace mmdit
