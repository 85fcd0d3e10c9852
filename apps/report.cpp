// `mmdit report merge A.jsonl B.jsonl ... -o ALL.jsonl`: one report from the reports of a job file's shards
// (`run --shard K/N` on several machines; docs/SCALING.md). Run lines in index order, one summary recounted from
// them. A run index in two reports, or a line that is not a report line, is an error (exit 2).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "core/atomic_file.h"
#include "core/errors.h"
#include "core/jobs.h"

namespace mmdit {
namespace {

struct MergeFlags {
  std::vector<std::string> inputs;
  std::string output;
};

void merge(const MergeFlags& f) {
  std::map<int, nlohmann::ordered_json> runs;
  std::map<int, std::string> from;
  double seconds = 0;
  int planned = 0;
  for (const auto& path : f.inputs) {
    std::ifstream in(path);
    if (!in) throw FileError(path + ": cannot read the report");
    std::string text;
    for (int n = 1; std::getline(in, text); ++n) {
      if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::ordered_json line;
      try {
        line = nlohmann::ordered_json::parse(text);
      } catch (const nlohmann::json::exception&) {
        throw FormatError(path + ":" + std::to_string(n) + ": not a JSON line of an mmdit report");
      }
      if (line.value("summary", false)) {  // each shard's own summary: its planned runs and its time
        planned += line.value("runs", 0);
        seconds = std::max(seconds, line.value("seconds", 0.0));
        continue;
      }
      if (!line.contains("index") || !line["index"].is_number_integer() || !line.contains("status"))
        throw FormatError(path + ":" + std::to_string(n) + ": not a run line of an mmdit report (no index or status)");
      const int index = line["index"];
      if (runs.count(index))
        throw FormatError(path + ":" + std::to_string(n) + ": run " + std::to_string(index) + " is also in " + from[index] +
                          " (the same shard twice?)");
      from[index] = path;
      runs[index] = line;
    }
  }
  RunTally tally;
  std::string body;
  for (const auto& [index, line] : runs) {
    tally.add(line);
    body += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  // Runs a shard planned but never reported (it was interrupted) count as not run.
  tally.runs = std::max<int>(planned, int(runs.size()));
  auto summary = tally.summary(seconds);
  summary["reports"] = f.inputs.size();
  body += summary.dump() + "\n";
  if (f.output.empty() || f.output == "-") {
    std::fwrite(body.data(), 1, body.size(), stdout);
  } else {
    atomic_write_bytes(f.output, body);
  }
  std::fprintf(stderr, "%s (%zu reports)\n", tally.text(seconds).c_str(), f.inputs.size());
}

}  // namespace

Command add_report_command(CLI::App& app) {
  auto f = std::make_shared<MergeFlags>();
  auto* sub = app.add_subcommand("report", "Work with `mmdit run` reports");
  sub->require_subcommand(1);
  auto* m = sub->add_subcommand("merge", "One report from the reports of a job file's shards (run --shard K/N)");
  m->add_option("reports", f->inputs, "The shards' JSON-lines reports")->required()->check(CLI::ExistingFile);
  m->add_option("-o,--output", f->output, "The merged report (default: stdout)");
  return {sub, [f] { merge(*f); }};
}

}  // namespace mmdit
