// Subcommands of the mmdit CLI. Each add_* registers its options; main() parses, then calls run() of
// the subcommand that was given, outside CLI11, so that its errors reach main's error policy.
#pragma once
#include <functional>

#include <CLI/CLI.hpp>

namespace mmdit {

struct Command {
  CLI::App* app;
  std::function<void()> run;
};

Command add_inspect_command(CLI::App& app);
Command add_generate_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_edit_command(CLI::App& app);
Command add_report_command(CLI::App& app);

}  // namespace mmdit
