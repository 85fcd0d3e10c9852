#include "core/jobs.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <set>
#include <signal.h>
#include <sstream>
#include <unistd.h>

#include "core/errors.h"
#include "core/image_io.h"
#include "core/log.h"
#include "core/model_folder.h"
#include "core/video_writer.h"

namespace mmdit {
namespace fs = std::filesystem;
using Type = RequestOption::Type;

std::string RequestOption::long_flag() const {
  std::string f = "--" + key;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

namespace {

RequestOption str_opt(std::string key, std::string shrt, std::string help, Type t, std::string GenerateRequest::*m) {
  RequestOption o;
  o.key = std::move(key);
  o.short_flag = std::move(shrt);
  o.help = std::move(help);
  o.type = t;
  o.str = m;
  return o;
}

RequestOption int_opt(std::string key, std::string shrt, std::string help, int GenerateRequest::*m,
                      std::optional<double> min, std::optional<double> max, bool min_exclusive = false) {
  RequestOption o;
  o.key = std::move(key);
  o.short_flag = std::move(shrt);
  o.help = std::move(help);
  o.type = Type::Integer;
  o.integer = m;
  o.min = min;
  o.max = max;
  o.min_exclusive = min_exclusive;
  return o;
}

RequestOption num_opt(std::string key, std::string help, double GenerateRequest::*m, std::optional<double> min,
                      std::optional<double> max, bool min_exclusive = false) {
  RequestOption o;
  o.key = std::move(key);
  o.help = std::move(help);
  o.type = Type::Number;
  o.number = m;
  o.min = min;
  o.max = max;
  o.min_exclusive = min_exclusive;
  return o;
}

std::vector<RequestOption> make_options() {
  using R = GenerateRequest;
  std::vector<RequestOption> v;
  v.push_back(str_opt("model", "m", "Diffusers folder or single-file checkpoint (default: the built-in shapes-world demo)",
                      Type::Path, &R::model));
  v.push_back(str_opt("prompt", "p", "What to draw", Type::String, &R::prompt));
  v.back().required = true;
  v.push_back(str_opt("negative_prompt", "n", "What to avoid (with --cfg > 1)", Type::String, &R::negative_prompt));
  v.push_back(int_opt("width", "W", "Image width in pixels (default: the model's)", &R::width, 0, std::nullopt, true));
  v.push_back(int_opt("height", "H", "Image height in pixels (default: the model's)", &R::height, 0, std::nullopt, true));
  v.push_back(int_opt("steps", "", "Denoising steps (default: the pipeline's, 28 for SD3)", &R::steps, 0, std::nullopt, true));
  v.push_back(num_opt("cfg", "Classifier-free guidance scale (default: the pipeline's, 7.0 for SD3)", &R::cfg, 0, std::nullopt));
  v.push_back(num_opt("guidance", "Distilled guidance scale of FLUX.1-dev (default 3.5; schnell ignores it)", &R::guidance,
                      0, std::nullopt));
  {
    RequestOption o;
    o.key = "seed";
    o.short_flag = "s";
    o.help = "Noise seed (default: random, printed)";
    o.type = Type::Seed;
    o.job_help = "Noise seed (default: random, recorded in the report); with \"count\", the first seed";
    v.push_back(o);
  }
  v.push_back(num_opt("shift", "Flow-matching shift (default: the scheduler config's)", &R::shift, 0, std::nullopt, true));
  v.push_back(str_opt("device", "", "cpu, cuda or cuda:N", Type::String, &R::device));
  v.back().job_help = "cpu, cuda or cuda:N (default: cpu)";
  v.push_back(str_opt("dtype", "", "f32, f16 or bf16 (default: f32 on cpu, bf16 on cuda)", Type::String, &R::dtype));
  v.back().choices = {"f32", "f16", "bf16", "fp32", "fp16", "float32", "float16", "bfloat16"};
  v.push_back(str_opt("output", "o",
                      "Output PNG (default: mmdit-SEED.png); videos: out.mp4 or a frame pattern like out_%03d.png",
                      Type::String, &R::output));
  v.back().job_help =
      "Output path template with {index} (run number after expansion, from 0), {seed}, {prompt_slug} and "
      "{date} (YYYY-MM-DD); relative to the job file's folder; .png for images, .mp4 or a frame pattern like "
      "f_%03d.png for videos; default mmdit-{index}-{seed}.png";
  v.push_back(int_opt("batch", "", "Images to generate from the prompt", &R::batch, 1, 64));
  v.push_back(int_opt("max_sequence_length", "", "T5 tokens (SD3 default 256)", &R::max_sequence_length, 1, 512));
  v.push_back(num_opt("slg_scale", "Skip-layer guidance scale (0 = off)", &R::slg_scale, 0, std::nullopt));
  {
    RequestOption o;
    o.key = "slg_layers";
    o.help = "Layers skipped for skip-layer guidance, e.g. 7,8,9";
    o.type = Type::IntList;
    o.min = 0;
    v.push_back(o);
  }
  v.push_back(num_opt("slg_start", "Skip-layer guidance starts after this fraction of steps", &R::slg_start, 0.0, 1.0));
  v.push_back(num_opt("slg_stop", "Skip-layer guidance stops before this fraction of steps", &R::slg_stop, 0.0, 1.0));
  v.push_back(int_opt("frames", "", "Video frames, 4k+1 (video models; default: the model's, 49 for CogVideoX)",
                      &R::frames, 0, std::nullopt, true));
  v.push_back(int_opt("fps", "", "Video frame rate (default: the model's, 8)", &R::fps, 1, 240));
  v.push_back(int_opt("crf", "", "MP4 quality, 0 (lossless) to 51; lower is better (default 18)", &R::crf, 0, 51));
  v.push_back(str_opt("sampler", "", "Video sampler: ddim or dpm (default: the model's scheduler)", Type::String,
                      &R::sampler));
  v.back().choices = {"ddim", "dpm"};
  {
    RequestOption o;
    o.key = "dynamic_cfg";
    o.help = "CogVideoX's dynamic guidance scale (use_dynamic_cfg)";
    o.type = Type::Flag;
    o.flag = &R::dynamic_cfg;
    v.push_back(o);
    o.key = "vae_tiling";
    o.help = "Decode video in overlapping spatial tiles (less memory)";
    o.flag = &R::vae_tiling;
    v.push_back(o);
  }
  v.push_back(str_opt("clip_l", "", "CLIP-L text encoder (file or folder) for single-file checkpoints", Type::Path, &R::clip_l));
  v.push_back(str_opt("clip_g", "", "OpenCLIP bigG text encoder (file or folder)", Type::Path, &R::clip_g));
  v.push_back(str_opt("t5", "", "T5-XXL text encoder (file or folder)", Type::Path, &R::t5));
  v.push_back(str_opt("vae", "", "VAE (file or folder), e.g. FLUX's ae.safetensors for single-file checkpoints",
                      Type::Path, &R::vae));
  v.push_back(str_opt("tokenizer_dir", "", "Folder with tokenizer/, tokenizer_2/, tokenizer_3/ subfolders", Type::Path,
                      &R::tokenizer_dir));
  return v;
}

const char* kExpansionKeys[] = {"seeds", "count"};

std::vector<std::string> job_keys() {
  std::vector<std::string> k;
  for (const auto& o : request_options()) k.push_back(o.key);
  for (const char* e : kExpansionKeys) k.push_back(e);
  return k;
}

const RequestOption* find_option(const std::string& key) {
  for (const auto& o : request_options())
    if (o.key == key) return &o;
  return nullptr;
}

std::string fmt_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}

// A JSON value as it appears in messages, shortened.
std::string shown(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
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

// JSON Schema's "integer": any number with no fraction.
bool as_integer(const nlohmann::json& v, long double& out) {
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

bool valid_device(const std::string& s) {
  if (s == "cpu" || s == "cuda") return true;
  return s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
         s.find_first_not_of("0123456789", 5) == std::string::npos;
}

const char* kPlaceholders[] = {"index", "seed", "prompt_slug", "date"};

// Checks an output template; returns a problem or "".
std::string template_problem(const std::string& t) {
  if (t.empty()) return "must not be empty";
  size_t pos = 0;
  while ((pos = t.find('{', pos)) != std::string::npos) {
    const size_t end = t.find('}', pos);
    if (end == std::string::npos) return "unclosed '{' in " + nlohmann::json(t).dump();
    const std::string name = t.substr(pos + 1, end - pos - 1);
    if (std::find(std::begin(kPlaceholders), std::end(kPlaceholders), name) == std::end(kPlaceholders))
      return "unknown placeholder {" + name + "} (known: {index}, {seed}, {prompt_slug}, {date})";
    pos = end + 1;
  }
  std::string ext = fs::path(t).extension().string();
  for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".png" && ext != ".mp4")
    return "outputs are .png images, .mp4 videos or frame patterns like f_%03d.png, got " + nlohmann::json(t).dump();
  return "";
}

std::string expand_template(const std::string& t, int index, uint64_t seed, const std::string& prompt,
                            const std::string& date) {
  std::string out;
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t open = t.find('{', pos);
    if (open == std::string::npos) {
      out += t.substr(pos);
      break;
    }
    out += t.substr(pos, open - pos);
    const size_t close = t.find('}', open);
    const std::string name = t.substr(open + 1, close - open - 1);
    if (name == "index") out += std::to_string(index);
    else if (name == "seed") out += std::to_string(seed);
    else if (name == "prompt_slug") out += prompt_slug(prompt);
    else if (name == "date") out += date;
    pos = close + 1;
  }
  return out;
}

// Validates one object of keys (a job or "defaults"), appending problems under `where`.
void check_keys(const nlohmann::json& obj, const std::string& where, const fs::path& base_dir,
                std::vector<std::string>& problems) {
  const auto keys = job_keys();
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    const std::string at = where + "." + key;
    auto bad = [&](const std::string& what) { problems.push_back(at + ": " + what); };
    auto bad_got = [&](const std::string& what) { bad(what + ", got " + shown(v)); };
    if (key == "seeds") {
      if (!v.is_array()) {
        bad_got("expected array of seeds");
      } else if (v.empty()) {
        bad("must not be empty");
      } else {
        for (size_t i = 0; i < v.size(); ++i) {
          long double x;
          const std::string ati = at + "[" + std::to_string(i) + "]";
          if (!as_integer(v[i], x)) problems.push_back(ati + ": expected integer, got " + shown(v[i]));
          else if (x < 0 || x > 18446744073709551615.0L)
            problems.push_back(ati + ": must be between 0 and 18446744073709551615, got " + shown(v[i]));
        }
      }
      continue;
    }
    if (key == "count") {
      long double x;
      if (!as_integer(v, x)) bad_got("expected integer");
      else if (x < 1 || x > kMaxCount) bad_got("must be between 1 and " + std::to_string(kMaxCount));
      continue;
    }
    const RequestOption* o = find_option(key);
    if (!o) {
      bad("unknown key; did you mean \"" + closest(key, keys) + "\"?");
      continue;
    }
    switch (o->type) {
      case Type::String:
      case Type::Path: {
        if (!v.is_string()) {
          bad_got("expected string");
          break;
        }
        const std::string s = v.get<std::string>();
        if (!o->choices.empty() && std::find(o->choices.begin(), o->choices.end(), s) == o->choices.end()) {
          std::string list;
          for (const auto& c : o->choices) list += (list.empty() ? "" : ", ") + c;
          bad_got("expected one of " + list);
        } else if (key == "device" && !valid_device(s)) {
          bad_got("expected cpu, cuda or cuda:N");
        } else if (key == "output") {
          const std::string p = template_problem(s);
          if (!p.empty()) bad(p);
        } else if (o->type == Type::Path) {
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
        if (!as_integer(v, x)) bad_got("expected integer");
        else if (!in_range(*o, double(x))) bad_got(range_text(*o));
        else if (x > INT_MAX) bad_got("must be at most " + std::to_string(INT_MAX));
        break;
      }
      case Type::Number: {
        if (!v.is_number()) bad_got("expected number");
        else if (!in_range(*o, v.get<double>())) bad_got(range_text(*o));
        break;
      }
      case Type::Seed: {
        long double x;
        if (!as_integer(v, x)) bad_got("expected integer");
        else if (x < 0 || x > 18446744073709551615.0L) bad_got("must be between 0 and 18446744073709551615");
        break;
      }
      case Type::IntList: {
        if (v.is_string()) {
          const std::string s = v.get<std::string>();
          bool ok = true;
          size_t pos = 0;
          while (pos <= s.size() && ok) {
            size_t end = s.find(',', pos);
            if (end == std::string::npos) end = s.size();
            const std::string item = s.substr(pos, end - pos);
            if (item.empty() || item.size() > 6 || item.find_first_not_of("0123456789") != std::string::npos) ok = false;
            pos = end + 1;
          }
          if (!ok) bad_got("expected comma-separated layer numbers like \"7,8,9\"");
        } else if (v.is_array()) {
          for (size_t i = 0; i < v.size(); ++i) {
            long double x;
            const std::string ati = at + "[" + std::to_string(i) + "]";
            if (!as_integer(v[i], x)) problems.push_back(ati + ": expected integer, got " + shown(v[i]));
            else if (x < 0 || x > INT_MAX) problems.push_back(ati + ": must be at least 0, got " + shown(v[i]));
          }
        } else {
          bad_got("expected array of integers or a string like \"7,8,9\"");
        }
        break;
      }
    }
  }
}

// Applies one (validated) key to a request.
void apply_key(GenerateRequest& r, const RequestOption& o, const nlohmann::json& v, const fs::path& base_dir) {
  switch (o.type) {
    case Type::String: r.*o.str = v.get<std::string>(); break;
    case Type::Path: {
      const fs::path p(v.get<std::string>());
      r.*o.str = (p.is_absolute() ? p : (base_dir / p).lexically_normal()).string();
      break;
    }
    case Type::Integer: {
      long double x = 0;
      as_integer(v, x);
      r.*o.integer = int(x);
      break;
    }
    case Type::Number: r.*o.number = v.get<double>(); break;
    case Type::Flag: r.*o.flag = v.get<bool>(); break;
    case Type::Seed: {
      long double x = 0;
      as_integer(v, x);
      r.seed = v.is_number_unsigned() ? v.get<uint64_t>() : uint64_t(x);
      break;
    }
    case Type::IntList: {
      r.slg_layers.clear();
      if (v.is_string()) {
        const std::string s = v.get<std::string>();
        size_t pos = 0;
        while (pos <= s.size()) {
          size_t end = s.find(',', pos);
          if (end == std::string::npos) end = s.size();
          r.slg_layers.push_back(std::stoi(s.substr(pos, end - pos)));
          pos = end + 1;
        }
      } else {
        for (const auto& x : v) {
          long double d = 0;
          as_integer(x, d);
          r.slg_layers.push_back(int(d));
        }
      }
      break;
    }
  }
}

uint64_t random_seed() {
  static std::random_device rd;
  return rd() & 0xffffffffu;  // as `generate`: 32 bits, easy to type back
}

std::vector<std::string> batch_outputs(const GenerateRequest& r) {
  std::vector<std::string> out;
  if (is_frame_pattern(r.output)) {  // video frames: frame 0 is written last (models/pipeline.cpp write_videos)
    try {
      return {expand_frame_pattern(r.output, 0).string()};
    } catch (const UsageError&) {
      return {r.output};  // a bad pattern: the run reports it
    }
  }
  for (int i = 0; i < r.batch; ++i) out.push_back(output_path(r, i));
  return out;
}

}  // namespace

const std::vector<RequestOption>& request_options() {
  static const std::vector<RequestOption> table = make_options();
  return table;
}

std::string prompt_slug(const std::string& prompt) {
  std::string s;
  for (unsigned char c : prompt) {
    if (std::isalnum(c) && c < 128) {
      s += char(std::tolower(c));
    } else if (!s.empty() && s.back() != '-') {
      s += '-';
    }
    if (s.size() >= 40) break;
  }
  if (s.size() > 40) s.resize(40);
  while (!s.empty() && s.back() == '-') s.pop_back();
  return s.empty() ? "empty" : s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char b[16];
  std::strftime(b, sizeof b, "%Y-%m-%d", &tm);
  return b;
}

JobFile parse_jobs(const nlohmann::json& doc, const fs::path& base_dir, const std::string& date) {
  JobFile f;
  auto& problems = f.problems;
  if (!doc.is_object()) {
    problems.push_back("(top level): expected object with \"jobs\", got " + shown(doc));
    return f;
  }
  const std::vector<std::string> top = {"defaults", "jobs", "$schema"};
  for (auto it = doc.begin(); it != doc.end(); ++it)
    if (std::find(top.begin(), top.end(), it.key()) == top.end())
      problems.push_back(it.key() + ": unknown key; did you mean \"" + closest(it.key(), top) + "\"?");
  nlohmann::json defaults = nlohmann::json::object();
  std::set<std::string> bad_defaults;  // keys of defaults with a problem: not reported again per job
  if (doc.contains("defaults")) {
    if (!doc["defaults"].is_object()) {
      problems.push_back("defaults: expected object, got " + shown(doc["defaults"]));
    } else {
      defaults = doc["defaults"];
      const size_t before = problems.size();
      check_keys(defaults, "defaults", base_dir, problems);
      for (size_t i = before; i < problems.size(); ++i) {
        const std::string& p = problems[i];
        const size_t dot = p.find('.'), end = p.find_first_of(":[", dot + 1);
        bad_defaults.insert(p.substr(dot + 1, end - dot - 1));
      }
      if (defaults.contains("seeds") && defaults.contains("count"))
        problems.push_back("defaults.count: cannot be combined with \"seeds\"");
      if (defaults.contains("seeds") && defaults.contains("seed"))
        problems.push_back("defaults.seeds: cannot be combined with \"seed\"");
    }
  }
  if (!doc.contains("jobs")) {
    problems.push_back("jobs: missing (required)");
    return f;
  }
  const nlohmann::json& jobs = doc["jobs"];
  if (!jobs.is_array()) {
    problems.push_back("jobs: expected array, got " + shown(jobs));
    return f;
  }
  if (jobs.empty()) problems.push_back("jobs: must not be empty");

  struct Pending {
    int job;
    nlohmann::json merged;
  };
  std::vector<Pending> pending;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const std::string where = "jobs[" + std::to_string(j) + "]";
    const size_t before = problems.size();
    const nlohmann::json& job = jobs[j];
    if (!job.is_object()) {
      problems.push_back(where + ": expected object, got " + shown(job));
      f.invalid_jobs.push_back(int(j));
      continue;
    }
    check_keys(job, where, base_dir, problems);
    if (job.contains("seeds") && job.contains("count")) problems.push_back(where + ".count: cannot be combined with \"seeds\"");
    if (job.contains("seeds") && job.contains("seed")) problems.push_back(where + ".seeds: cannot be combined with \"seed\"");
    // The job's own seed keys replace those of "defaults".
    nlohmann::json merged = defaults;
    for (const auto& k : bad_defaults) merged.erase(k);  // reported once, under defaults
    if (job.contains("seeds")) merged.erase("count"), merged.erase("seed");
    if (job.contains("count") || job.contains("seed")) merged.erase("seeds");
    for (auto it = job.begin(); it != job.end(); ++it) merged[it.key()] = it.value();
    for (const auto& o : request_options())
      if (o.required && !merged.contains(o.key) && !bad_defaults.count(o.key))
        problems.push_back(where + "." + o.key + ": missing (required; give it in the job or in \"defaults\")");
    // slg_start <= slg_stop, as resolve() demands, when both are valid.
    if (problems.size() == before) {
      GenerateRequest r;
      if (merged.contains("slg_start")) r.slg_start = merged["slg_start"].get<double>();
      if (merged.contains("slg_stop")) r.slg_stop = merged["slg_stop"].get<double>();
      if (r.slg_start > r.slg_stop)
        problems.push_back(where + ".slg_start: must not exceed slg_stop (" + fmt_num(r.slg_start) + " > " +
                           fmt_num(r.slg_stop) + ")");
    }
    if (problems.size() != before) {
      f.invalid_jobs.push_back(int(j));
      continue;
    }
    pending.push_back({int(j), merged});
  }

