// `mmdit run`: JSON job files. The keys are the request options (core/options.h), the same table as the
// `generate` flags. load_jobs() validates a whole file and expands it into runs (core/jobs.cpp); run_jobs()
// executes them (core/job_runner.cpp: pipelines loaded once, failures reported and skipped over,
// interruptible between jobs and between denoising steps). Torch-free: it talks to models only through
// models/pipeline.h.
#pragma once
#include <csignal>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/options.h"
#include "models/pipeline.h"

namespace mmdit {

// Keys a job may have beyond the request options: seed expansion.
//   "seeds": [s0, s1, ...]  one run per seed
//   "count": N              N runs with seeds seed, seed+1, ... (random base seed when "seed" is absent)
constexpr int kMaxCount = 10000;

// One run after expansion.
struct JobRun {
  int index = 0;             // position after expansion: {index}, the report's "index"
  int job = 0;               // position in the file's "jobs" array
  GenerateRequest req;       // seed set; output = the expanded template
  bool random_seed = false;  // the seed was drawn at random (recorded in the report)
  std::vector<std::string> outputs;  // files the run writes (output, or its -N variants for batch > 1)
};

struct JobFile {
  std::string source;                 // the path given, or "-"
  std::vector<JobRun> runs;           // empty when problems is not
  std::vector<std::string> problems;  // "jobs[3].steps: expected integer, got \"ten\"", in file order
  std::vector<int> invalid_jobs;      // positions in "jobs" with a problem
};

// Parses and validates a job file ("-" = stdin) and expands it. Relative paths (model, encoders,
// output) are relative to the file's folder (stdin: the current folder). Throws FileError/FormatError
// when the file cannot be read or is not JSON; every other problem goes to JobFile::problems.
JobFile load_jobs(const std::string& path);
// The same from parsed JSON; `date` is what {date} expands to (YYYY-MM-DD).
JobFile parse_jobs(const nlohmann::json& doc, const std::filesystem::path& base_dir, const std::string& date);

// The JSON Schema (draft 2020-12) of job files, from the same table.
nlohmann::ordered_json job_schema();

// Helpers (exposed for tests).
size_t edit_distance(const std::string& a, const std::string& b);
std::string closest(const std::string& word, const std::vector<std::string>& candidates);
std::string today();  // local YYYY-MM-DD

struct RunOptions {
  bool skip_existing = false;
  std::string report;  // JSON-lines report path; empty = none
  // Set (by a signal handler) to stop: checked between jobs and between denoising steps.
  const volatile std::sig_atomic_t* stop = nullptr;
  // Batch over machines (`--shard K/N`): only the runs whose index is K mod N.
  int shard = 0, shards = 1;
  // A worker of `run --gpus N` (apps/run.cpp): `next` hands out positions in shard_runs() (-1: none left)
  // instead of going in order; each report line also goes to `on_line`; `device` replaces each run's device;
  // no summary (the parent writes it).
  std::function<int()> next;
  std::function<void(const nlohmann::ordered_json&)> on_line;
  std::string device;
  int worker = -1;  // the worker's number, recorded in its report lines
  // A run with "gpus" > 1 or several "devices" (one generation over several devices): started by this callback
  // (apps/run.cpp: a world of workers that makes just this run); returns their exit status.
  std::function<int(const JobRun&)> spread;
};

// Positions in jobs.runs of the runs this shard makes, in order.
std::vector<int> shard_runs(const JobFile& jobs, int shard, int shards);

// A JSON-lines report written as the runs end (each line flushed); no file for an empty path. Throws FileError.
class ReportFile {
 public:
  explicit ReportFile(const std::string& path);
  ~ReportFile();
  ReportFile(const ReportFile&) = delete;
  ReportFile& operator=(const ReportFile&) = delete;
  void line(const nlohmann::ordered_json& j);

 private:
  std::FILE* f_ = nullptr;
};

// The counts of a run's report lines, and the summary line and exit code they make.
struct RunTally {
  int ok = 0, failed = 0, invalid = 0, skipped = 0, runs = 0;
  bool interrupted = false;
  void add(const nlohmann::ordered_json& line);
  int exit_code() const { return interrupted ? 130 : (failed || invalid) ? 1 : 0; }
  int not_run() const { return runs - ok - failed - invalid - skipped; }  // an interrupted run counts as not run
  nlohmann::ordered_json summary(double seconds) const;
  std::string text(double seconds) const;  // "mmdit run: 3 ok, 0 failed, ... of 4 runs in 2.0 s"
};

// Runs the jobs; returns the exit code: 0 all ok or skipped, 1 some job failed or was invalid at
// run time, 130 interrupted.
int run_jobs(const JobFile& jobs, const RunOptions& options);

}  // namespace mmdit
