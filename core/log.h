// Logging (spdlog, to stderr) and a progress bar for long loops (torch-free).
#pragma once
#include <chrono>
#include <string>

namespace mmdit {

enum class Verbosity { Quiet, Normal, Verbose };
void init_logging(Verbosity v);
Verbosity verbosity();

// Plain-string logging for code that must not include spdlog (torch TUs: torch's bundled fmt
// clashes with the fmt Debian's spdlog uses).
void log_debug(const std::string& message);
void log_info(const std::string& message);
void log_warn(const std::string& message);

// A one-line bar with step rate and ETA, redrawn in place on a terminal; on a pipe or file, plain
// lines (at most one per second, plus the last). Silent with --quiet.
class Progress {
 public:
  Progress(std::string label, int total);
  ~Progress();
  void step(int n = 1);
  void finish();

 private:
  void draw(bool final_line);
  std::string label_;
  int total_, done_ = 0, printed_ = -1;  // printed_: done_ at the last plain line
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_print_;
};

}  // namespace mmdit