  // Expansion (of the valid jobs, so that output collisions are found even when others have problems).
  for (const auto& p : pending) {
    GenerateRequest base;
    for (auto it = p.merged.begin(); it != p.merged.end(); ++it)
      if (const RequestOption* o = find_option(it.key())) apply_key(base, *o, it.value(), base_dir);
    if (base.model.empty()) base.model = builtin_model();
    const std::string tmpl = p.merged.contains("output") ? p.merged["output"].get<std::string>()
                                                         : std::string("mmdit-{index}-{seed}.png");
    std::vector<uint64_t> seeds;
    bool random = false;
    if (p.merged.contains("seeds")) {
      for (const auto& s : p.merged["seeds"]) {
        GenerateRequest tmp;
        apply_key(tmp, *find_option("seed"), s, base_dir);
        seeds.push_back(tmp.seed);
      }
    } else {
      const int count = p.merged.contains("count") ? p.merged["count"].get<int>() : 1;
      random = !p.merged.contains("seed");
      const uint64_t s0 = random ? random_seed() : base.seed;
      for (int i = 0; i < count; ++i) seeds.push_back(s0 + uint64_t(i));
    }
    for (uint64_t s : seeds) {
      JobRun run;
      run.index = int(f.runs.size());
      run.job = p.job;
      run.req = base;
      run.req.seed = s;
      run.random_seed = random;
      fs::path out(expand_template(tmpl, run.index, s, base.prompt, date));
      if (!out.is_absolute()) out = base_dir / out;
      run.req.output = out.lexically_normal().string();
      run.outputs = batch_outputs(run.req);
      f.runs.push_back(std::move(run));
    }
  }

