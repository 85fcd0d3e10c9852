#include "core/log.h"

#include <cstdio>
#include <unistd.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace mmdit {
namespace {
Verbosity g_verbosity = Verbosity::Normal;
}

void init_logging(Verbosity v) {
  g_verbosity = v;
  if (!spdlog::get("mmdit")) {  // a second call (a worker turning quiet) only sets the level
    auto logger = spdlog::stderr_color_mt("mmdit");
    logger->set_pattern("%^%l%$: %v");
    spdlog::set_default_logger(logger);
  }
  spdlog::set_level(v == Verbosity::Quiet ? spdlog::level::warn
                    : v == Verbosity::Verbose ? spdlog::level::debug
                                              : spdlog::level::info);
}

Verbosity verbosity() { return g_verbosity; }

void log_debug(const std::string& message) { spdlog::debug("{}", message); }
void log_info(const std::string& message) { spdlog::info("{}", message); }
void log_warn(const std::string& message) { spdlog::warn("{}", message); }

Progress::Progress(std::string label, int total)
    : label_(std::move(label)), total_(total), tty_(::isatty(STDERR_FILENO) != 0) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_ && done_ > 0 && tty_ && g_verbosity != Verbosity::Quiet) std::fputc('\n', stderr);
}

void Progress::step(int n) {
  done_ += n;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  draw(true);
  finished_ = true;
}

void Progress::draw(bool final_line) {
  if (g_verbosity == Verbosity::Quiet) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (!tty_ && (printed_ == done_ || (!final_line && done_ < total_ && now - last_print_ < std::chrono::seconds(1))))
    return;
  printed_ = done_;
  last_print_ = now;
  const double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  const double eta = rate > 0 ? (total_ - done_) / rate : 0.0;
  char stats[96];
  // Slow loops (diffusion steps) read better as s/it than as a fraction of it/s.
  if (rate >= 1.0 || rate == 0.0)
    std::snprintf(stats, sizeof stats, "%d/%d  %.2f it/s  elapsed %.1fs  ETA %.1fs", done_, total_, rate, elapsed, eta);
  else
    std::snprintf(stats, sizeof stats, "%d/%d  %.2f s/it  elapsed %.1fs  ETA %.1fs", done_, total_, 1.0 / rate, elapsed, eta);
  if (tty_) {
    const int width = 30;
    const int filled = total_ > 0 ? int(double(done_) / total_ * width) : width;
    std::string bar(size_t(filled), '#');
    bar.resize(width, ' ');
    std::fprintf(stderr, "\r%s [%s] %s", label_.c_str(), bar.c_str(), stats);
    if (final_line) std::fputc('\n', stderr);
  } else {
    std::fprintf(stderr, "%s %s\n", label_.c_str(), stats);
  }
  std::fflush(stderr);
}

}  // namespace mmdit
