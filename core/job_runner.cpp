// `mmdit run`: executing the runs of a validated job file (core/jobs.h).
#include "core/jobs.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <signal.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/image_io.h"
#include "core/log.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

struct Interrupted {};  // thrown from the step callback to abort a run

std::string first_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string pipeline_key(const GenerateRequest& r) {
  return r.model + '\n' + r.clip_l + '\n' + r.clip_g + '\n' + r.t5 + '\n' + r.tokenizer_dir + '\n' + r.device + '\n' + r.dtype + (r.fp8 ? "\nfp8" : "") +
         (r.fp8_attention ? "\nfp8_attention" : "");
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

std::string short_prompt(const std::string& p) {
  std::string s = p.size() > 60 ? p.substr(0, 57) + "..." : p;
  for (auto& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

ReportFile::ReportFile(const std::string& path) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), "w");
  if (!f_) throw FileError(path + ": cannot write the report (" + std::strerror(errno) + ")");
}

ReportFile::~ReportFile() {
  if (f_) std::fclose(f_);
}

void ReportFile::line(const nlohmann::ordered_json& j) {
  if (!f_) return;
  const std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(s.data(), 1, s.size(), f_);
  std::fflush(f_);
}

std::vector<int> shard_runs(const JobFile& jobs, int shard, int shards) {
  std::vector<int> out;
  for (int i = 0; i < int(jobs.runs.size()); ++i)
    if (jobs.runs[size_t(i)].index % shards == shard) out.push_back(i);
  return out;
}

void RunTally::add(const nlohmann::ordered_json& line) {
  const std::string status = line.value("status", "");
  if (status == "ok") ++ok;
  else if (status == "failed") ++failed;
  else if (status == "invalid") ++invalid;
  else if (status == "skipped") ++skipped;
  else if (status == "interrupted") interrupted = true;
}

nlohmann::ordered_json RunTally::summary(double seconds) const {
  return {{"summary", true},         {"runs", runs},         {"ok", ok},
          {"failed", failed},        {"invalid", invalid},   {"skipped", skipped},
          {"interrupted", interrupted}, {"not_run", not_run()}, {"seconds", std::round(seconds * 1000) / 1000},
          {"exit_code", exit_code()}};
}

std::string RunTally::text(double seconds) const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "mmdit run: %d ok, %d failed, %d invalid, %d skipped, %d not run of %d runs in %.1f s%s",
                ok, failed, invalid, skipped, not_run(), runs, seconds,
                interrupted ? " (interrupted)" : "");
  return buf;
}