  // Two runs must not write the same file.
  std::map<std::string, const JobRun*> writers;
  std::set<std::pair<int, int>> reported;
  for (const auto& run : f.runs) {
    for (const auto& out : run.outputs) {
      std::error_code ec;
      fs::path abs = fs::absolute(out, ec);
      const std::string k = (ec ? fs::path(out) : abs).lexically_normal().string();
      auto [it, inserted] = writers.emplace(k, &run);
      if (inserted) continue;
      const JobRun& first = *it->second;
      if (!reported.insert({first.job, run.job}).second) continue;
      const std::string where = "jobs[" + std::to_string(run.job) + "].output";
      if (first.job == run.job)
        problems.push_back(where + ": its runs write the same file " + out + " (add {seed} or {index})");
      else
        problems.push_back(where + ": writes " + out + ", which jobs[" + std::to_string(first.job) + "] also writes");
      f.invalid_jobs.push_back(run.job);
    }
  }
  if (!problems.empty()) f.runs.clear();
  return f;
}

JobFile load_jobs(const std::string& path) {
  std::string text;
  fs::path base_dir = fs::current_path();
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in || fs::is_directory(path)) throw FileError(path + ": cannot read the job file");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    base_dir = fs::absolute(fs::path(path)).parent_path();
  }
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    std::string msg = e.what();
    const size_t sp = msg.find("] ");
    if (sp != std::string::npos) msg = msg.substr(sp + 2);
    throw FormatError((path == "-" ? std::string("stdin") : path) + ": not valid JSON: " + msg);
  }
  JobFile f = parse_jobs(doc, base_dir, today());
  f.source = path;
  return f;
}

