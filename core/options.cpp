#include "core/options.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/errors.h"

namespace mmdit {
namespace fs = std::filesystem;
using Type = RequestOption::Type;

std::string RequestOption::long_flag() const {
  std::string f = "--" + key;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

namespace {

using R = GenerateRequest;

struct Table {
  std::vector<RequestOption> v;
  std::string group;

  RequestOption& add(std::string key, std::string shrt, std::string help, Type t) {
    RequestOption o;
    o.key = std::move(key);
    o.short_flag = std::move(shrt);
    o.help = std::move(help);
    o.type = t;
    o.group = group;
    v.push_back(o);
    return v.back();
  }
  RequestOption& str(std::string key, std::string shrt, std::string help, Type t, std::string R::*m) {
    RequestOption& o = add(std::move(key), std::move(shrt), std::move(help), t);
    o.str = m;
    return o;
  }
  RequestOption& integer(std::string key, std::string shrt, std::string help, int R::*m, std::optional<double> min,
                         std::optional<double> max, bool min_exclusive = false) {
    RequestOption& o = add(std::move(key), std::move(shrt), std::move(help), Type::Integer);
    o.integer = m, o.min = min, o.max = max, o.min_exclusive = min_exclusive;
    return o;
  }
  RequestOption& number(std::string key, std::string help, double R::*m, std::optional<double> min,
                        std::optional<double> max, bool min_exclusive = false) {
    RequestOption& o = add(std::move(key), "", std::move(help), Type::Number);
    o.number = m, o.min = min, o.max = max, o.min_exclusive = min_exclusive;
    return o;
  }
  RequestOption& layers(std::string key, std::string help, std::vector<int> R::*m) {
    RequestOption& o = add(std::move(key), "", std::move(help), Type::IntList);
    o.list = m, o.min = 0;
    return o;
  }
  RequestOption& flag(std::string key, std::string help, bool R::*m) {
    RequestOption& o = add(std::move(key), "", std::move(help), Type::Flag);
    o.flag = m;
    return o;
  }
};

std::vector<RequestOption> make_options() {
  Table t;
  t.group = "Model";
  t.str("model", "m", "Diffusers folder or single-file checkpoint (default: the built-in shapes-world demo)", Type::Path,
        &R::model);
  t.str("device", "", "cpu, cuda or cuda:N", Type::String, &R::device).job_help = "cpu, cuda or cuda:N (default: cpu)";
  t.str("dtype", "", "f32, f16 or bf16 (default: f32 on cpu, bf16 on cuda)", Type::String, &R::dtype).choices = {
      "f32", "f16", "bf16", "fp32", "fp16", "float32", "float16", "bfloat16"};
  t.flag("no_fused", "CUDA: run the plain ATen path instead of the fused kernels (for comparison)", &R::no_fused);
  t.flag("cuda_graphs", "CUDA: replay each plain step as a CUDA graph (fewer kernel launches: for small models and "
         "sizes; no gain at 1024² on SD3.5-large or FLUX, docs/BENCHMARKS.md)", &R::cuda_graphs);
  t.flag("fp8", "CUDA, Hopper or newer, bf16: the transformer blocks' GEMMs in fp8 (faster, lossy: speed and PSNR in "
         "docs/BENCHMARKS.md)", &R::fp8);
  t.flag("fp8_attention", "With --fp8 on FLUX and CogVideoX: the attention in fp8 too (cuDNN; faster, lossier: "
         "docs/BENCHMARKS.md)",
         &R::fp8_attention);

  t.group = "Image";
  t.str("prompt", "p", "What to draw", Type::String, &R::prompt).required = true;
  t.str("negative_prompt", "n", "What to avoid (with --cfg > 1)", Type::String, &R::negative_prompt);
  t.integer("width", "W", "Image width in pixels (default: the model's)", &R::width, 0, std::nullopt, true);
  t.integer("height", "H", "Image height in pixels (default: the model's)", &R::height, 0, std::nullopt, true);
  t.integer("steps", "", "Denoising steps (default: the pipeline's, 28 for SD3)", &R::steps, 0, std::nullopt, true);
  {
    RequestOption& o = t.add("seed", "s", "Noise seed (default: random, printed)", Type::Seed);
    o.job_help = "Noise seed (default: random, recorded in the report); with \"count\", the first seed";
  }
  t.number("shift", "Flow-matching shift (default: the scheduler config's)", &R::shift, 0, std::nullopt, true);
  t.str("output", "o", "Output PNG (default: mmdit-SEED.png); videos: out.mp4 or a frame pattern like out_%03d.png",
        Type::String, &R::output)
      .job_help =
      "Output path template with {index} (run number after expansion, from 0), {seed}, {prompt_slug} and "
      "{date} (YYYY-MM-DD); relative to the job file's folder; .png for images, .mp4 or a frame pattern like "
      "f_%03d.png for videos; default mmdit-{index}-{seed}.png";
  t.integer("batch", "", "Images to generate from the prompt", &R::batch, 1, 64);

  t.group = "Guidance";
  t.number("cfg", "Classifier-free guidance scale (default: the pipeline's, 7.0 for SD3)", &R::cfg, 0, std::nullopt);
  t.number("guidance", "Distilled guidance scale of FLUX.1-dev (default 3.5; schnell ignores it)", &R::guidance, 0,
           std::nullopt);
  t.number("apg_eta", "Adaptive projected guidance (APG) instead of CFG: weight of the parallel part (default 1)",
           &R::apg_eta, 0, std::nullopt)
      .enables = &R::apg;
  t.number("apg_norm_threshold", "APG: the guidance difference is clipped to this norm, 0 = off (default 15)",
           &R::apg_norm_threshold, 0, std::nullopt)
      .enables = &R::apg;
  t.number("apg_momentum", "APG: momentum of the running guidance difference, e.g. -0.5 (default 0)", &R::apg_momentum,
           -1, 1)
      .enables = &R::apg;
  t.flag("cfg_zero_star", "CFG-Zero*: rescaled unconditional prediction, zero velocity in the first steps",
         &R::cfg_zero_star);
  t.integer("cfg_zero_steps", "", "CFG-Zero*: steps that predict zero (default 1)", &R::cfg_zero_steps, 0, std::nullopt);

  t.group = "Controls";
  t.number("pag_scale", "Perturbed-attention guidance scale (0 = off)", &R::pag_scale, 0, std::nullopt);
  t.layers("pag_layers", "PAG: blocks whose attention is perturbed, e.g. 7,8 (default 1; FLUX counts double then "
                         "single blocks)",
           &R::pag_layers);
  t.str("pag_heads", "", "PAG on single heads (HeadHunter SoftPAG): layer:head pairs, e.g. 12:3,13:7", Type::HeadList,
        &R::pag_heads);
  t.number("pag_u", "PAG: perturbed heads give (1-u) attention + u identity, 0..1 (default 1)", &R::pag_u, 0, 1);
  t.str("pag_mode", "", "PAG's identity: image (image-to-image only, diffusers' PAG) or full (every token, "
                        "HeadHunter)",
        Type::String, &R::pag_mode)
      .choices = {"image", "full"};
  t.number("pag_adaptive_scale", "PAG: scale - this x (1000 - timestep), floored at 0 (diffusers)",
           &R::pag_adaptive_scale, 0, std::nullopt);
  t.number("slg_scale", "Skip-layer guidance scale (0 = off)", &R::slg_scale, 0, std::nullopt);
  t.layers("slg_layers", "Layers skipped for skip-layer guidance, e.g. 7,8,9", &R::slg_layers);
  t.number("slg_start", "Skip-layer guidance starts after this fraction of steps", &R::slg_start, 0.0, 1.0);
  t.number("slg_stop", "Skip-layer guidance stops before this fraction of steps", &R::slg_stop, 0.0, 1.0);
  t.number("stg_scale", "Spatiotemporal skip guidance for CogVideoX (STG-R; 0 = off)", &R::stg_scale, 0, std::nullopt);
  t.layers("stg_layers", "STG: blocks skipped in the perturbed pass (default 11)", &R::stg_layers);
  t.flag("stg_rescale", "STG: rescale the guided prediction to the conditional one's spread", &R::stg_rescale);
  t.str("text_scale", "", "Scale the text stream entering blocks: layers:factor, e.g. 0,1,2:1.5", Type::LayerScale,
        &R::text_scale);
  t.layers("skip_blocks", "Leave these blocks out (both streams), e.g. 20,21", &R::skip_blocks);
  t.str("attention_maps", "", "Write image-to-text attention maps of the prompt's tokens to this folder", Type::Folder,
        &R::attention_maps)
      .job_help = "Folder for attention maps (created; relative to the job file's folder; {index}, {seed}, "
                  "{prompt_slug} and {date} as in output)";
  t.layers("attention_maps_layers", "Layers averaged into the attention maps (default: all)", &R::attention_maps_layers);
  {
    RequestOption& o = t.add("regions", "", "Regional prompts: --region X0,Y0,X1,Y1:PROMPT (a box in output pixels, right "
                             "and bottom exclusive) or --region-mask FILE.png:PROMPT (white = the region); repeatable; "
                             "--prompt is the base prompt", Type::Regions);
    o.job_help = "Regional prompts: [{\"box\": [x0, y0, x1, y1], \"prompt\": ...} (output pixels, right and bottom "
                 "exclusive) or {\"mask\": \"file.png\", \"prompt\": ...} (white = the region; relative to the job "
                 "file's folder)]; \"prompt\" is the base prompt";
  }
  t.number("region_base_ratio", "Regional prompts: weight of the base prompt in every block (default 0.3)",
           &R::region_base_ratio, 0, 1);
  t.integer("region_steps", "", "Regional prompts: the first steps that use the regions (default 10)", &R::region_steps,
            0, std::nullopt);
  t.str("region_background", "", "Regional prompts: prompt of the area no region covers (default: the base prompt)",
        Type::String, &R::region_background);

  t.group = "Editing";
  t.str("source_prompt", "", "Edit (mmdit edit): the source image's prompt; --prompt is the target, made from the same "
                             "noise in one batch",
        Type::String, &R::source_prompt);
  t.str("edit_method", "", "Edit method: consistedit (SD3/SD3.5; FLUX single blocks), or on FLUX FreeFlux's "
                           "freeflux-nonrigid (pose), freeflux-add (an object) or freeflux-background (keep the object "
                           "named by --edit-words)",
        Type::String, &R::edit_method)
      .choices = {"consistedit", "freeflux-nonrigid", "freeflux-add", "freeflux-background"};
  t.number("strength", "Edit: ConsistEdit's alpha, the fraction of early steps whose structure (Q, K) is the "
                       "source's everywhere, 0..1 (default 1: colour and material edits; 0.1-0.3 for shape edits)",
           &R::strength, 0, 1);
  t.integer("edit_mask_steps", "", "Edit, ConsistEdit of a generated image: run the source alone for its first N "
            "steps only, then refine the edit mask each step from the pair's source row (default 0: the official "
            "source pass over every step; N = 1 runs one step of it, saving about a third of the edit: docs/CONTROLS.md)",
            &R::edit_mask_steps, 0, std::nullopt);
  t.str("edit_words", "", "Edit: words whose attention marks the edited region, comma-separated (default: the words "
                          "of the source prompt that the target lacks)",
        Type::String, &R::edit_words);
  t.str("source_output", "", "Edit: write the source image here too (PNG)", Type::String, &R::source_output);
  t.str("mask_output", "", "Edit: write the derived edit mask here (PNG, white = edited)", Type::String, &R::mask_output);
  t.str("image", "", "Edit: an image to edit (PNG or JPEG) instead of a generated source; it is inverted along the "
                     "flow and its size is the output's",
        Type::Path, &R::image);
  t.flag("resize", "Edit: scale --image to --width/--height (default: the nearest size the model takes) rather than "
                   "refuse a size the model cannot take",
         &R::resize);
  t.str("inversion", "", "Edit: how --image is inverted: uniinv (default, ConsistEdit's) or euler", Type::String,
        &R::inversion)
      .choices = {"uniinv", "euler"};

  t.group = "Video";
  t.integer("frames", "", "Video frames, 4k+1 (video models; default: the model's, 49 for CogVideoX)", &R::frames, 0,
            std::nullopt, true);
  t.integer("fps", "", "Video frame rate (default: the model's, 8)", &R::fps, 1, 240);
  t.integer("crf", "", "MP4 quality, 0 (lossless) to 51; lower is better (default 18)", &R::crf, 0, 51);
  t.str("sampler", "", "Video sampler: ddim or dpm (default: the model's scheduler)", Type::String, &R::sampler)
      .choices = {"ddim", "dpm"};
  t.flag("dynamic_cfg", "CogVideoX's dynamic guidance scale (use_dynamic_cfg)", &R::dynamic_cfg);
  t.flag("vae_tiling", "Decode video in overlapping spatial tiles (less memory)", &R::vae_tiling);
  {
    RequestOption& o = t.add("prompts", "", "Multi-prompt video: the prompts in order (--prompt given several times, or "
                             "--prompts-file)", Type::Prompts);
    o.job_help = "Multi-prompt video: the prompts in order, each a string or {\"prompt\": ..., \"tiles\": N} to hold it "
                 "for N tiles; replaces \"prompt\"";
  }
  t.integer("overlap", "", "Multi-prompt video: latent frames shared by adjacent tiles (default: about 70% of a tile)",
            &R::overlap, 0, std::nullopt);
  t.integer("transition_tiles", "", "Multi-prompt video: tiles between two prompts, with interpolated text (default 2)",
            &R::transition_tiles, 0, 16);
  t.layers("kv_share_layers", "Multi-prompt video: layers where each tile attends to the previous tile's keys and values "
                            "(default: the last sixth of the layers)", &R::kv_share_layers);
  t.str("kv_share_steps", "", "Multi-prompt video: steps FIRST-LAST (0-based) of the K/V sharing (default: 4% to 48% of "
                              "the steps, DiTCtrl's 2-24 of 50)", Type::String, &R::kv_share_steps);
  t.flag("no_kv_share", "Multi-prompt video: no K/V sharing between tiles (latent blending only)", &R::no_kv_share);
  t.str("kv_share_words", "", "Multi-prompt video: DiTCtrl's mask-guided sharing, one subject word per prompt "
        "(comma-separated): a tile's foreground reads the previous tile's foreground, its background the background",
        Type::String, &R::kv_share_words);

  t.group = "Several GPUs";
  t.integer("gpus", "", "One generation over N GPUs of this machine (cuda:0..N-1), one worker each; the same image as "
            "one GPU (docs/SCALING.md)", &R::gpus, 1, 64);
  t.str("devices", "", "One generation over these devices, e.g. cuda:0,cuda:2 (cpu,cpu: a slow CPU test of the same "
        "path)", Type::String, &R::devices);
  t.str("parallel", "", "How to split it: auto (CFG halves, then Ulysses over heads), cfg or ulysses (default auto)",
        Type::String, &R::parallel).choices = {"auto", "cfg", "ulysses"};

  t.group = "Encoders";
  t.integer("max_sequence_length", "", "T5 tokens (SD3 default 256)", &R::max_sequence_length, 1, 512);
  t.str("clip_l", "", "CLIP-L text encoder (file or folder) for single-file checkpoints", Type::Path, &R::clip_l);
  t.str("clip_g", "", "OpenCLIP bigG text encoder (file or folder)", Type::Path, &R::clip_g);
  t.str("t5", "", "T5-XXL text encoder (file or folder)", Type::Path, &R::t5);
  t.str("vae", "", "VAE (file or folder), e.g. FLUX's ae.safetensors for single-file checkpoints", Type::Path, &R::vae);
  t.str("tokenizer_dir", "", "Folder with tokenizer/, tokenizer_2/, tokenizer_3/ subfolders", Type::Path,
        &R::tokenizer_dir);
  return t.v;
}

std::string range_text(const RequestOption& o) {
  if (o.min && o.max) return "must be between " + fmt_num(*o.min) + " and " + fmt_num(*o.max);
  if (o.min) return (o.min_exclusive ? "must be greater than " : "must be at least ") + fmt_num(*o.min);
  return "must be at most " + fmt_num(*o.max);
}

bool in_range(const RequestOption& o, double v) {
  if (o.min && (o.min_exclusive ? !(v > *o.min) : !(v >= *o.min))) return false;
  if (o.max && !(v <= *o.max)) return false;
  return true;
}

}  // namespace

bool valid_device(const std::string& s) {
  if (s == "cpu" || s == "cuda") return true;
  return s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
         s.find_first_not_of("0123456789", 5) == std::string::npos;
}

bool json_integer(const nlohmann::json& v, long double& out) {
  if (v.is_number_unsigned()) {
    out = (long double)v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    out = (long double)v.get<int64_t>();
    return true;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d) {
      out = d;
      return true;
    }
  }
  return false;
}

std::string shown(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::string fmt_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}

const std::vector<RequestOption>& request_options() {
  static const std::vector<RequestOption> table = make_options();
  return table;
}

const RequestOption* find_option(const std::string& key) {
  for (const auto& o : request_options())
    if (o.key == key) return &o;
  return nullptr;
}

void check_option(const RequestOption& o, const nlohmann::json& v, const std::string& at, const fs::path& base_dir,
                  std::vector<std::string>& problems) {
  auto bad = [&](const std::string& what) { problems.push_back(at + ": " + what); };
  auto bad_got = [&](const std::string& what) { bad(what + ", got " + shown(v)); };
  switch (o.type) {
    case Type::String:
    case Type::Path:
    case Type::Folder: {
      if (!v.is_string()) {
        bad_got("expected string");
        break;
      }
      const std::string s = v.get<std::string>();
      if (!o.choices.empty() && std::find(o.choices.begin(), o.choices.end(), s) == o.choices.end()) {
        std::string list;
        for (const auto& c : o.choices) list += (list.empty() ? "" : ", ") + c;
        bad_got("expected one of " + list);
      } else if (o.key == "device" && !valid_device(s)) {
        bad_got("expected cpu, cuda or cuda:N");
      } else if (o.key == "source_output" || o.key == "mask_output") {
        const std::string p = template_problem(s, true);
        if (!p.empty()) bad(p);
        else if (fs::path(s).extension() != ".png") bad_got("expected a .png file");
      } else if (o.key == "output" || o.type == Type::Folder) {
        const std::string p = template_problem(s, o.key == "output");
        if (!p.empty()) bad(p);
      } else if (o.type == Type::Path) {
        std::error_code ec;
        const fs::path p = base_dir / s;
        if (s.empty()) bad("must not be empty");
        else if (!fs::exists(p, ec)) bad("no such file or folder: " + p.lexically_normal().string());
      }
      break;
    }
    case Type::Flag:
      if (!v.is_boolean()) bad_got("expected true or false");
      break;
    case Type::Integer: {
      long double x;
      if (!json_integer(v, x)) bad_got("expected integer");
      else if (!in_range(o, double(x))) bad_got(range_text(o));
      else if (x > INT_MAX) bad_got("must be at most " + std::to_string(INT_MAX));
      break;
    }
    case Type::Number: {
      if (!v.is_number()) bad_got("expected number");
      else if (!in_range(o, v.get<double>())) bad_got(range_text(o));
      break;
    }
    case Type::Seed: {
      long double x;
      if (!json_integer(v, x)) bad_got("expected integer");
      else if (x < 0 || x > 18446744073709551615.0L) bad_got("must be between 0 and 18446744073709551615");
      break;
    }
    case Type::IntList: {
      if (v.is_string()) {
        const std::string p = option_text_problem(o.type, v.get<std::string>());
        if (!p.empty()) bad_got(p);
      } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); ++i) {
          long double x;
          const std::string ati = at + "[" + std::to_string(i) + "]";
          if (!json_integer(v[i], x)) problems.push_back(ati + ": expected integer, got " + shown(v[i]));
          else if (x < 0 || x > INT_MAX) problems.push_back(ati + ": must be at least 0, got " + shown(v[i]));
        }
      } else {
        bad_got("expected array of integers or a string like \"7,8,9\"");
      }
      break;
    }
    case Type::HeadList: {
      if (v.is_string()) {
        const std::string p = option_text_problem(o.type, v.get<std::string>());
        if (!p.empty()) bad_got(p);
      } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); ++i) {
          long double a, b;
          const auto& e = v[i];
          if (!e.is_array() || e.size() != 2 || !json_integer(e[0], a) || !json_integer(e[1], b) || a < 0 || b < 0 ||
              a > INT_MAX || b > INT_MAX)
            problems.push_back(at + "[" + std::to_string(i) + "]: expected [layer, head], got " + shown(e));
        }
      } else {
        bad_got("expected layer:head pairs like \"12:3,12:7\" or [[12, 3], [12, 7]]");
      }
      break;
    }
    case Type::Prompts: {
      if (!v.is_array() || v.empty()) {
        bad_got("expected a non-empty array of prompts (strings or {\"prompt\": ..., \"tiles\": N})");
        break;
      }
      for (size_t i = 0; i < v.size(); ++i) {
        const auto& e = v[i];
        const std::string ati = at + "[" + std::to_string(i) + "]";
        long double n = 1;
        const bool obj = e.is_object() && e.contains("prompt") && e["prompt"].is_string() &&
                         (e.size() == 1 || (e.size() == 2 && e.contains("tiles") && json_integer(e["tiles"], n)));
        if (!e.is_string() && !obj) {
          problems.push_back(ati + ": expected a prompt or {\"prompt\": ..., \"tiles\": N}, got " + shown(e));
          continue;
        }
        const std::string text = e.is_string() ? e.get<std::string>() : e["prompt"].get<std::string>();
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) problems.push_back(ati + ": empty prompt");
        if (n < 1 || n > 64) problems.push_back(ati + ".tiles: must be between 1 and 64, got " + shown(e["tiles"]));
      }
      break;
    }
    case Type::Regions: {
      if (!v.is_array() || v.empty()) {
        bad_got("expected a non-empty array of {\"box\": [x0, y0, x1, y1], \"prompt\": ...} or {\"mask\": ..., \"prompt\": ...}");
        break;
      }
      for (size_t i = 0; i < v.size(); ++i) {
        const auto& e = v[i];
        const std::string ati = at + "[" + std::to_string(i) + "]";
        const bool box = e.is_object() && e.contains("box"), mask = e.is_object() && e.contains("mask");
        if (!e.is_object() || box == mask || !e.contains("prompt") || !e["prompt"].is_string() || e.size() != 2) {
          problems.push_back(ati + ": expected {\"box\": [x0, y0, x1, y1], \"prompt\": ...} or {\"mask\": \"file.png\", "
                             "\"prompt\": ...}, got " + shown(e));
          continue;
        }
        if (box) {
          const auto& b = e["box"];
          long double x[4];
          bool ok = b.is_array() && b.size() == 4;
          for (size_t k = 0; ok && k < 4; ++k) ok = json_integer(b[k], x[k]) && x[k] >= 0 && x[k] <= INT_MAX;
          if (!ok) problems.push_back(ati + ".box: expected [x0, y0, x1, y1] in output pixels, got " + shown(b));
          else if (x[2] <= x[0] || x[3] <= x[1])
            problems.push_back(ati + ".box: an empty box (right and bottom are exclusive), got " + shown(b));
        } else {
          std::error_code ec;
          if (!e["mask"].is_string() || e["mask"].get<std::string>().empty())
            problems.push_back(ati + ".mask: expected a file name, got " + shown(e["mask"]));
          else if (!fs::is_regular_file(base_dir / e["mask"].get<std::string>(), ec))
            problems.push_back(ati + ".mask: no such file: " + (base_dir / e["mask"].get<std::string>()).lexically_normal().string());
        }
      }
      break;
    }
    case Type::LayerScale: {
      if (!v.is_string()) bad_got("expected a string like \"0,1,2:1.5\"");
      else if (const std::string p = option_text_problem(o.type, v.get<std::string>()); !p.empty()) bad_got(p);
      break;
    }
  }
}