int run_jobs(const JobFile& jobs, const RunOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  auto stopped = [&] { return opt.stop && *opt.stop != 0; };
  ReportFile report(opt.report);
  const std::vector<int> mine = shard_runs(jobs, opt.shard, opt.shards);
  const int n = int(mine.size());
  const bool worker = bool(opt.next);

  std::vector<std::string> all_outputs;
  for (int i : mine) all_outputs.insert(all_outputs.end(), jobs.runs[size_t(i)].outputs.begin(), jobs.runs[size_t(i)].outputs.end());
  remove_stale_temps(all_outputs);

  // A run's request as this process makes it (a worker's device).
  auto request = [&](int pos) {
    GenerateRequest r = jobs.runs[size_t(mine[size_t(pos)])].req;
    // One device named by "gpus": 1 or "devices": "cuda:1" is this run's device.
    if (r.gpus == 1 && r.devices.empty()) r.device = "cuda:0";
    if (!r.devices.empty() && r.devices.find(',') == std::string::npos) r.device = r.devices;
    if (!opt.device.empty()) r.device = opt.device;
    return r;
  };
  // Which runs go ahead, and the last run that needs each pipeline (it is freed after that).
  std::vector<bool> skip(size_t(n), false);
  if (opt.skip_existing)
    for (int p = 0; p < n; ++p) skip[size_t(p)] = all_exist(jobs.runs[size_t(mine[size_t(p)])].outputs);
  std::map<std::string, int> last_use;
  for (int p = 0; p < n; ++p)
    if (!skip[size_t(p)]) last_use[pipeline_key(request(p))] = p;

  std::map<std::string, std::unique_ptr<Pipeline>> pipelines;
  std::map<std::string, std::string> load_errors;  // a model that failed to load is not tried again
  RunTally tally;
  tally.runs = n;
  for (int k = 0;; ++k) {
    int pos = k;
    if (worker) pos = opt.next();
    if (pos < 0 || pos >= n) break;
    if (stopped()) {
      tally.interrupted = true;
      break;
    }
    const JobRun& run = jobs.runs[size_t(mine[size_t(pos)])];
    nlohmann::ordered_json line = {{"index", run.index}, {"job", run.job}};
    const std::string counter = "[" + std::to_string(pos + 1) + "/" + std::to_string(n) + "] ";
    auto report_line = [&] {
      report.line(line);
      if (opt.on_line) opt.on_line(line);
      tally.add(line);
    };
    if (skip[size_t(pos)]) {
      log_info(counter + "skipped (outputs exist): " + short_prompt(run.req.prompt));
      line.update({{"status", "skipped"}, {"error", nullptr}, {"seconds", 0.0}, {"seed", run.req.seed},
                   {"random_seed", run.random_seed}, {"outputs", run.outputs}, {"prompt", run.req.prompt},
                   {"model", run.req.model}});
      report_line();
      continue;
    }
    log_info(counter + short_prompt(run.req.prompt) + " (seed " + std::to_string(run.req.seed) + ")");
    const auto t0 = std::chrono::steady_clock::now();
    GenerateRequest r = request(pos);
    const std::string key = pipeline_key(r);
    std::string status = "ok", error;
    std::vector<std::string> written;
    Pipeline* pipe = nullptr;
    bool interrupted = false;
    const bool several = r.gpus > 1 || r.devices.find(',') != std::string::npos;
    try {
      if (several) {
        // One generation over several devices: its own world of workers, which loads the model for this run.
        int code = 2;
        try {
          if (worker || !opt.spread)
            throw UsageError("gpus/devices: a run over several devices cannot run inside `run --gpus`; run the file without --gpus");
          code = opt.spread(run);
        } catch (const InputError& e) {  // more GPUs than the machine has, a malformed device list
          status = "invalid";
          error = first_line(e.what());
        }
        if (code == 130 || code == 128 + SIGTERM) throw Interrupted{};
        if (code == 2) status = "invalid";
        if (code == 0) {
          written = run.outputs;
        } else if (error.empty()) {
          if (status == "ok") status = "failed";
          error = "the generation over several devices ended with exit status " + std::to_string(code);
        }
      } else if (auto e = load_errors.find(key); e != load_errors.end()) {
        status = "failed";
        error = e->second;
      } else {
        // A worker takes runs in any order: it keeps one model loaded at a time.
        if (worker && !pipelines.count(key)) pipelines.clear();
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
          for (const auto& path : write_images(r, images, pipe->name())) {
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
    if (status != "ok" && status != "interrupted")
      std::fprintf(stderr, "mmdit: error: jobs[%d] (run %d): %s\n", run.job, run.index, error.c_str());
    line.update({{"status", status}, {"error", error.empty() ? nlohmann::json(nullptr) : nlohmann::json(error)},
                 {"seconds", std::round(secs * 1000) / 1000}, {"seed", run.req.seed},
                 {"random_seed", run.random_seed}, {"outputs", written}, {"prompt", run.req.prompt},
                 {"model", run.req.model}});
    if (!opt.device.empty()) line["device"] = opt.device;
    if (opt.worker >= 0) line["worker"] = opt.worker;
    report_line();
    if (interrupted) break;
    // Free pipelines that no later run needs.
    if (!worker)
      if (auto lu = last_use.find(key); lu != last_use.end() && lu->second <= pos) pipelines.erase(key);
  }
  pipelines.clear();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (!worker) {
    std::fprintf(stderr, "%s\n", tally.text(total).c_str());
    report.line(tally.summary(total));
  }
  return tally.exit_code();
}

}  // namespace mmdit
