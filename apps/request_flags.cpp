#include "apps/request_flags.h"

#include <cstdlib>
#include <limits>
#include <random>

#include <fstream>

#include "core/errors.h"
#include "core/model_folder.h"

namespace mmdit {

void add_request_flags(CLI::App* sub, const std::shared_ptr<RequestFlags>& f,
                       const std::function<bool(const RequestOption&)>& keep) {
  GenerateRequest& r = f->req;
  for (const RequestOption& o : request_options()) {
    if (keep && !keep(o)) continue;
    if (o.type == RequestOption::Type::Regions) {  // the job key "regions" is two repeatable flags
      sub->add_option("--region", f->region_boxes, "Regional prompt in a box: X0,Y0,X1,Y1:PROMPT (output pixels, right "
                      "and bottom exclusive); repeatable; --prompt is the base prompt")->group(o.group);
      sub->add_option("--region-mask", f->region_masks, "Regional prompt in a mask image: FILE.png:PROMPT (white = the "
                      "region); repeatable")->group(o.group);
      continue;
    }
    if (o.type == RequestOption::Type::Prompts) {  // the job key "prompts" is --prompt repeated, or a file
      sub->add_option("--prompts-file", f->prompts_file, "Multi-prompt video: the prompts in order, one per line")
          ->group(o.group)
          ->check(CLI::ExistingFile);
      continue;
    }
    if (o.key == "prompt") {  // repeatable: several prompts make a multi-prompt video
      sub->add_option((o.short_flag.empty() ? "" : "-" + o.short_flag + ",") + o.long_flag(), f->prompt_list,
                      o.help + "; given several times on a video model: one segment per prompt, in order")
          ->group(o.group);
      continue;
    }
    const std::string names = (o.short_flag.empty() ? "" : "-" + o.short_flag + ",") + o.long_flag();
    CLI::Option* opt = nullptr;
    switch (o.type) {
      case RequestOption::Type::String:
      case RequestOption::Type::Path:
      case RequestOption::Type::Folder:
      case RequestOption::Type::HeadList:
      case RequestOption::Type::LayerScale: opt = sub->add_option(names, r.*o.str, o.help); break;
      case RequestOption::Type::Integer: opt = sub->add_option(names, r.*o.integer, o.help); break;
      case RequestOption::Type::Number: opt = sub->add_option(names, r.*o.number, o.help); break;
      case RequestOption::Type::Seed:
        opt = sub->add_option(names, r.seed, o.help)->each([f](const std::string&) { f->seed_given = true; });
        break;
      case RequestOption::Type::IntList: opt = sub->add_option(names, f->lists[o.key], o.help); break;
      case RequestOption::Type::Flag: opt = sub->add_flag(names, r.*o.flag, o.help); break;
      case RequestOption::Type::Regions:
      case RequestOption::Type::Prompts: break;  // handled above
    }
    opt->group(o.group);
    if (o.required) opt->required();
    if (o.enables) f->given.emplace_back(&o, opt);
    if (o.type == RequestOption::Type::Integer || o.type == RequestOption::Type::Number) {
      if (o.min && o.max && o.type == RequestOption::Type::Integer) opt->check(CLI::Range(int(*o.min), int(*o.max)));
      else if (o.min && o.max) opt->check(CLI::Range(*o.min, *o.max));
      else if (o.min && *o.min == 0) opt->check(o.min_exclusive ? CLI::PositiveNumber : CLI::NonNegativeNumber);
      else if (o.min) opt->check(CLI::Range(*o.min, std::numeric_limits<double>::max()));
    }
    if (o.key == "device") opt->capture_default_str();
  }
}

void finish_request_flags(RequestFlags& f) {
  GenerateRequest& r = f.req;
  for (const auto& [key, text] : f.lists) {
    if (text.empty()) continue;
    const RequestOption* o = find_option(key);
    r.*o->list = parse_layer_list(text, o->long_flag());
  }
  for (const auto& [o, opt] : f.given)
    if (opt->count() > 0) r.*o->enables = true;
  for (const auto& b : f.region_boxes) r.regions.push_back(parse_region_box(b));
  for (const auto& m : f.region_masks) r.regions.push_back(parse_region_mask(m));
  std::vector<std::string> prompts = f.prompt_list;
  if (!f.prompts_file.empty()) {
    if (!prompts.empty()) throw UsageError("--prompts-file: give the prompts either with --prompt or in the file");
    std::ifstream in(f.prompts_file);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back(line);
    }
    if (prompts.empty()) throw UsageError("--prompts-file " + f.prompts_file + ": no prompts in the file");
  }
  if (prompts.size() > 1)
    for (const auto& p : prompts)
      if (p.find_first_not_of(" \t\r\n") == std::string::npos) throw UsageError("--prompt: an empty prompt in the list");
  if (!prompts.empty()) r.prompt = prompts.front();
  if (prompts.size() > 1 || !f.prompts_file.empty()) {
    r.prompts.clear();
    for (const auto& p : prompts) r.prompts.push_back({p, 1});
  }
  parse_head_list(r.pag_heads, "--pag-heads");
  if (!r.text_scale.empty()) parse_layer_scale(r.text_scale, "--text-scale");
}

GenerateRequest& complete_request(RequestFlags& f) {
  finish_request_flags(f);
  if (f.req.prompt.empty() && f.prompt_list.empty() && f.prompts_file.empty())
    throw UsageError("--prompt is required");
  if (f.req.model.empty()) f.req.model = builtin_model();
  if (!f.seed_given) {
    // A worker of a generation over several devices takes the seed its launcher drew (apps/launch.h).
    const char* drawn = std::getenv("MMDIT_SEED");
    f.req.seed = drawn && *drawn ? std::strtoull(drawn, nullptr, 10) : std::random_device{}() & 0xffffffffu;
  }
  return f.req;
}

}  // namespace mmdit
