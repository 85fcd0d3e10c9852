// `mmdit run`: JSON job files. One table of request options (request_options()) drives the `generate`
// flags, the job-file keys, their validation and the published JSON Schema. load_jobs() validates a
// whole file and expands it into runs; run_jobs() executes them (pipelines loaded once, failures
// reported and skipped over, interruptible between jobs and between denoising steps). Torch-free: it
// talks to models only through models/pipeline.h.
#pragma once
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/pipeline.h"

namespace mmdit {

// One option of a generation request: the `generate` flag --KEY-WITH-DASHES and the job key KEY.
struct RequestOption {
  enum class Type {
    String,   // any string
    Path,     // a file or folder; in a job file relative to the file's folder, and it must exist
    Integer,  // int, range [min, max]
    Number,   // double, range [min, max]
    Seed,     // uint64
    IntList,  // comma-separated on the CLI; an array of integers or "7,8,9" in a job file
    Flag,     // a CLI flag without value; true/false in a job file
  };
  std::string key;         // job key, e.g. "negative_prompt"
  std::string short_flag;  // e.g. "n", or empty
  std::string help;        // CLI help (and schema description unless job_help is set)
  Type type = Type::String;
  bool required = false;
  std::optional<double> min, max;
  bool min_exclusive = false;        // min < value rather than min <= value
  std::vector<std::string> choices;  // allowed strings (checked in job files; empty = any)
  std::string job_help;              // description in the schema where it differs from the CLI's
  // Where the value lives in a GenerateRequest (by type: str for String/Path, integer, number).
  std::string GenerateRequest::*str = nullptr;
  int GenerateRequest::*integer = nullptr;
  double GenerateRequest::*number = nullptr;
  bool GenerateRequest::*flag = nullptr;

  std::string long_flag() const;  // "--negative-prompt"
};

// Every option of `generate`, in its --help order.
const std::vector<RequestOption>& request_options();

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
std::string prompt_slug(const std::string& prompt);  // lowercase [a-z0-9-], at most 40 chars
size_t edit_distance(const std::string& a, const std::string& b);
std::string closest(const std::string& word, const std::vector<std::string>& candidates);
std::string today();  // local YYYY-MM-DD

struct RunOptions {
  bool skip_existing = false;
  std::string report;  // JSON-lines report path; empty = none
  // Set (by a signal handler) to stop: checked between jobs and between denoising steps.
  const volatile std::sig_atomic_t* stop = nullptr;
};

// Runs the jobs; returns the exit code: 0 all ok or skipped, 1 some job failed or was invalid at
// run time, 130 interrupted.
int run_jobs(const JobFile& jobs, const RunOptions& options);

}  // namespace mmdit
