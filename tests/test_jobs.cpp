// `mmdit run` job files on the tiny SD3 pipeline: validation (every problem, exact messages, exit 2,
// nothing written), run-time failures that do not stop the run, seed expansion and output templates,
// equality with `mmdit generate`, SIGINT/SIGKILL then --skip-existing, the schema against the
// `generate` flags, and the speed of one process over many `generate`s.
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "core/jobs.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::string tiny() { return std::string(MMDIT_GOLDEN_DIR) + "/sd3_pipeline/tiny-sd3"; }

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::vector<json> report_lines(const fs::path& p) {
  std::vector<json> out;
  for (const auto& l : lines(read_text(p))) out.push_back(json::parse(l));
  return out;
}

// Files in `dir` (recursively), relative names.
std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.insert(fs::relative(e.path(), dir).string());
  return out;
}

std::set<std::string> pngs_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& f : files_in(dir))
    if (fs::path(f).extension() == ".png") out.insert(f);
  return out;
}

json small_defaults() { return {{"model", tiny()}, {"width", 64}, {"height", 64}, {"steps", 2}, {"cfg", 2.0}}; }

TEST(Jobs, Helpers) {
  EXPECT_EQ(prompt_slug("A Red Circle, above a BLUE square!"), "a-red-circle-above-a-blue-square");
  EXPECT_EQ(prompt_slug("  café 東京 42  "), "caf-42");
  EXPECT_EQ(prompt_slug("!!!"), "empty");
  EXPECT_EQ(prompt_slug(std::string(100, 'x')).size(), 40u);
  EXPECT_EQ(prompt_slug("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbb"), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  EXPECT_EQ(edit_distance("stesp", "steps"), 2u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(closest("negatve_prompt", {"prompt", "negative_prompt", "steps"}), "negative_prompt");
  EXPECT_EQ(today().size(), 10u);
}

TEST(Jobs, ValidationReportsEveryProblemAndRunsNothing) {
  auto dir = test::temp_dir("jobs_invalid");
  json d = small_defaults();
  d["negatve_prompt"] = "blurry";
  json jobs = json::array();
  for (int i = 0; i < 24; ++i)
    jobs.push_back({{"prompt", "a small red circle " + std::to_string(i)}, {"seed", i}, {"output", "ok-{index}.png"}});
  jobs[3]["steps"] = "ten";
  jobs[5]["stesp"] = 3;
  jobs[7]["batch"] = 100;
  jobs[8].erase("prompt");
  jobs[10]["cfg"] = -1;
  jobs[11]["slg_layers"] = json::array({1, "x"});
  jobs[12]["output"] = "x.jpg";
  jobs[13]["output"] = "{idx}.png";
  jobs[14]["seeds"] = {1, 2};
  jobs[14].erase("seed");
  jobs[14]["count"] = 3;
  jobs[15]["dtype"] = "f64";
  jobs[16]["width"] = 0;
  jobs[18]["model"] = "/no/such/model";
  jobs[19]["output"] = "same.png";
  jobs[20]["output"] = "same.png";
  jobs[21]["seed"] = -3;
  jobs[22]["slg_layers"] = "7,x";
  jobs[23]["device"] = "tpu";
  json doc = {{"defaults", d}, {"jobs", jobs}, {"job", json::array()}};
  write_text(dir / "jobs.json", doc.dump(1));
  const std::vector<std::string> expected = {
      "job: unknown key; did you mean \"jobs\"?",
      "defaults.negatve_prompt: unknown key; did you mean \"negative_prompt\"?",
      "jobs[3].steps: expected integer, got \"ten\"",
      "jobs[5].stesp: unknown key; did you mean \"steps\"?",
      "jobs[7].batch: must be between 1 and 64, got 100",
      "jobs[8].prompt: missing (required; give it in the job or in \"defaults\")",
      "jobs[10].cfg: must be at least 0, got -1",
      "jobs[11].slg_layers[1]: expected integer, got \"x\"",
      "jobs[12].output: outputs are .png images, .mp4 videos or frame patterns like f_%03d.png, got \"x.jpg\"",
      "jobs[13].output: unknown placeholder {idx} (known: {index}, {seed}, {prompt_slug}, {date})",
      "jobs[14].count: cannot be combined with \"seeds\"",
      "jobs[15].dtype: expected one of f32, f16, bf16, fp32, fp16, float32, float16, bfloat16, got \"f64\"",
      "jobs[16].width: must be greater than 0, got 0",
      "jobs[18].model: no such file or folder: /no/such/model",
      "jobs[21].seed: must be between 0 and 18446744073709551615, got -3",
      "jobs[22].slg_layers: expected comma-separated layer numbers like \"7,8,9\", got \"7,x\"",
      "jobs[23].device: expected cpu, cuda or cuda:N, got \"tpu\"",
      "jobs[20].output: writes " + (dir / "same.png").string() + ", which jobs[19] also writes",
  };
  const fs::path report = test::temp_dir("jobs_invalid_report") / "r.jsonl";
  for (const std::string& mode : std::vector<std::string>{"--check ", "", "--report " + report.string() + " "}) {
    auto r = test::run_mmdit("run " + mode + (dir / "jobs.json").string(), "jobs_invalid");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    auto got = lines(r.err);
    ASSERT_EQ(got.size(), expected.size() + 1) << r.err;
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(got[i], expected[i]);
    EXPECT_EQ(got.back(), "mmdit: error: " + (dir / "jobs.json").string() + ": 18 problems; nothing was run");
    EXPECT_EQ(r.out, "");
  }
  EXPECT_EQ(files_in(dir), std::set<std::string>{"jobs.json"});
  auto rep = report_lines(report);
  ASSERT_EQ(rep.size(), 17u);  // 16 invalid jobs, the summary
  EXPECT_EQ(rep[0], json({{"job", 3}, {"status", "invalid"}, {"error", expected[2]}}));
  EXPECT_EQ(rep.back()["invalid"], 16);
  EXPECT_EQ(rep.back()["exit_code"], 2);

  // A bad value in "defaults" is reported once, under defaults.
  write_text(dir / "d.json", json({{"defaults", {{"model", tiny()}, {"cfg", "x"}}}, {"jobs", {{{"prompt", "a"}}, {{"prompt", "b"}}}}}).dump());
  auto r = test::run_mmdit("run --check " + (dir / "d.json").string(), "jobs_invalid_defaults");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(lines(r.err).at(0), "defaults.cfg: expected number, got \"x\"");
  EXPECT_EQ(lines(r.err).size(), 2u) << r.err;

  // Not JSON: one line, exit 2.
  write_text(dir / "bad.json", "{\"jobs\": [");
  r = test::run_mmdit("run " + (dir / "bad.json").string(), "jobs_bad_json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("not valid JSON"), std::string::npos) << r.err;
}

TEST(Jobs, RunTimeFailuresAreReportedAndTheRestComplete) {
  auto dir = test::temp_dir("jobs_failures");
  // A model folder that looks right but cannot be loaded.
  fs::create_directories(dir / "broken-model");
  write_text(dir / "broken-model" / "model_index.json", "{\"_class_name\": \"StableDiffusion3Pipeline\", ");
  json jobs = json::array();
  for (int i = 0; i < 20; ++i) jobs.push_back({{"prompt", "a shape number " + std::to_string(i % 5)}, {"seed", 100 + i}});
  jobs[4]["width"] = 100;  // resolve() rejects it: not a multiple of 16
  jobs[9]["model"] = "broken-model";
  jobs[15]["model"] = "broken-model";
  json d = small_defaults();
  d["output"] = "out/{index}.png";
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump(1));
  auto r = test::run_mmdit("run --report " + (dir / "report.jsonl").string() + " " + (dir / "jobs.json").string(),
                           "jobs_failures");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  std::set<std::string> expected;
  for (int i = 0; i < 20; ++i)
    if (i != 4 && i != 9 && i != 15) expected.insert("out/" + std::to_string(i) + ".png");
  EXPECT_EQ(pngs_in(dir), expected);
  for (const auto& f : expected) EXPECT_EQ(read_png(dir / f).width, 64);
  // The tiny model is loaded once for all 17 runs; the broken one is tried once.
  size_t loads = 0;
  for (const auto& l : lines(r.err)) loads += l.find("loaded ") != std::string::npos;
  EXPECT_EQ(loads, 1u) << r.err;
  auto rep = report_lines(dir / "report.jsonl");
  ASSERT_EQ(rep.size(), 21u);
  for (int i = 0; i < 20; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(rep[i]["index"], i);
    EXPECT_EQ(rep[i]["seed"], 100 + i);
    const std::string want = i == 4 ? "invalid" : (i == 9 || i == 15) ? "failed" : "ok";
    EXPECT_EQ(rep[i]["status"], want);
    if (want == "ok") {
      EXPECT_EQ(rep[i]["outputs"], json::array({(dir / "out" / (std::to_string(i) + ".png")).string()}));
      EXPECT_TRUE(rep[i]["error"].is_null());
    } else {
      EXPECT_TRUE(rep[i]["outputs"].empty());
      EXPECT_TRUE(rep[i]["error"].is_string());
    }
    EXPECT_TRUE(rep[i]["seconds"].is_number());
  }
  EXPECT_NE(rep[4]["error"].get<std::string>().find("multiples of 16"), std::string::npos) << rep[4];
  EXPECT_NE(rep[9]["error"].get<std::string>().find("cannot load"), std::string::npos) << rep[9];
  EXPECT_EQ(rep[9]["error"], rep[15]["error"]);
  EXPECT_EQ(rep[20]["summary"], true);
  EXPECT_EQ(rep[20]["ok"], 17);
  EXPECT_EQ(rep[20]["failed"], 2);
  EXPECT_EQ(rep[20]["invalid"], 1);
  EXPECT_EQ(rep[20]["exit_code"], 1);
  EXPECT_NE(r.err.find("mmdit run: 17 ok, 2 failed, 1 invalid, 0 skipped, 0 not run of 20 runs"), std::string::npos) << r.err;
  // stdout: the written paths, one per line.
  EXPECT_EQ(lines(r.out).size(), 17u);
}

TEST(Jobs, SeedExpansionAndOutputTemplates) {
  auto dir = test::temp_dir("jobs_seeds");
  json d = small_defaults();
  d["steps"] = 1;
  json jobs = {{{"prompt", "A Red Circle!"}, {"seeds", {5, 9}}, {"output", "{prompt_slug}-{seed}.png"}},
               {{"prompt", "blue"}, {"count", 3}, {"seed", 10}, {"output", "out/{index}-{seed}-{date}.png"}},
               {{"prompt", "green"}, {"count", 2}},
               {{"prompt", "two"}, {"seed", 1}, {"batch", 2}, {"output", "b.png"}}};
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump(1));
  auto r = test::run_mmdit("run -q --report " + (dir / "report.jsonl").string() + " " + (dir / "jobs.json").string(),
                           "jobs_seeds");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rep = report_lines(dir / "report.jsonl");
  ASSERT_EQ(rep.size(), 9u);
  const uint64_t s = rep[5]["seed"].get<uint64_t>();
  EXPECT_TRUE(rep[5]["random_seed"].get<bool>());
  EXPECT_EQ(rep[6]["seed"].get<uint64_t>(), s + 1);
  EXPECT_FALSE(rep[0]["random_seed"].get<bool>());
  const std::string date = today();
  const std::set<std::string> expected = {"a-red-circle-5.png",
                                          "a-red-circle-9.png",
                                          "out/2-10-" + date + ".png",
                                          "out/3-11-" + date + ".png",
                                          "out/4-12-" + date + ".png",
                                          "mmdit-5-" + std::to_string(s) + ".png",
                                          "mmdit-6-" + std::to_string(s + 1) + ".png",
                                          "b-0.png",
                                          "b-1.png"};
  EXPECT_EQ(pngs_in(dir), expected);
  const std::vector<uint64_t> seeds = {5, 9, 10, 11, 12, s, s + 1, 1};
  for (size_t i = 0; i < seeds.size(); ++i) {
    EXPECT_EQ(rep[i]["index"], i);
    EXPECT_EQ(rep[i]["seed"].get<uint64_t>(), seeds[i]);
    const std::string out = rep[i]["outputs"][0];
    EXPECT_EQ(json::parse(read_png_text(out).at("mmdit"))["seed"].get<uint64_t>(), seeds[i]) << out;
  }
  EXPECT_EQ(rep[7]["outputs"].size(), 2u);
  EXPECT_EQ(rep[0]["job"], 0);
  EXPECT_EQ(rep[4]["job"], 1);
  EXPECT_EQ(rep[6]["job"], 2);

  // A template that makes a job's runs collide is caught before anything runs.
  write_text(dir / "collide.json", json({{"defaults", d}, {"jobs", {{{"prompt", "x"}, {"count", 2}, {"output", "c.png"}}}}}).dump());
  auto c = test::run_mmdit("run " + (dir / "collide.json").string(), "jobs_collide");
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_EQ(lines(c.err).at(0), "jobs[0].output: its runs write the same file " + (dir / "c.png").string() +
                                    " (add {seed} or {index})");
}

TEST(Jobs, SameImageAsGenerate) {
  auto dir = test::temp_dir("jobs_same");
  const std::string params = " --prompt 'a large green star' --negative-prompt 'blurry' --seed 42 --steps 3 --cfg 4.5"
                             " --width 64 --height 96 --shift 2.0 --max-sequence-length 32";
  auto g = test::run_mmdit("generate -q --model " + tiny() + params + " -o " + (dir / "gen.png").string(), "jobs_same_gen");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  json target = {{"prompt", "a large green star"}, {"negative_prompt", "blurry"}, {"seed", 42}, {"steps", 3},
                 {"cfg", 4.5}, {"width", 64}, {"height", 96}, {"shift", 2.0}, {"max_sequence_length", 32},
                 {"output", "run.png"}};
  // Earlier jobs warm the pipeline and its prompt-encoding cache with the same prompt.
  json jobs = {{{"prompt", "a large green star"}, {"negative_prompt", "blurry"}, {"seed", 7}, {"steps", 2},
                {"max_sequence_length", 32}, {"width", 64}, {"height", 64}, {"output", "warm.png"}},
               target};
  write_text(dir / "jobs.json", json({{"defaults", {{"model", tiny()}}}, {"jobs", jobs}}).dump());
  auto r = test::run_mmdit("run -q " + (dir / "jobs.json").string(), "jobs_same_run");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Image a = read_png(dir / "gen.png"), b = read_png(dir / "run.png");
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  EXPECT_TRUE(a.pixels == b.pixels);
  // Also from stdin ("-"), relative paths then being relative to the current folder.
  json one = target;
  one["output"] = (dir / "stdin.png").string();
  one["model"] = tiny();
  write_text(dir / "stdin.json", json({{"jobs", {one}}}).dump());
  auto s = test::run_mmdit("run -q - < " + (dir / "stdin.json").string(), "jobs_same_stdin");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_TRUE(read_png(dir / "stdin.png").pixels == a.pixels);
}

// Each model is loaded once and kept while a later run needs it: A, B, A loads two pipelines.
TEST(Jobs, PipelinesAreLoadedOnceAndKeptForLaterJobs) {
  auto dir = test::temp_dir("jobs_cache");
  const std::string other = std::string(MMDIT_GOLDEN_DIR) + "/sd3_pipeline/tiny-sd35m";
  json d = small_defaults();
  d["steps"] = 1;
  d["output"] = "{index}.png";
  json jobs = {{{"prompt", "a"}, {"seed", 1}}, {{"prompt", "b"}, {"seed", 2}, {"model", other}},
               {{"prompt", "a"}, {"seed", 3}}, {{"prompt", "c"}, {"seed", 4}, {"model", other}}};
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump());
  auto r = test::run_mmdit("run " + (dir / "jobs.json").string(), "jobs_cache");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> loads;
  for (const auto& l : lines(r.err))
    if (l.find("loaded ") != std::string::npos) loads.push_back(l);
  ASSERT_EQ(loads.size(), 2u) << r.err;
  EXPECT_NE(loads[0].find("tiny-sd3 "), std::string::npos) << loads[0];
  EXPECT_NE(loads[1].find("tiny-sd35m "), std::string::npos) << loads[1];
  EXPECT_EQ(pngs_in(dir).size(), 4u);
}

