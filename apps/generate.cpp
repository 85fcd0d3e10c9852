// `mmdit generate`: one prompt -> image(s). Parses and validates flags, then hands a GenerateRequest
// to the pipeline of the model's family.
#include <limits>
#include <random>

#include "apps/commands.h"
#include "core/errors.h"
#include "core/jobs.h"
#include "core/log.h"
#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {
namespace {

struct GenerateFlags {
  GenerateRequest req;
  std::string slg_layers;
  bool seed_given = false;
};

std::vector<int> parse_int_list(const std::string& s, const std::string& flag) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError(flag + ": expected comma-separated layer numbers like 7,8,9, got '" + s + "'");
    out.push_back(std::stoi(item));
    pos = end + 1;
  }
  return out;
}

void run_generate(GenerateFlags& f) {
  GenerateRequest& r = f.req;
  if (r.prompt.empty() && r.negative_prompt.empty()) log_warn("--prompt is empty: generating unconditionally");
  if (r.model.empty()) r.model = builtin_model();
  if (!f.slg_layers.empty()) r.slg_layers = parse_int_list(f.slg_layers, "--slg-layers");
  if (!f.seed_given) {
    r.seed = std::random_device{}() & 0xffffffffu;  // printed and embedded, so it can be reproduced
  }
  generate(r);
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  GenerateRequest& r = f->req;
  auto* sub = app.add_subcommand("generate", "Generate an image or a video from a prompt");
  // The flags come from the table that also defines `mmdit run`'s job keys (core/jobs.h).
  for (const RequestOption& o : request_options()) {
    const std::string names = (o.short_flag.empty() ? "" : "-" + o.short_flag + ",") + o.long_flag();
    CLI::Option* opt = nullptr;
    switch (o.type) {
      case RequestOption::Type::String:
      case RequestOption::Type::Path: opt = sub->add_option(names, r.*o.str, o.help); break;
      case RequestOption::Type::Integer: opt = sub->add_option(names, r.*o.integer, o.help); break;
      case RequestOption::Type::Number: opt = sub->add_option(names, r.*o.number, o.help); break;
      case RequestOption::Type::Seed:
        opt = sub->add_option(names, r.seed, o.help)->each([f](const std::string&) { f->seed_given = true; });
        break;
      case RequestOption::Type::IntList: opt = sub->add_option(names, f->slg_layers, o.help); break;
      case RequestOption::Type::Flag: opt = sub->add_flag(names, r.*o.flag, o.help); break;
    }
    if (o.required) opt->required();
    if (o.type == RequestOption::Type::Integer || o.type == RequestOption::Type::Number) {
      if (o.min && o.max && o.type == RequestOption::Type::Integer) opt->check(CLI::Range(int(*o.min), int(*o.max)));
      else if (o.min && o.max) opt->check(CLI::Range(*o.min, *o.max));
      else if (o.min && *o.min == 0) opt->check(o.min_exclusive ? CLI::PositiveNumber : CLI::NonNegativeNumber);
      else if (o.min) opt->check(CLI::Range(*o.min, std::numeric_limits<double>::max()));
    }
    if (o.key == "device") opt->capture_default_str();
  }
  return {sub, [f] { run_generate(*f); }};
}

}  // namespace mmdit
