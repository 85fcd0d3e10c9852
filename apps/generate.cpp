// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family.
#include <random>

#include "apps/commands.h"
#include "core/errors.h"
#include "core/log.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

struct GenerateFlags {
  GenerateRequest req;
  std::string device = "cpu", dtype;
  std::string slg_layers;
  bool seed_given = false;
};

std::vector<int> parse_int_list(const std::string& s, const std::string& flag) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError(flag + ": expected comma-separated layer numbers like 7,8,9, got '" + s + "'");
    out.push_back(std::stoi(item));
    pos = end + 1;
  }
  return out;
}

void run_generate(GenerateFlags& f) {
  GenerateRequest& r = f.req;
  if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
  if (!f.slg_layers.empty()) r.slg_layers = parse_int_list(f.slg_layers, "--slg-layers");
  if (!f.seed_given) {
    r.seed = std::random_device{}() & 0xffffffffu;  // printed and embedded, so it can be reproduced
  }
  r.device = f.device;
  r.dtype = f.dtype;
  generate(r);
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  GenerateRequest& r = f->req;
  auto* sub = app.add_subcommand("generate", "Generate an image from a prompt");
  sub->add_option("-m,--model", r.model, "Diffusers folder or single-file checkpoint")->required();
  sub->add_option("-p,--prompt", r.prompt, "What to draw")->required();
  sub->add_option("-n,--negative-prompt", r.negative_prompt, "What to avoid (with --cfg > 1)");
  sub->add_option("-W,--width", r.width, "Image width in pixels (default: the model's)")->check(CLI::PositiveNumber);
  sub->add_option("-H,--height", r.height, "Image height in pixels (default: the model's)")->check(CLI::PositiveNumber);
  sub->add_option("--steps", r.steps, "Denoising steps (default: the pipeline's, 28 for SD3)")->check(CLI::PositiveNumber);
  sub->add_option("--cfg", r.cfg, "Classifier-free guidance scale (default: the pipeline's, 7.0 for SD3)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--guidance", r.guidance, "Distilled guidance scale of FLUX.1-dev (default 3.5; schnell ignores it)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-s,--seed", r.seed, "Noise seed (default: random, printed)")
      ->each([f](const std::string&) { f->seed_given = true; });
  sub->add_option("--shift", r.shift, "Flow-matching shift (default: the scheduler config's)")->check(CLI::PositiveNumber);
  sub->add_option("--device", f->device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--dtype", f->dtype, "f32, f16 or bf16 (default: f32 on cpu, bf16 on cuda)");
  sub->add_option("-o,--output", r.output, "Output PNG (default: mmdit-SEED.png); videos: out.mp4 or a frame pattern like out_%03d.png");
  sub->add_option("--batch", r.batch, "Images to generate from the prompt")->check(CLI::Range(1, 64));
  sub->add_option("--max-sequence-length", r.max_sequence_length, "T5 tokens (SD3 default 256)")->check(CLI::Range(1, 512));
  sub->add_option("--slg-scale", r.slg_scale, "Skip-layer guidance scale (0 = off)")->check(CLI::NonNegativeNumber);
  sub->add_option("--slg-layers", f->slg_layers, "Layers skipped for skip-layer guidance, e.g. 7,8,9");
  sub->add_option("--slg-start", r.slg_start, "Skip-layer guidance starts after this fraction of steps")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--slg-stop", r.slg_stop, "Skip-layer guidance stops before this fraction of steps")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--frames", r.frames, "Video frames, 4k+1 (video models; default: the model's, 49 for CogVideoX)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--fps", r.fps, "Video frame rate (default: the model's, 8)")->check(CLI::Range(1, 240));
  sub->add_option("--crf", r.crf, "MP4 quality, 0 (lossless) to 51; lower is better")->check(CLI::Range(0, 51))->capture_default_str();
  sub->add_option("--sampler", r.sampler, "Video sampler: ddim or dpm (default: the model's scheduler)");
  sub->add_flag("--dynamic-cfg", r.dynamic_cfg, "CogVideoX's dynamic guidance scale (use_dynamic_cfg)");
  sub->add_flag("--vae-tiling", r.vae_tiling, "Decode video in overlapping spatial tiles (less memory)");
  sub->add_option("--clip-l", r.clip_l, "CLIP-L text encoder (file or folder) for single-file checkpoints");
  sub->add_option("--clip-g", r.clip_g, "OpenCLIP bigG text encoder (file or folder)");
  sub->add_option("--t5", r.t5, "T5-XXL text encoder (file or folder)");
  sub->add_option("--vae", r.vae, "VAE (file or folder), e.g. FLUX's ae.safetensors for single-file checkpoints");
  sub->add_option("--tokenizer-dir", r.tokenizer_dir, "Folder with tokenizer/, tokenizer_2/, tokenizer_3/ subfolders");
  return {sub, [f] { run_generate(*f); }};
}

}  // namespace mmdit
