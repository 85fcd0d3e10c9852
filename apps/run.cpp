// `mmdit run JOBS.json`: batch generation from a JSON job file (docs/JOBS.md). Validates the whole file
// first (every problem one line on stderr, exit 2, nothing run), then runs the jobs (core/jobs.h).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <unistd.h>

#include "apps/commands.h"
#include "core/errors.h"
#include "core/jobs.h"
#include "core/log.h"

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
};

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
  if (f.check) {
    std::printf("%s: %zu run%s, valid\n", f.file.c_str(), jobs.runs.size(), jobs.runs.size() == 1 ? "" : "s");
    return;
  }
  install_handlers();
  f.options.stop = &g_stop;
  const int code = run_jobs(jobs, f.options);
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
  return {sub, [f] { run_command(*f); }};
}

}  // namespace mmdit
