// `mmdit run JOBS.json`: batch generation from a JSON job file (docs/JOBS.md). Validates the whole file
// first (every problem one line on stderr, exit 2, nothing run), then runs the jobs (core/jobs.h).
#include <chrono>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <unistd.h>

#include "apps/commands.h"
#include "apps/launch.h"
#include "core/comm.h"
#include "core/errors.h"
#include "core/jobs.h"
#include "core/log.h"
#include "models/pipeline.h"
#include "core/weights.h"

namespace mmdit {
namespace {

volatile std::sig_atomic_t g_stop = 0;

// First SIGINT/SIGTERM: stop after the current denoising step (no output half-written, summary,
// exit 130). A second one ends the process at once (a model load cannot be interrupted otherwise).
extern "C" void on_signal(int) {
  if (g_stop) {
    static const char msg[] = "\nmmdit: interrupted again; exiting now\n";
    (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(130);
  }
  g_stop = 1;
  static const char msg[] = "\nmmdit: interrupted; stopping after the current step (again to exit now)\n";
  (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
}

void install_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// The report of a file that failed validation: one "invalid" line per job with problems, the summary.
void write_invalid_report(const JobFile& jobs, const std::string& path) {
  std::FILE* out = std::fopen(path.c_str(), "w");
  if (!out) throw FileError(path + ": cannot write the report");
  std::map<int, std::vector<std::string>> by_job;
  for (int j : jobs.invalid_jobs) by_job[j];
  for (const auto& p : jobs.problems)
    if (p.rfind("jobs[", 0) == 0) by_job[std::atoi(p.c_str() + 5)].push_back(p);
  for (const auto& [j, problems] : by_job) {
    std::string error;
    for (const auto& p : problems) error += (error.empty() ? "" : "; ") + p;
    const nlohmann::ordered_json line = {{"job", j}, {"status", "invalid"}, {"error", error}};
    std::fprintf(out, "%s\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  }
  const nlohmann::ordered_json summary = {{"summary", true},         {"runs", 0}, {"invalid", by_job.size()},
                                          {"problems", jobs.problems}, {"exit_code", 2}};
  std::fprintf(out, "%s\n", summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::fclose(out);
}

struct RunFlags {
  std::string file;
  bool check = false, schema = false;
  RunOptions options;
  int gpus = 0, shard_count = 0;
  std::string devices, shard;
};

// --shard K/N, or auto: Slurm's array variables, or Kubernetes' JOB_COMPLETION_INDEX with --shard-count.
std::pair<int, int> parse_shard(const std::string& spec, int count) {
  auto number = [](const std::string& s, const std::string& what) {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError(what + ": expected a whole number, got '" + s + "'");
    return std::atoi(s.c_str());
  };
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  int k = 0, n = 1;
  if (spec == "auto") {
    if (!env("SLURM_ARRAY_TASK_ID").empty()) {
      const int min = env("SLURM_ARRAY_TASK_MIN").empty() ? 0 : number(env("SLURM_ARRAY_TASK_MIN"), "SLURM_ARRAY_TASK_MIN");
      k = number(env("SLURM_ARRAY_TASK_ID"), "SLURM_ARRAY_TASK_ID") - min;
      if (env("SLURM_ARRAY_TASK_COUNT").empty()) throw UsageError("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not");
      n = count > 0 ? count : number(env("SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_COUNT");
    } else if (!env("JOB_COMPLETION_INDEX").empty()) {
      k = number(env("JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX");
      if (count <= 0) throw UsageError("--shard auto: JOB_COMPLETION_INDEX=" + env("JOB_COMPLETION_INDEX") + " needs --shard-count (the job's completions)");
      n = count;
    } else {
      throw UsageError("--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm array) nor JOB_COMPLETION_INDEX (a Kubernetes indexed job) is set");
    }
  } else {
    const size_t slash = spec.find('/');
    if (slash == std::string::npos) throw UsageError("--shard " + spec + ": expected K/N (e.g. 0/4) or auto");
    k = number(spec.substr(0, slash), "--shard " + spec);
    n = number(spec.substr(slash + 1), "--shard " + spec);
    if (count > 0 && count != n) throw UsageError("--shard-count " + std::to_string(count) + ": --shard " + spec + " says " + std::to_string(n));
  }
  if (n < 1 || k < 0 || k >= n)
    throw UsageError("--shard " + spec + ": shard " + std::to_string(k) + " of " + std::to_string(n) + " does not exist (0 <= K < N)");
  return {k, n};
}

// `run --gpus N`: one worker per device, each loading a model once and taking the next run as it comes free (a
// counter in the launcher's store); their report lines come back through the store and make one report.
int run_on_workers(const RunFlags& f, const JobFile& jobs, const std::vector<std::string>& devices) {
  int port = 0;
  auto store = serve_store(port);
  const int n = int(shard_runs(jobs, f.options.shard, f.options.shards).size());
  ReportFile report(f.options.report);
  const auto t0 = std::chrono::steady_clock::now();
  RunTally tally;
  tally.runs = n;
  int done = 0;
  WorkerOptions o;
  o.first_to_terminal = false;
  o.stop_others_on_failure = false;
  o.poll = [&] {
    std::string text;
    while (store_pop(*store, "lines", text)) {
      auto line = nlohmann::ordered_json::parse(text);
      tally.add(line);
      report.line(line);
      const std::string status = line.value("status", "");
      std::string what = status;
      if (line.contains("outputs") && !line["outputs"].empty()) what += " " + line["outputs"][0].get<std::string>();
      log_info("[" + std::to_string(++done) + "/" + std::to_string(n) + "] " + what + " (worker " +
               std::to_string(line.value("worker", 0)) + ", " + line.value("device", "") + ")");
      if (status == "failed" || status == "invalid")
        std::fprintf(stderr, "mmdit: error: jobs[%d] (run %d): %s\n", line["job"].get<int>(), line["index"].get<int>(),
                     line["error"].get<std::string>().c_str());
    }
  };
  bool broken = false;
  o.on_exit = [&](int worker, int code, const std::string& last) {
    if (code == 0 || code == 1 || code == 130) return;  // done, some runs failed (reported), interrupted
    broken = true;
    std::fprintf(stderr, "mmdit: error: worker %d (%s) stopped with exit status %d%s%s\n", worker,
                 devices[size_t(worker)].c_str(), code, last.empty() ? "" : ": ", last.c_str());
  };
  std::vector<std::map<std::string, std::string>> envs;
  for (size_t i = 0; i < devices.size(); ++i)
    envs.push_back({{"MMDIT_JOB_PORT", std::to_string(port)}, {"MMDIT_DEVICE", devices[i]}, {"MMDIT_JOB_WORKER", std::to_string(i)}});
  const int code = run_workers(envs, o);
  if (code == 130) tally.interrupted = true;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%s on %zu devices\n", tally.text(secs).c_str(), devices.size());
  auto summary = tally.summary(secs);
  summary["devices"] = devices;
  if (broken && summary["exit_code"] == 0) summary["exit_code"] = 1;
  report.line(summary);
  return summary["exit_code"].get<int>();
}

void run_command(RunFlags& f) {
  if (f.schema) {
    std::printf("%s\n", job_schema().dump(2).c_str());
    return;
  }
  if (f.file.empty()) throw UsageError("run: give a job file (or - for stdin); see mmdit run --help");
  JobFile jobs = load_jobs(f.file);
  if (!jobs.problems.empty()) {
    for (const auto& p : jobs.problems) std::fprintf(stderr, "%s\n", p.c_str());
    if (!f.options.report.empty()) write_invalid_report(jobs, f.options.report);
    std::fprintf(stderr, "mmdit: error: %s: %zu problem%s; nothing was run\n", f.file == "-" ? "stdin" : f.file.c_str(),
                 jobs.problems.size(), jobs.problems.size() == 1 ? "" : "s");
    throw ExitStatus{2};
  }
  if (!f.shard.empty()) std::tie(f.options.shard, f.options.shards) = parse_shard(f.shard, f.shard_count);
  else if (f.shard_count > 0) throw UsageError("--shard-count: goes with --shard auto");
  if (f.check) {
    std::printf("%s: %zu run%s, valid", f.file.c_str(), jobs.runs.size(), jobs.runs.size() == 1 ? "" : "s");
    if (f.options.shards > 1)
      std::printf(" (shard %d of %d: %zu runs)", f.options.shard, f.options.shards,
                  shard_runs(jobs, f.options.shard, f.options.shards).size());
    std::printf("\n");
    return;
  }
  install_handlers();
  f.options.stop = &g_stop;
  int code = 0;
  // Benchmarks only (docs/BENCHMARKS.md): random weights made on the device, so that full-size configs can be timed.
  const char* random = std::getenv("MMDIT_RANDOM_WEIGHTS");
  const bool random_weights = random && std::string(random) == "1";
  if (const char* one = std::getenv("MMDIT_JOB_ONE"); one && *one && in_worker()) {
    // A rank of one run's world (RunOptions::spread below): make that run, rank 0 writes it.
    const int index = std::atoi(one);
    std::signal(SIGINT, SIG_DFL);  // Ctrl-C ends this rank (its output is written atomically or not at all)
    std::signal(SIGTERM, SIG_DFL);
    for (const JobRun& run : jobs.runs) {
      if (run.index != index) continue;
      GenerateRequest r = run.req;
      join_world(r.device, r.gpus, r.devices, r.parallel);
      const char* random = std::getenv("MMDIT_RANDOM_WEIGHTS");  // benchmarks: the same random weights on every rank
      if (random && std::string(random) == "1") set_random_weights(true, r.device);
      for (const auto& o : run.outputs)
        if (const auto dir = std::filesystem::path(o).parent_path(); !dir.empty()) std::filesystem::create_directories(dir);
      generate(r);
      return;
    }
    throw UsageError("MMDIT_JOB_ONE=" + std::string(one) + ": no such run");
  }
  // A run over several devices: a world of workers that runs this same command and makes just that run.
  f.options.spread = [](const JobRun& run) {
    return run_world(requested_devices(run.req.gpus, run.req.devices),
                     {{"MMDIT_JOB_ONE", std::to_string(run.index)}, {"MMDIT_SEED", std::to_string(run.req.seed)}});
  };
  if (const char* port = std::getenv("MMDIT_JOB_PORT"); port && *port) {  // a worker of run_on_workers
    auto store = join_local_store(std::atoi(port));
    f.options.next = [store] { return int(store_add(*store, "next", 1) - 1); };
    f.options.on_line = [store](const nlohmann::ordered_json& line) { store_push(*store, "lines", line.dump()); };
    const char* device = std::getenv("MMDIT_DEVICE");
    f.options.device = device ? device : "";
    const char* worker = std::getenv("MMDIT_JOB_WORKER");
    f.options.worker = worker ? std::atoi(worker) : 0;
    f.options.report.clear();
    if (random_weights) set_random_weights(true, f.options.device);
    code = run_jobs(jobs, f.options);
  } else if (const auto devices = requested_devices(f.gpus, f.devices); devices.size() > 1) {
    if (f.file == "-") throw UsageError("--gpus/--devices: the workers read the job file again; give a file, not stdin");
    code = run_on_workers(f, jobs, devices);
  } else {
    if (devices.size() == 1) f.options.device = devices[0];
    if (random_weights) set_random_weights(true, f.options.device.empty() ? jobs.runs.front().req.device : f.options.device);
    code = run_jobs(jobs, f.options);
  }
  if (code != 0) throw ExitStatus{code};
}

}  // namespace

Command add_run_command(CLI::App& app) {
  auto f = std::make_shared<RunFlags>();
  auto* sub = app.add_subcommand("run", "Run a JSON job file: many generations, one model load (docs/JOBS.md)");
  sub->add_option("jobs", f->file, "Job file (JSON), or - for stdin");
  sub->add_flag("--check", f->check, "Validate the job file only; run nothing");
  sub->add_flag("--schema", f->schema, "Print the job file JSON Schema (draft 2020-12) and exit");
  sub->add_flag("--skip-existing", f->options.skip_existing, "Skip runs whose outputs all exist (resume)");
  sub->add_option("--report", f->options.report, "Write a JSON-lines report here, one line per run as it ends");
  const char* group = "Several GPUs and machines (docs/SCALING.md)";
  sub->add_option("--gpus", f->gpus, "One worker per GPU of this machine (cuda:0..N-1); each takes the next run as it "
                  "comes free")->group(group)->check(CLI::PositiveNumber);
  sub->add_option("--devices", f->devices, "One worker per device, e.g. cuda:0,cuda:2 (cpu,cpu: CPU workers)")->group(group);
  sub->add_option("--shard", f->shard, "Only the runs whose index is K mod N: K/N, or auto (Slurm array, Kubernetes "
                  "indexed job)")->group(group);
  sub->add_option("--shard-count", f->shard_count, "N for --shard auto under Kubernetes (the job's completions)")
      ->group(group)->check(CLI::PositiveNumber);
  return {sub, [f] { run_command(*f); }};
}

}  // namespace mmdit
