// `mmdit bench`: times a whole generate() (prompt encoding, denoising loop, VAE decode) and each denoising
// step, for docs/BENCHMARKS.md. With --random-weights a model folder of configs alone (no weight files)
// is enough: weights are made on the device, so full-size models can be timed without checkpoints.
#include <chrono>
#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include "apps/commands.h"
#include "apps/launch.h"
#include "apps/request_flags.h"
#include "controls/regional.h"
#include "core/attention.h"
#include "core/errors.h"
#include "core/parallel.h"
#include "core/torch_util.h"
#include "core/weights.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

struct BenchOptions {
  std::shared_ptr<RequestFlags> flags = std::make_shared<RequestFlags>();
  GenerateRequest& req = flags->req;
  bool random_weights = false;
  int runs = 2;
  int warmup_steps = 0;  // 0: as many as the timed runs
  std::string attention = "auto";
  std::vector<std::string> variants;
  int prompts = 1;             // a multi-prompt video of this many prompts (samplers/prompt_schedule.h)
  int gpus = 0;                // one generation over several GPUs (apps/launch.h)
  std::string parallel = "auto";
  std::string profile;  // a folder: a Kineto trace of each variant's first timed run (scripts/bench/profile_summary.py)
  std::string region_kernel = "dense";  // controls/regional.h RegionKernel
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Times one request on the loaded pipeline and prints its JSON line.
void time_request(Pipeline& pipe, GenerateRequest r, const BenchOptions& o, double load_s, const std::string& variant,
                  int index) {
  pipe.resolve(r);
  const bool cuda = r.device.rfind("cuda", 0) == 0;
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  std::vector<double> totals, steps, first_steps;
  double cold_first_step = 0;  // run 0's first step: encoding plus the one-off work (cuDNN plans, graph capture)
  const int last = o.runs + (o.profile.empty() ? 0 : 1);  // --profile: one more run, traced and not timed
  for (int run = 0; run <= last; ++run) {  // run 0 warms up (kernel selection, allocator)
    GenerateRequest q = r;
    q.prompt = r.prompt + " (run " + std::to_string(run) + ")";  // a new prompt: encoding is timed too
    for (int i = 0; i < o.prompts && o.prompts > 1; ++i)
      q.prompts.push_back({q.prompt + ", part " + std::to_string(i + 1), 1});
    if (run == 0 && o.warmup_steps > 0) q.steps = o.warmup_steps;
    std::vector<double> stamps;
    sync();
    if (run == 1) reset_peak_device_memory(at::Device(r.device));
    const double start = now_s();
    stamps.push_back(start);
    // --profile: a Kineto trace of the denoising steps after the first (no encoding, no decoding).
    namespace prof = torch::autograd::profiler;
    const bool profile = run > o.runs;
    int done = 0;
    auto on_step = [&](int, int) {
      sync();  // per-step times need the device to finish the step
      stamps.push_back(now_s());
      ++done;
      if (profile && done == 1) {
        const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
        const std::set<torch::profiler::impl::ActivityType> what = {torch::profiler::impl::ActivityType::CPU,
                                                                   torch::profiler::impl::ActivityType::CUDA};
        prof::prepareProfiler(config, what);
        prof::enableProfiler(config, what);
      } else if (profile && done == q.steps && done > 1) {
        prof::disableProfiler()->save(o.profile + "/trace-" + std::to_string(index) + ".json");
      }
    };
    if (pipe.is_video()) pipe.generate_video(q, on_step);
    else pipe.generate(q, on_step);
    sync();
    const double first_step = stamps.size() > 1 ? stamps[1] - stamps[0] : 0;  // encoding and step 1
    if (run == 0) cold_first_step = first_step;  // with the one-off work
    if (run == 0 || profile) continue;
    totals.push_back(now_s() - start);
    first_steps.push_back(first_step);
    for (size_t i = 2; i < stamps.size(); ++i) steps.push_back(stamps[i] - stamps[i - 1]);  // step 1 includes encoding
  }
  nlohmann::ordered_json j = {{"impl", "mmdit"}, {"model", pipe.name()}, {"variant", variant}, {"device", r.device},
                              {"dtype", r.dtype}, {"width", r.width}, {"height", r.height}, {"frames", r.frames},
                              {"steps", r.steps}, {"cfg", r.cfg}, {"batch", r.batch},
                              {"attention", o.attention}, {"random_weights", o.random_weights},
                              {"load_s", load_s}, {"step_ms", median(steps) * 1000.0},
                              {"cold_first_step_ms", cold_first_step * 1000.0},
                              {"first_step_ms", median(first_steps) * 1000.0},
                              {"pipeline_s", median(totals)}, {"runs", o.runs},
                              {"vae_tiling", r.vae_tiling}, {"prompts", o.prompts},
                              {"peak_memory_gib", double(peak_device_memory(at::Device(r.device))) / (1u << 30)},
                              {"memory_after_gib", double(device_memory_allocated(at::Device(r.device))) / (1u << 30)},
                              {"request", request_json(r)}};
  if (world().comm) {  // several GPUs: each rank reports its own line (its peak memory)
    j["gpus"] = world().comm->size();
    j["rank"] = world().comm->rank();
    j["parallel"] = world().strategy;
  }
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

void run_bench(BenchOptions& o) {
  finish_request_flags(*o.flags);
  if (o.gpus > 1 && !in_worker()) {  // one worker per GPU, each timing its part
    const int code = run_world(requested_devices(o.gpus, ""));
    if (code != 0) throw ExitStatus{code};
    return;
  }
  if (in_worker()) join_world(o.req.device, o.gpus, "", o.parallel);
  const GenerateRequest& r = o.req;
  set_attention_backend(o.attention);
  set_region_kernel(o.region_kernel == "mask" ? RegionKernel::Mask : RegionKernel::Dense);
  if (o.random_weights) set_random_weights(true, r.device);
  const double t0 = now_s();
  auto pipe = load_pipeline(r);
  if (r.device.rfind("cuda", 0) == 0) torch::cuda::synchronize();
  const double load_s = now_s() - t0;
  time_request(*pipe, r, o, load_s, "", 0);
  int index = 0;
  // Each --variant: the same request with some flags changed, on the pipeline already loaded.
  for (const std::string& v : o.variants) {
    auto f = std::make_shared<RequestFlags>();
    f->req = r;
    CLI::App parser("variant");
    add_request_flags(&parser, f, [](const RequestOption& opt) {
      return opt.group == "Guidance" || opt.group == "Controls" || opt.group == "Editing" || opt.key == "batch" ||
             opt.key == "no_fused" || opt.key == "cuda_graphs";
    });
    try {
      parser.parse(v, false);
    } catch (const CLI::ParseError& e) {
      throw UsageError("--variant '" + v + "': " + e.what());
    }
    finish_request_flags(*f);
    time_request(*pipe, f->req, o, load_s, v, ++index);
  }
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  GenerateRequest& r = o->req;
  r.prompt = "a photo of an astronaut riding a horse on mars";
  auto* sub = app.add_subcommand("bench", "Time generation (whole pipeline and per step) for docs/BENCHMARKS.md");
  sub->add_option("-m,--model", r.model, "Model folder (configs suffice with --random-weights)")->required();
  sub->add_option("--device", r.device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--dtype", r.dtype, "f32, f16 or bf16");
  sub->add_option("-W,--width", r.width, "Width")->check(CLI::PositiveNumber);
  sub->add_option("-H,--height", r.height, "Height")->check(CLI::PositiveNumber);
  sub->add_option("--steps", r.steps, "Steps")->check(CLI::PositiveNumber);
  sub->add_option("--cfg", r.cfg, "Guidance scale")->check(CLI::NonNegativeNumber);
  sub->add_option("--frames", r.frames, "Video frames (video models)")->check(CLI::PositiveNumber);
  sub->add_option("--warmup-steps", o->warmup_steps, "Steps of the untimed warm-up run (default: --steps)");
  sub->add_flag("--vae-tiling", r.vae_tiling, "Decode video in spatial tiles");
  sub->add_option("--runs", o->runs, "Timed runs after one warm-up")->check(CLI::PositiveNumber);
  sub->add_option("--profile", o->profile, "Folder for a Kineto trace of each variant's first timed run (trace-N.json)");
  sub->add_option("--attention", o->attention, "SDPA backend: auto, flash, cudnn, efficient, math")->capture_default_str();
  sub->add_option("--prompts", o->prompts, "Time a multi-prompt video of N prompts (video models)")
      ->check(CLI::Range(1, 16));
  sub->add_option("--gpus", o->gpus, "Time one generation over N GPUs (one worker each)")->check(CLI::PositiveNumber);
  sub->add_option("--parallel", o->parallel, "With --gpus: auto, cfg or ulysses")
      ->check(CLI::IsMember({"auto", "cfg", "ulysses"}));
  sub->add_option("--region-kernel", o->region_kernel,
                  "Regional prompts' attention: dense (calls per region where the regions split the image) or mask "
                  "(one masked call)")
      ->check(CLI::IsMember({"dense", "mask"}))
      ->capture_default_str();
  sub->add_flag("--random-weights", o->random_weights, "Make random weights on the device instead of loading files");
  sub->add_flag("--fp8", r.fp8, "fp8 GEMMs in the transformer blocks (the model is loaded with them; not a --variant)");
  sub->add_flag("--fp8-attention", r.fp8_attention, "with --fp8, FLUX and CogVideoX: the attention in fp8 too");
  sub->add_option("--batch", r.batch, "Images per run (--batch 3 --cfg 1: three plain rows, a baseline)")
      ->check(CLI::Range(1, 64));
  sub->add_option("--variant", o->variants,
                  "Also time the request with these flags changed, e.g. '--pag-scale 3 --pag-layers 13' (repeatable; "
                  "the pipeline is loaded once)");
  // The guidance and control flags of `generate`, to time what a control costs.
  add_request_flags(sub, o->flags, [](const RequestOption& opt) {
    return (opt.group == "Guidance" || opt.group == "Controls") && opt.key != "cfg";
  });
  return {sub, [o] { run_bench(*o); }};
}

}  // namespace mmdit