// --- interruption and resume --------------------------------------------------------------------

struct Child {
  pid_t pid = -1;
};

Child spawn_mmdit(const std::vector<std::string>& args, const fs::path& log) {
  Child c;
  c.pid = ::fork();
  if (c.pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    std::string bin = MMDIT_BINARY;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return c;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A job file long enough to interrupt after its first output: 6 runs of 4 steps.
fs::path slow_jobs(const fs::path& dir) {
  json d = small_defaults();
  d["steps"] = 4;
  d["output"] = "img-{index}.png";
  json jobs = json::array();
  for (int i = 0; i < 6; ++i) jobs.push_back({{"prompt", "a tiny cyan ring " + std::to_string(i)}, {"seed", i}});
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump());
  return dir / "jobs.json";
}

std::map<std::string, fs::file_time_type> mtimes(const fs::path& dir) {
  std::map<std::string, fs::file_time_type> m;
  for (const auto& f : pngs_in(dir)) m[f] = fs::last_write_time(dir / f);
  return m;
}

void interrupt_then_resume(int sig, const std::string& tag) {
  auto dir = test::temp_dir(tag);
  const fs::path jobs = slow_jobs(dir);
  Child c = spawn_mmdit({"run", jobs.string()}, dir / "first.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (pngs_in(dir).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_FALSE(pngs_in(dir).empty()) << read_text(dir / "first.log");
  ::kill(c.pid, sig);
  const int code = wait_exit(c.pid);
  const std::string log = read_text(dir / "first.log");
  EXPECT_EQ(code, sig == SIGKILL ? 128 + SIGKILL : 130) << log;
  auto before = mtimes(dir);
  ASSERT_LT(before.size(), 6u) << "the run finished before the signal; make the jobs slower\n" << log;
  for (const auto& [f, t] : before) EXPECT_EQ(read_png(dir / f).width, 64) << f;  // complete files only
  if (sig != SIGKILL) {
    for (const auto& f : files_in(dir)) EXPECT_NE(f[0], '.') << "temp file left: " << f;
    EXPECT_NE(log.find("(interrupted)"), std::string::npos) << log;
  } else {
    // What a kill in the middle of write_png leaves: a dot-named temp file of a dead process.
    write_text(dir / (".img-5.png.tmp-" + std::to_string(c.pid)), "half a png");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // mtimes would show a rewrite
  auto r = test::run_mmdit("run --skip-existing --report " + (dir / "report.jsonl").string() + " " + jobs.string(), tag);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> all;
  for (int i = 0; i < 6; ++i) all.insert("img-" + std::to_string(i) + ".png");
  EXPECT_EQ(pngs_in(dir), all);
  for (const auto& [f, t] : before) EXPECT_EQ(fs::last_write_time(dir / f), t) << f << " was regenerated";
  for (const auto& f : files_in(dir)) EXPECT_NE(f[0], '.') << "temp file left: " << f;
  auto rep = report_lines(dir / "report.jsonl");
  EXPECT_EQ(rep.back()["skipped"], int(before.size()));
  EXPECT_EQ(rep.back()["ok"], 6 - int(before.size()));
}

TEST(Jobs, SigintThenSkipExisting) { interrupt_then_resume(SIGINT, "jobs_sigint"); }
TEST(Jobs, SigtermThenSkipExisting) { interrupt_then_resume(SIGTERM, "jobs_sigterm"); }
TEST(Jobs, SigkillThenSkipExisting) { interrupt_then_resume(SIGKILL, "jobs_sigkill"); }

// --- schema ---------------------------------------------------------------------------------------

TEST(Jobs, SchemaHasAKeyForEveryGenerateOption) {
  auto help = test::run_mmdit("generate --help", "jobs_help");
  ASSERT_EQ(help.exit_code, 0);
  auto schema = test::run_mmdit("run --schema", "jobs_schema");
  ASSERT_EQ(schema.exit_code, 0) << schema.err;
  json s = json::parse(schema.out);
  EXPECT_EQ(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
  const json& props = s["$defs"]["job"]["properties"];
  std::regex flag(R"((?:^|[ ,])--([a-z0-9][a-z0-9-]*))");
  std::set<std::string> flags;
  for (const auto& l : lines(help.out))
    for (std::sregex_iterator it(l.begin(), l.end(), flag), end; it != end; ++it) flags.insert((*it)[1]);
  flags.erase("help");
  EXPECT_GE(flags.size(), 20u);
  // --region and --region-mask are the two forms of the job key "regions" (box or mask entries).
  for (std::string f : flags) {
    std::replace(f.begin(), f.end(), '-', '_');
    if (f == "region" || f == "region_mask") f = "regions";
    if (f == "prompts_file") f = "prompts";  // --prompt repeated or --prompts-file: the job key "prompts"
    EXPECT_TRUE(props.contains(f)) << "generate --" << f << " has no job key";
  }
  // ...and every job key but the seed expansion ones is a generate flag.
  for (auto it = props.begin(); it != props.end(); ++it) {
    std::string f = it.key();
    if (f == "seeds" || f == "count") continue;
    if (f == "regions") {
      EXPECT_TRUE(flags.count("region") && flags.count("region-mask"));
      continue;
    }
    if (f == "prompts") {
      EXPECT_TRUE(flags.count("prompt") && flags.count("prompts-file"));
      continue;
    }
    std::replace(f.begin(), f.end(), '_', '-');
    EXPECT_TRUE(flags.count(f)) << it.key();
  }
  EXPECT_EQ(props["steps"]["type"], "integer");
  EXPECT_EQ(props["steps"]["exclusiveMinimum"], 0);
  EXPECT_EQ(props["batch"]["maximum"], 64);
  // The published copy is current (regenerate with: build/mmdit run --schema > docs/jobs.schema.json).
  EXPECT_EQ(json::parse(read_text(test::source_dir() / "docs" / "jobs.schema.json")), s);
}

// The example job files in configs/ are valid (with the model path pointed at this build's tiny model).
TEST(Jobs, ConfigExamplesAreValid) {
  auto dir = test::temp_dir("jobs_configs");
  int n = 0;
  for (const auto& e : fs::directory_iterator(test::source_dir() / "configs")) {
    if (e.path().filename().string().rfind("jobs-", 0) != 0) continue;
    json doc = json::parse(read_text(e.path()));
    if (doc.contains("defaults") && doc["defaults"].contains("model")) doc["defaults"]["model"] = tiny();
    for (auto& j : doc["jobs"])
      if (j.contains("model")) j["model"] = tiny();
    const fs::path p = dir / e.path().filename();
    write_text(p, doc.dump());
    auto r = test::run_mmdit("run --check " + p.string(), "jobs_configs");
    EXPECT_EQ(r.exit_code, 0) << e.path() << "\n" << r.err;
    ++n;
  }
  EXPECT_GE(n, 2);
}

// One process for 10 runs beats 10 `generate`s (model load and process start paid once). Wall times on a
// shared machine vary with the load of other tests, so generate and run alternate three times and the
// fastest of each is compared; one OpenMP thread keeps contention from inflating them.
TEST(Jobs, TenJobsFasterThanTenGenerates) {
  ::setenv("OMP_NUM_THREADS", "1", 1);
  auto dir = test::temp_dir("jobs_speed");
  auto now = [] { return std::chrono::steady_clock::now(); };
  const std::string params = " --width 64 --height 64 --steps 2 --cfg 2";
  json jobs = json::array();
  for (int i = 0; i < 10; ++i) jobs.push_back({{"prompt", "a red circle number " + std::to_string(i)}, {"seed", i}});
  json d = small_defaults();
  d["output"] = "r-{index}.png";
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump());
  double one = 1e9, ten = 1e9;
  for (int round = 0; round < 3; ++round) {
    auto t0 = now();
    auto g = test::run_mmdit("generate -q --model " + tiny() + params + " --prompt 'a red circle' --seed 1 -o " +
                                 (dir / "g.png").string(), "jobs_speed_gen");
    const double t_gen = std::chrono::duration<double>(now() - t0).count();
    ASSERT_EQ(g.exit_code, 0) << g.err;
    t0 = now();
    auto r = test::run_mmdit("run -q " + (dir / "jobs.json").string(), "jobs_speed_run");
    const double t_run = std::chrono::duration<double>(now() - t0).count();
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::printf("round %d: one generate %.2f s, run of 10 jobs %.2f s\n", round, t_gen, t_run);
    one = std::min(one, t_gen);
    ten = std::min(ten, t_run);
  }
  std::printf("fastest: one generate %.2f s; run of 10 jobs %.2f s (%.1fx one generate)\n", one, ten, ten / one);
  EXPECT_LT(ten, 10 * one);
}

}  // namespace
}  // namespace mmdit