void apply_option(GenerateRequest& r, const RequestOption& o, const nlohmann::json& v, const fs::path& base_dir) {
  if (o.enables) r.*o.enables = true;
  switch (o.type) {
    case Type::String:
    case Type::LayerScale: r.*o.str = v.get<std::string>(); break;
    case Type::Path:
    case Type::Folder: {
      const fs::path p(v.get<std::string>());
      r.*o.str = (p.is_absolute() ? p : (base_dir / p).lexically_normal()).string();
      break;
    }
    case Type::Integer: {
      long double x = 0;
      json_integer(v, x);
      r.*o.integer = int(x);
      break;
    }
    case Type::Number: r.*o.number = v.get<double>(); break;
    case Type::Flag: r.*o.flag = v.get<bool>(); break;
    case Type::Seed: {
      long double x = 0;
      json_integer(v, x);
      r.seed = v.is_number_unsigned() ? v.get<uint64_t>() : uint64_t(x);
      break;
    }
    case Type::IntList: {
      auto& list = r.*o.list;
      list.clear();
      if (v.is_string()) {
        list = parse_layer_list(v.get<std::string>(), o.long_flag());
      } else {
        for (const auto& x : v) {
          long double d = 0;
          json_integer(x, d);
          list.push_back(int(d));
        }
      }
      break;
    }
    case Type::Prompts: {
      r.prompts.clear();
      for (const auto& e : v) {
        GenerateRequest::PromptEntry p;
        p.prompt = e.is_string() ? e.get<std::string>() : e["prompt"].get<std::string>();
        if (e.is_object() && e.contains("tiles")) p.tiles = e["tiles"].get<int>();
        r.prompts.push_back(p);
      }
      r.prompt = r.prompts.front().prompt;
      break;
    }
    case Type::Regions: {
      r.regions.clear();
      for (const auto& e : v) {
        GenerateRequest::Region g;
        g.prompt = e["prompt"].get<std::string>();
        if (e.contains("mask")) {
          const fs::path p(e["mask"].get<std::string>());
          g.mask = (p.is_absolute() ? p : (base_dir / p).lexically_normal()).string();
        } else {
          const auto& b = e["box"];
          g.x0 = b[0].get<int>(), g.y0 = b[1].get<int>(), g.x1 = b[2].get<int>(), g.y1 = b[3].get<int>();
        }
        r.regions.push_back(g);
      }
      break;
    }
    case Type::HeadList: {
      if (v.is_string()) {
        r.*o.str = v.get<std::string>();
        break;
      }
      std::string s;
      for (const auto& e : v) s += (s.empty() ? "" : ",") + std::to_string(e[0].get<int64_t>()) + ":" +
                                   std::to_string(e[1].get<int64_t>());
      r.*o.str = s;
      break;
    }
  }
}