nlohmann::ordered_json job_schema() {
  using OJ = nlohmann::ordered_json;
  nlohmann::ordered_json props = nlohmann::ordered_json::object();
  for (const auto& o : request_options()) {
    nlohmann::ordered_json p;
    p["description"] = o.job_help.empty() ? o.help : o.job_help;
    switch (o.type) {
      case Type::String:
      case Type::Path:
        p["type"] = "string";
        if (o.type == Type::Path || o.key == "output") p["minLength"] = 1;
        if (!o.choices.empty()) p["enum"] = o.choices;
        if (o.key == "device") p["pattern"] = "^(cpu|cuda(:[0-9]{1,3})?)$";
        if (o.key == "output") p["pattern"] = "^([^{}]|\\{(index|seed|prompt_slug|date)\\})*\\.([pP][nN][gG]|[mM][pP]4)$";
        break;
      case Type::Integer:
      case Type::Number:
        p["type"] = o.type == Type::Integer ? "integer" : "number";
        if (o.min) p[o.min_exclusive ? "exclusiveMinimum" : "minimum"] = *o.min;
        if (o.max) p["maximum"] = *o.max;
        else if (o.type == Type::Integer) p["maximum"] = INT_MAX;
        break;
      case Type::Flag:
        p["type"] = "boolean";
        break;
      case Type::Seed:
        p["type"] = "integer";
        p["minimum"] = 0;
        p["maximum"] = std::numeric_limits<uint64_t>::max();
        break;
      case Type::IntList:
        p["oneOf"] = {{{"type", "array"}, {"items", {{"type", "integer"}, {"minimum", 0}}}},
                      {{"type", "string"}, {"pattern", "^[0-9]+(,[0-9]+)*$"}}};
        break;
    }
    props[o.key] = p;
  }
  props["seeds"] = {{"description", "One run per seed (not with \"seed\" or \"count\")"},
                    {"type", "array"},
                    {"minItems", 1},
                    {"items", {{"type", "integer"}, {"minimum", 0}, {"maximum", std::numeric_limits<uint64_t>::max()}}}};
  props["count"] = {{"description", "Runs with seeds seed, seed+1, ... (random first seed without \"seed\")"},
                    {"type", "integer"},
                    {"minimum", 1},
                    {"maximum", kMaxCount}};
  nlohmann::ordered_json job = {{"type", "object"}, {"properties", props}, {"additionalProperties", false}};
  nlohmann::ordered_json required_note = nlohmann::ordered_json::array();
  for (const auto& o : request_options())
    if (o.required) required_note.push_back(o.key);
  nlohmann::ordered_json s;
  s["$schema"] = "https://json-schema.org/draft/2020-12/schema";
  s["title"] = "mmdit run job file";
  s["description"] =
      "Jobs for `mmdit run`: every key is a `generate` long option with _ for -. Each job needs model and "
      "prompt, in the job or in defaults.";
  s["type"] = "object";
  s["properties"] = {{"$schema", {{"type", "string"}}},
                     {"defaults", {{"$ref", "#/$defs/job"}}},
                     {"jobs", {{"type", "array"}, {"minItems", 1}, {"items", {{"$ref", "#/$defs/job"}}}}}};
  s["required"] = OJ::array({"jobs"});
  s["additionalProperties"] = false;
  // "model" and "prompt" may come from defaults: required in the job unless defaults has them.
  nlohmann::ordered_json need = nlohmann::ordered_json::array();
  for (const auto& k : required_note) {
    OJ has_default = {{"properties", {{"defaults", {{"required", OJ::array({k})}}}}}, {"required", OJ::array({"defaults"})}};
    OJ job_has = {{"properties", {{"jobs", {{"items", {{"required", OJ::array({k})}}}}}}}};
    OJ rule = OJ::object();
    rule["if"] = {{"not", has_default}};
    rule["then"] = job_has;
    need.push_back(rule);
  }
  s["allOf"] = need;
  s["$defs"] = {{"job", job}};
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Execution.

namespace {

struct Interrupted {};  // thrown from the step callback to abort a run

std::string first_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string pipeline_key(const GenerateRequest& r) {
  return r.model + '\n' + r.clip_l + '\n' + r.clip_g + '\n' + r.t5 + '\n' + r.tokenizer_dir + '\n' + r.device + '\n' + r.dtype;
}

bool all_exist(const std::vector<std::string>& paths) {
  for (const auto& p : paths) {
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return false;
  }
  return true;
}

// Temp files of atomic_write (".NAME.tmp-PID") left by a killed run: removed when that process is gone.
void remove_stale_temps(const std::vector<std::string>& outputs) {
  std::set<fs::path> dirs;
  std::set<std::string> names;
  for (const auto& o : outputs) {
    const fs::path p(o);
    dirs.insert(p.has_parent_path() ? p.parent_path() : fs::path("."));
    names.insert(p.filename().string());
  }
  for (const auto& d : dirs) {
    std::error_code ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      const size_t tmp = n.rfind(".tmp-");
      if (n.empty() || n[0] != '.' || tmp == std::string::npos) continue;
      if (!names.count(n.substr(1, tmp - 1))) continue;
      const std::string pid_s = n.substr(tmp + 5);
      if (pid_s.empty() || pid_s.find_first_not_of("0123456789") != std::string::npos) continue;
      const long pid = std::strtol(pid_s.c_str(), nullptr, 10);
      if (pid == ::getpid() || (::kill(pid_t(pid), 0) != 0 && errno == ESRCH)) {
        std::error_code rm;
        fs::remove(it->path(), rm);
        log_info("removed " + it->path().string() + " (left by an interrupted run)");
      }
    }
  }
}

class Report {
 public:
  explicit Report(const std::string& path) {
    if (path.empty()) return;
    f_ = std::fopen(path.c_str(), "w");
    if (!f_) throw FileError(path + ": cannot write the report (" + std::strerror(errno) + ")");
  }
  ~Report() {
    if (f_) std::fclose(f_);
  }
  void line(const nlohmann::ordered_json& j) {
    if (!f_) return;
    const std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::fwrite(s.data(), 1, s.size(), f_);
    std::fflush(f_);
  }

 private:
  FILE* f_ = nullptr;
};

std::string short_prompt(const std::string& p) {
  std::string s = p.size() > 60 ? p.substr(0, 57) + "..." : p;
  for (auto& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

int run_jobs(const JobFile& jobs, const RunOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  auto stopped = [&] { return opt.stop && *opt.stop != 0; };
  Report report(opt.report);
  const int n = int(jobs.runs.size());

  std::vector<std::string> all_outputs;
  for (const auto& r : jobs.runs) all_outputs.insert(all_outputs.end(), r.outputs.begin(), r.outputs.end());
  remove_stale_temps(all_outputs);

  // Which runs go ahead, and the last run that needs each pipeline (it is freed after that).
  std::vector<bool> skip(size_t(n), false);
  if (opt.skip_existing)
    for (int i = 0; i < n; ++i) skip[size_t(i)] = all_exist(jobs.runs[size_t(i)].outputs);
  std::map<std::string, int> last_use;
  for (int i = 0; i < n; ++i)
    if (!skip[size_t(i)]) last_use[pipeline_key(jobs.runs[size_t(i)].req)] = i;

  std::map<std::string, std::unique_ptr<Pipeline>> pipelines;
  std::map<std::string, std::string> load_errors;  // a model that failed to load is not tried again
  int ok = 0, failed = 0, invalid = 0, skipped = 0;
  bool interrupted = false;
  int i = 0;
  for (; i < n; ++i) {
    if (stopped()) {
      interrupted = true;
      break;
    }
    const JobRun& run = jobs.runs[size_t(i)];
    nlohmann::ordered_json line = {{"index", run.index}, {"job", run.job}};
    const std::string counter = "[" + std::to_string(i + 1) + "/" + std::to_string(n) + "] ";
    if (skip[size_t(i)]) {
      ++skipped;
      log_info(counter + "skipped (outputs exist): " + short_prompt(run.req.prompt));
      line.update({{"status", "skipped"}, {"error", nullptr}, {"seconds", 0.0}, {"seed", run.req.seed},
                   {"random_seed", run.random_seed}, {"outputs", run.outputs}, {"prompt", run.req.prompt},
                   {"model", run.req.model}});
      report.line(line);
      continue;
    }
    log_info(counter + short_prompt(run.req.prompt) + " (seed " + std::to_string(run.req.seed) + ")");
    const auto t0 = std::chrono::steady_clock::now();
    const std::string key = pipeline_key(run.req);
    std::string status = "ok", error;
    std::vector<std::string> written;
    GenerateRequest r = run.req;
    Pipeline* pipe = nullptr;
    try {
      if (auto e = load_errors.find(key); e != load_errors.end()) {
        status = "failed";
        error = e->second;
      } else {
        auto& slot = pipelines[key];
        if (!slot) {
          try {
            slot = load_pipeline(r);
            char took[32];
            std::snprintf(took, sizeof took, "%.1f", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            log_info("loaded " + slot->name() + " from " + r.model + " in " + took + " s");
          } catch (const std::exception& e) {
            pipelines.erase(key);
            load_errors[key] = "cannot load " + r.model + ": " + first_line(e.what());
            throw;
          }
        }
        pipe = slot.get();
        try {
          pipe->resolve(r);
        } catch (const InputError& e) {
          status = "invalid";
          error = first_line(e.what());
        }
        if (status == "ok") {
          for (const auto& o : run.outputs) {
            const fs::path dir = fs::path(o).parent_path();
            if (!dir.empty()) fs::create_directories(dir);
          }
          Progress progress("denoise", r.steps);
          auto on_step = [&](int, int) {
            progress.step();
            if (stopped()) throw Interrupted{};
          };
          std::vector<Image> images;
          if (pipe->is_video()) {
            for (const auto& path : write_videos(r, *pipe, on_step)) {
              written.push_back(path);
              std::printf("%s\n", path.c_str());
            }
          } else {
            images = pipe->generate(r, on_step);
          }
          progress.finish();
          if (stopped()) throw Interrupted{};  // after the last step, before writing
          for (size_t b = 0; b < images.size(); ++b) {
            const std::string path = output_path(r, int(b));
            write_png(path, images[b], png_metadata(r, pipe->name(), int(b)));
            written.push_back(path);
            std::printf("%s\n", path.c_str());
            std::fflush(stdout);
          }
        }
      }
    } catch (const Interrupted&) {
      status = "interrupted";
      error = "interrupted by a signal";
      interrupted = true;
    } catch (const std::bad_alloc&) {
      status = "failed";
      error = "out of memory";
    } catch (const std::exception& e) {
      status = "failed";
      error = load_errors.count(key) ? load_errors[key] : first_line(e.what());
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (status == "ok") ++ok;
    else if (status == "invalid") ++invalid;
    else if (status == "failed") ++failed;
    if (status != "ok" && status != "interrupted")
      std::fprintf(stderr, "mmdit: error: jobs[%d] (run %d): %s\n", run.job, run.index, error.c_str());
    line.update({{"status", status}, {"error", error.empty() ? nlohmann::json(nullptr) : nlohmann::json(error)},
                 {"seconds", std::round(secs * 1000) / 1000}, {"seed", run.req.seed},
                 {"random_seed", run.random_seed}, {"outputs", written}, {"prompt", run.req.prompt},
                 {"model", run.req.model}});
    report.line(line);
    if (interrupted) {
      ++i;
      break;
    }
    // Free pipelines that no later run needs.
    if (auto lu = last_use.find(key); lu != last_use.end() && lu->second <= i) pipelines.erase(key);
  }
  pipelines.clear();

  const int not_run = n - ok - failed - invalid - skipped;  // the interrupted run counts as not run
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const int code = interrupted ? 130 : (failed || invalid) ? 1 : 0;
  char summary[256];
  std::snprintf(summary, sizeof summary, "mmdit run: %d ok, %d failed, %d invalid, %d skipped, %d not run of %d runs in %.1f s%s",
                ok, failed, invalid, skipped, not_run, n, total, interrupted ? " (interrupted)" : "");
  std::fprintf(stderr, "%s\n", summary);
  report.line({{"summary", true}, {"runs", n}, {"ok", ok}, {"failed", failed}, {"invalid", invalid},
               {"skipped", skipped}, {"interrupted", interrupted}, {"not_run", not_run},
               {"seconds", std::round(total * 1000) / 1000}, {"exit_code", code}});
  return code;
}

}  // namespace mmdit
