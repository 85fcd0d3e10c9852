// Job files over several devices and machines (apps/run.cpp, docs/SCALING.md), with CPU workers on the tiny SD3
// pipeline: `run --devices cpu,cpu,...` (workers take runs as they come free, one report), `run --shard K/N` and
// `mmdit report merge` (the shards together make every output exactly once), Ctrl-C and --skip-existing with
// workers, and the bad shard specs (one line, exit 2).
#include <chrono>
#include <csignal>
#include <fstream>
#include <set>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string tiny() { return std::string(MMDIT_GOLDEN_DIR) + "/sd3_pipeline/tiny-sd3"; }

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }
std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<json> report_lines(const fs::path& p) {
  std::vector<json> out;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

std::set<std::string> pngs_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".png" && e.path().filename().string()[0] != '.') out.insert(e.path().filename().string());
  return out;
}

// `runs` runs of the tiny model writing img-{index}.png into dir.
fs::path job_file(const fs::path& dir, int runs, int steps = 2) {
  json jobs = json::array();
  for (int i = 0; i < runs; ++i) jobs.push_back({{"prompt", "a tiny cyan ring " + std::to_string(i)}, {"seed", i}});
  const json d = {{"model", tiny()}, {"width", 64}, {"height", 64}, {"steps", steps}, {"cfg", 2.0}, {"output", "img-{index}.png"}};
  write_text(dir / "jobs.json", json({{"defaults", d}, {"jobs", jobs}}).dump());
  return dir / "jobs.json";
}

TEST(Scaling, WorkersTakeRunsAsTheyComeFreeAndWriteOneReport) {
  const auto dir = test::temp_dir("scaling_workers"), one = test::temp_dir("scaling_workers_one");
  const auto jobs = job_file(dir, 9);
  auto r = test::run_mmdit("run " + jobs.string() + " --devices cpu,cpu,cpu --report " + (dir / "report.jsonl").string(), "scaling_workers");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto lines = report_lines(dir / "report.jsonl");
  ASSERT_EQ(lines.size(), 10u);
  std::set<int> indexes, workers;
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["status"], "ok");
    EXPECT_EQ(lines[i]["device"], "cpu");
    indexes.insert(lines[i]["index"].get<int>());
    workers.insert(lines[i]["worker"].get<int>());
  }
  EXPECT_EQ(indexes.size(), 9u);
  EXPECT_GE(workers.size(), 2u) << "the runs were not spread over the workers";
  EXPECT_EQ(lines.back()["ok"], 9);
  EXPECT_EQ(lines.back()["devices"].size(), 3u);
  std::set<std::string> all;
  for (int i = 0; i < 9; ++i) all.insert("img-" + std::to_string(i) + ".png");
  EXPECT_EQ(pngs_in(dir), all);
  // The same images as one process makes.
  fs::copy_file(jobs, one / "jobs.json");
  ASSERT_EQ(test::run_mmdit("run -q " + (one / "jobs.json").string()).exit_code, 0);
  for (const auto& f : all) EXPECT_EQ(read_png(dir / f).pixels, read_png(one / f).pixels) << f;
}