nlohmann::ordered_json request_json(const GenerateRequest& r) {
  const GenerateRequest d;
  // Always present, as earlier mmdit versions wrote them.
  const char* core[] = {"model", "prompt", "negative_prompt", "width", "height", "steps", "cfg",
                        "seed",  "shift",  "batch",           "max_sequence_length", "dtype", "device"};
  auto is_core = [&](const std::string& k) { return std::find(std::begin(core), std::end(core), k) != std::end(core); };
  nlohmann::ordered_json j;
  for (const char* k : core) {
    const RequestOption* o = find_option(k);
    if (o->type == Type::Seed) j[k] = r.seed;
    else if (o->str) j[k] = r.*o->str;
    else if (o->integer) j[k] = r.*o->integer;
    else if (o->number) j[k] = r.*o->number;
  }
  for (const auto& o : request_options()) {
    if (is_core(o.key) || o.key == "output" || o.key == "source_output" || o.key == "mask_output") continue;
    if (o.enables && !(r.*o.enables)) continue;  // APG's keys only when APG is on
    if (o.str && (r.*o.str != d.*o.str || o.enables)) j[o.key] = r.*o.str;
    else if (o.integer && (r.*o.integer != d.*o.integer || o.enables)) j[o.key] = r.*o.integer;
    else if (o.number && (r.*o.number != d.*o.number || o.enables)) j[o.key] = r.*o.number;
    else if (o.flag && r.*o.flag != d.*o.flag) j[o.key] = r.*o.flag;
    else if (o.list && r.*o.list != d.*o.list) j[o.key] = r.*o.list;
  }
  if (!r.prompts.empty()) {
    nlohmann::ordered_json prompts = nlohmann::ordered_json::array();
    for (const auto& e : r.prompts) {
      if (e.tiles == 1) prompts.push_back(e.prompt);
      else prompts.push_back({{"prompt", e.prompt}, {"tiles", e.tiles}});
    }
    j["prompts"] = prompts;
  }
  if (!r.regions.empty()) {
    nlohmann::ordered_json regions = nlohmann::ordered_json::array();
    for (const auto& g : r.regions) {
      if (g.mask.empty()) regions.push_back({{"box", {g.x0, g.y0, g.x1, g.y1}}, {"prompt", g.prompt}});
      else regions.push_back({{"mask", g.mask}, {"prompt", g.prompt}});
    }
    j["regions"] = regions;
  }
  return j;
}

}  // namespace mmdit
