// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family. With --gpus N / --devices, one generation runs over several devices
// (core/parallel.h): this process starts one worker per device (apps/launch.h) and rank 0 writes the output.
#include <cstdlib>

#include "apps/commands.h"
#include "apps/launch.h"
#include "apps/request_flags.h"
#include "core/comm.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/parallel.h"
#include "models/pipeline.h"

namespace mmdit {

namespace {

struct LaunchFlags {
  int gpus = 0;
  std::string devices, parallel = "auto";
};

// A worker (started by us or by torchrun): joins the rendezvous and the world of this generation.
void join_world(GenerateRequest& r, const LaunchFlags& l) {
  const Rendezvous rv = Rendezvous::from_env();
  if (const char* d = std::getenv("MMDIT_DEVICE"); d && *d) {
    r.device = d;
  } else if (!l.devices.empty() || l.gpus > 0) {
    r.device = requested_devices(l.gpus, l.devices).at(size_t(rv.local_rank));
  } else if (r.device.rfind("cuda", 0) == 0) {
    r.device = "cuda:" + std::to_string(rv.local_rank);  // torchrun: one GPU per local rank
  }
  if (rv.rank > 0) init_logging(Verbosity::Quiet);
  auto store = connect_store(rv);
  set_world({make_process_comm(store, rv, r.device), l.parallel});
}

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
              join_world(r, *l);
              generate(r);
              return;
            }
            const auto devices = requested_devices(l->gpus, l->devices);
            if (devices.size() > 1) {
              if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
              std::vector<std::map<std::string, std::string>> envs;
              const std::string port = std::to_string(free_port());
              for (size_t i = 0; i < devices.size(); ++i)
                envs.push_back({{"RANK", std::to_string(i)}, {"LOCAL_RANK", std::to_string(i)},
                                {"WORLD_SIZE", std::to_string(devices.size())}, {"MASTER_ADDR", "127.0.0.1"},
                                {"MASTER_PORT", port}, {"MMDIT_DEVICE", devices[i]},
                                // the seed drawn here, so that every worker uses it
                                {"MMDIT_SEED", std::to_string(r.seed)}});
              const int code = run_workers(envs);
              if (code != 0) throw ExitStatus{code};
              return;
            }
            if (devices.size() == 1) r.device = devices[0];
            if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
            generate(r);
          }};
}

}  // namespace mmdit
