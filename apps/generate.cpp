// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family. With --gpus N / --devices, one generation runs over several devices
// (core/parallel.h): this process starts one worker per device (apps/launch.h) and rank 0 writes the output.
#include "apps/commands.h"
#include "apps/launch.h"
#include "apps/request_flags.h"
#include "core/errors.h"
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
            if (r.parallel != "auto" && r.parallel != "cfg" && r.parallel != "ulysses")
              throw UsageError("--parallel: expected auto, cfg or ulysses, got '" + r.parallel + "'");
            if (in_worker()) {
              join_world(r.device, r.gpus, r.devices, r.parallel);
              generate(r);
              return;
            }
            const auto devices = requested_devices(r.gpus, r.devices);
            if (devices.size() > 1) {
              if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
              // The seed drawn here goes to every worker.
              const int code = run_world(devices, {{"MMDIT_SEED", std::to_string(r.seed)}});
              if (code != 0) throw ExitStatus{code};
              return;
            }
            if (devices.size() == 1) r.device = devices[0];
            if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
            generate(r);
          }};
}

}  // namespace mmdit
