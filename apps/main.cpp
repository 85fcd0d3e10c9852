// mmdit: MM-DiT image and video generation on LibTorch. main() owns the error policy: every user
// error is one line on stderr and exit 2; a runtime failure is one line and exit 1; never an abort.
#include <cstdio>
#include <filesystem>
#include <new>
#include <string>

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include "apps/commands.h"
#include "apps/launch.h"
#include "core/errors.h"
#include "core/log.h"

namespace {

std::string one_line(std::string s) {
  for (auto& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

int report(const std::string& message, int code) {
  std::fprintf(stderr, "mmdit: error: %s\n", one_line(message).c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  mmdit::set_process_args(argc, argv);
  CLI::App app{"mmdit: MM-DiT diffusion (SD3/3.5, FLUX.1, CogVideoX) with attention controls"};
  app.name("mmdit");
  app.require_subcommand(1);
  app.fallthrough();  // global flags (-v, -q) may follow the subcommand too
  app.set_version_flag("--version", "mmdit 0.1.0");
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "More log output");
  app.add_flag("-q,--quiet", quiet, "Only warnings and errors");
  const mmdit::Command commands[] = {mmdit::add_generate_command(app), mmdit::add_edit_command(app),
                                     mmdit::add_inspect_command(app), mmdit::add_bench_command(app),
                                     mmdit::add_run_command(app), mmdit::add_report_command(app)};

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return report(std::string(e.what()) + " (see mmdit --help)", 2);
  }
  mmdit::init_logging(quiet ? mmdit::Verbosity::Quiet : verbose ? mmdit::Verbosity::Verbose : mmdit::Verbosity::Normal);

  try {
    for (const auto& c : commands)
      if (c.app->parsed()) c.run();
    return 0;
  } catch (const mmdit::ExitStatus& e) {
    return e.code;
  } catch (const mmdit::InputError& e) {
    return report(e.what(), 2);
  } catch (const std::filesystem::filesystem_error& e) {
    return report(e.what(), 2);
  } catch (const mmdit::RuntimeFailure& e) {
    return report(e.what(), 1);
  } catch (const c10::OutOfMemoryError& e) {
    return report(std::string("out of device memory: ") + e.what_without_backtrace(), 1);
  } catch (const c10::Error& e) {
    return report(e.what_without_backtrace(), 1);
  } catch (const std::bad_alloc&) {
    return report("out of memory", 1);
  } catch (const std::exception& e) {
    return report(e.what(), 1);
  }
}
