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

namespace {

struct LaunchFlags {
  int gpus = 0;
  std::string devices, parallel = "auto";
};

void add_launch_flags(CLI::App* sub, LaunchFlags& l) {
  const char* group = "Several GPUs (docs/SCALING.md)";
  sub->add_option("--gpus", l.gpus, "One generation over N GPUs of this machine (cuda:0..N-1), one worker each")
      ->group(group)
      ->check(CLI::PositiveNumber);
  sub->add_option("--devices", l.devices, "One generation over these devices, e.g. cuda:0,cuda:2 (cpu,cpu: a slow "
                  "CPU test of the same path)")->group(group);
  sub->add_option("--parallel", l.parallel, "How to split it: auto (CFG halves, then Ulysses over heads), cfg, ulysses")
      ->group(group)
      ->check(CLI::IsMember({"auto", "cfg", "ulysses"}));
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto f = std::make_shared<RequestFlags>();
  auto l = std::make_shared<LaunchFlags>();
  auto* sub = app.add_subcommand("generate", "Generate an image or a video from a prompt");
  // The flags come from the table that also defines `mmdit run`'s job keys (core/options.h).
  add_request_flags(sub, f);
  add_launch_flags(sub, *l);
  return {sub, [f, l] {
            GenerateRequest& r = complete_request(*f);
            if (in_worker()) {
              join_world(r.device, l->gpus, l->devices, l->parallel);
              generate(r);
              return;
            }
            const auto devices = requested_devices(l->gpus, l->devices);
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
