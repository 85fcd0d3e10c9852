#include "core/jobs.h"

// `mmdit run`: reading, validating and expanding job files (core/jobs.h).
#include "core/jobs.h"

#include <algorithm>
#include <climits>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <random>
#include <set>

#include "core/errors.h"
#include "core/model_folder.h"
#include "core/video_writer.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

const char* kExpansionKeys[] = {"seeds", "count"};

std::vector<std::string> job_keys() {
  std::vector<std::string> k;
  for (const auto& o : request_options()) k.push_back(o.key);
  for (const char* e : kExpansionKeys) k.push_back(e);
  return k;
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
          if (!json_integer(v[i], x)) problems.push_back(ati + ": expected integer, got " + shown(v[i]));
          else if (x < 0 || x > 18446744073709551615.0L)
            problems.push_back(ati + ": must be between 0 and 18446744073709551615, got " + shown(v[i]));
        }
      }
      continue;
    }
    if (key == "count") {
      long double x;
      if (!json_integer(v, x)) bad_got("expected integer");
      else if (x < 1 || x > kMaxCount) bad_got("must be between 1 and " + std::to_string(kMaxCount));
      continue;
    }
    const RequestOption* o = find_option(key);
    if (!o) {
      bad("unknown key; did you mean \"" + closest(key, keys) + "\"?");
      continue;
    }
    check_option(*o, v, at, base_dir, problems);
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
    // "prompts" (a multi-prompt video) stands for "prompt".
    const bool has_prompts = merged.contains("prompts") && !bad_defaults.count("prompts");
    if (has_prompts && merged.contains("prompt"))
      problems.push_back(where + ".prompts: give either \"prompt\" or \"prompts\", not both");
    for (const auto& o : request_options())
      if (o.required && !merged.contains(o.key) && !bad_defaults.count(o.key) && !(o.key == "prompt" && has_prompts))
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
      if (const RequestOption* o = find_option(it.key())) apply_option(base, *o, it.value(), base_dir);
    if (base.model.empty()) base.model = builtin_model();
    const std::string tmpl = p.merged.contains("output") ? p.merged["output"].get<std::string>()
                                                         : std::string("mmdit-{index}-{seed}.png");
    std::vector<uint64_t> seeds;
    bool random = false;
    if (p.merged.contains("seeds")) {
      for (const auto& s : p.merged["seeds"]) {
        GenerateRequest tmp;
        apply_option(tmp, *find_option("seed"), s, base_dir);
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
      if (!base.attention_maps.empty())
        run.req.attention_maps = expand_template(base.attention_maps, run.index, s, base.prompt, date);
      // An edit's other outputs: templates like "output", relative to the job file's folder.
      for (std::string GenerateRequest::*extra : {&GenerateRequest::source_output, &GenerateRequest::mask_output}) {
        if ((base.*extra).empty()) continue;
        fs::path p(expand_template(base.*extra, run.index, s, base.prompt, date));
        if (!p.is_absolute()) p = base_dir / p;
        run.req.*extra = p.lexically_normal().string();
      }
      run.outputs = batch_outputs(run.req);
      for (const std::string* extra : {&run.req.source_output, &run.req.mask_output})
        if (!extra->empty()) run.outputs.push_back(*extra);
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
  for (const auto& o : request_options()) props[o.key] = option_schema(o);
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
      "prompt (or prompts, a multi-prompt video), in the job or in defaults.";
  s["type"] = "object";
  s["properties"] = {{"$schema", {{"type", "string"}}},
                     {"defaults", {{"$ref", "#/$defs/job"}}},
                     {"jobs", {{"type", "array"}, {"minItems", 1}, {"items", {{"$ref", "#/$defs/job"}}}}}};
  s["required"] = OJ::array({"jobs"});
  s["additionalProperties"] = false;
  // "model" and "prompt" may come from defaults: required in the job unless defaults has them.
  nlohmann::ordered_json need = nlohmann::ordered_json::array();
  for (const auto& k : required_note) {
    // "prompts" (a multi-prompt video) stands for "prompt".
    const OJ keys = k == "prompt" ? OJ::array({"prompt", "prompts"}) : OJ::array({k});
    OJ in_defaults = OJ::array(), in_job = OJ::array();
    for (const auto& key : keys) {
      in_defaults.push_back({{"properties", {{"defaults", {{"required", OJ::array({key})}}}}}, {"required", OJ::array({"defaults"})}});
      in_job.push_back({{"required", OJ::array({key})}});
    }
    OJ has_default = {{"anyOf", in_defaults}};
    OJ job_has = {{"properties", {{"jobs", {{"items", {{"anyOf", in_job}}}}}}}};
    OJ rule = OJ::object();
    rule["if"] = {{"not", has_default}};
    rule["then"] = job_has;
    need.push_back(rule);
  }
  s["allOf"] = need;
  s["$defs"] = {{"job", job}};
  return s;
}


}  // namespace mmdit