TEST(Scaling, ShardsTogetherMakeEveryOutputOnce) {
  const auto dir = test::temp_dir("scaling_shards");
  const auto jobs = job_file(dir, 7);
  std::string reports;
  for (int k = 0; k < 3; ++k) {
    const auto rep = dir / ("report-" + std::to_string(k) + ".jsonl");
    auto r = test::run_mmdit("run -q " + jobs.string() + " --shard " + std::to_string(k) + "/3 --report " + rep.string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const auto& l : report_lines(rep))
      if (!l.value("summary", false)) EXPECT_EQ(l["index"].get<int>() % 3, k);
    reports += " " + rep.string();
  }
  std::set<std::string> all;
  for (int i = 0; i < 7; ++i) all.insert("img-" + std::to_string(i) + ".png");
  EXPECT_EQ(pngs_in(dir), all);
  auto m = test::run_mmdit("report merge" + reports + " -o " + (dir / "all.jsonl").string());
  ASSERT_EQ(m.exit_code, 0) << m.err;
  auto lines = report_lines(dir / "all.jsonl");
  ASSERT_EQ(lines.size(), 8u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(lines[size_t(i)]["index"], i);
  EXPECT_EQ(lines.back()["runs"], 7);
  EXPECT_EQ(lines.back()["ok"], 7);
  EXPECT_EQ(lines.back()["exit_code"], 0);
  // A shard given twice is an error, not a double count.
  auto twice = test::run_mmdit("report merge" + reports + " " + (dir / "report-0.jsonl").string());
  EXPECT_EQ(twice.exit_code, 2);
  EXPECT_NE(twice.err.find("the same shard twice"), std::string::npos) << twice.err;
}

TEST(Scaling, ShardAutoReadsSlurmAndKubernetes) {
  const auto dir = test::temp_dir("scaling_auto");
  const auto jobs = job_file(dir, 7);
  auto run_env = [&](const std::string& env, const std::string& flags) {
    const std::string cmd = env + " " + MMDIT_BINARY + " run " + jobs.string() + " --check --shard auto " + flags +
                            " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
    const int status = std::system(cmd.c_str());
    return std::make_pair(WEXITSTATUS(status), read_text(dir / "out") + read_text(dir / "err"));
  };
  // Slurm arrays may start at any index: the shard is the task's position in the array.
  auto slurm = run_env("SLURM_ARRAY_TASK_ID=12 SLURM_ARRAY_TASK_MIN=10 SLURM_ARRAY_TASK_COUNT=3", "");
  EXPECT_EQ(slurm.first, 0) << slurm.second;
  EXPECT_NE(slurm.second.find("(shard 2 of 3: 2 runs)"), std::string::npos) << slurm.second;
  auto k8s = run_env("JOB_COMPLETION_INDEX=0", "--shard-count 2");
  EXPECT_EQ(k8s.first, 0) << k8s.second;
  EXPECT_NE(k8s.second.find("(shard 0 of 2: 4 runs)"), std::string::npos) << k8s.second;
  auto no_count = run_env("JOB_COMPLETION_INDEX=1", "");
  EXPECT_EQ(no_count.first, 2);
  EXPECT_NE(no_count.second.find("needs --shard-count"), std::string::npos) << no_count.second;
}

TEST(Scaling, BadShardSpecsExitTwoWithOneLine) {
  const auto dir = test::temp_dir("scaling_bad");
  const auto jobs = job_file(dir, 3);
  for (const auto& [spec, words] : std::vector<std::pair<std::string, std::string>>{
           {"3/3", "shard 3 of 3 does not exist"},
           {"1/0", "shard 1 of 0 does not exist"},
           {"two/4", "expected a whole number"},
           {"2", "expected K/N"},
           {"auto", "neither SLURM_ARRAY_TASK_ID"}}) {
    auto r = test::run_mmdit("run " + jobs.string() + " --shard " + spec, "bad_shard");
    EXPECT_EQ(r.exit_code, 2) << spec;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << spec << ": " << r.err;
  }
  auto gpus = test::run_mmdit("run " + jobs.string() + " --gpus 2", "bad_gpus");
  EXPECT_EQ(gpus.exit_code, 2);
  EXPECT_NE(gpus.err.find("this machine has 0 CUDA devices"), std::string::npos) << gpus.err;
  EXPECT_TRUE(pngs_in(dir).empty());
}

TEST(Scaling, CtrlCStopsEveryWorkerThenSkipExistingResumes) {
  const auto dir = test::temp_dir("scaling_ctrl_c");
  const auto jobs = job_file(dir, 8, 6);
  // A terminal's Ctrl-C goes to the whole foreground process group: the launcher and its workers.
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const std::string log = (dir / "first.log").string();
    std::freopen(log.c_str(), "w", stderr);
    std::freopen("/dev/null", "w", stdout);
    ::execl(MMDIT_BINARY, MMDIT_BINARY, "run", jobs.c_str(), "--devices", "cpu,cpu", "--report",
            (dir / "first.jsonl").c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (pngs_in(dir).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_FALSE(pngs_in(dir).empty()) << read_text(dir / "first.log");
  ::kill(-pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string log = read_text(dir / "first.log");
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 130) << log;
  const auto first = pngs_in(dir);
  ASSERT_LT(first.size(), 8u) << "finished before the signal\n" << log;
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  auto lines = report_lines(dir / "first.jsonl");
  ASSERT_FALSE(lines.empty());
  EXPECT_TRUE(lines.back()["interrupted"].get<bool>()) << lines.back();
  EXPECT_EQ(lines.back()["exit_code"], 130);
  auto r = test::run_mmdit("run --skip-existing --devices cpu,cpu --report " + (dir / "second.jsonl").string() + " " +
                           jobs.string(), "scaling_resume");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(pngs_in(dir).size(), 8u);
  auto second = report_lines(dir / "second.jsonl");
  EXPECT_EQ(second.back()["skipped"], int(first.size()));
  EXPECT_EQ(second.back()["ok"], 8 - int(first.size()));
}

TEST(Scaling, SlurmAndKubernetesExamplesInTheDocsParse) {
  const char* py = std::getenv("MMDIT_PYTHON");
  auto r = std::system((std::string(py ? py : MMDIT_SOURCE_DIR "/.venv/bin/python") + " " + MMDIT_SOURCE_DIR +
                        "/scripts/check_scaling_docs.py " + MMDIT_BINARY + " >" + MMDIT_TEST_TMP + "/scaling_docs.log 2>&1")
                           .c_str());
  EXPECT_EQ(WEXITSTATUS(r), 0) << read_text(fs::path(MMDIT_TEST_TMP) / "scaling_docs.log");
}

}  // namespace
}  // namespace mmdit
