// The request options of core/options.h as CLI11 flags, for `generate` (all of them) and `bench` (the guidance
// and control flags), grouped by topic in --help.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/options.h"

namespace mmdit {

struct RequestFlags {
  GenerateRequest req;
  std::map<std::string, std::string> lists;                          // IntList flags as given
  std::vector<std::string> region_boxes, region_masks;               // --region, --region-mask as given
  std::vector<std::string> prompt_list;                              // --prompt, once or more (multi-prompt video)
  std::string prompts_file;                                          // --prompts-file
  std::vector<std::pair<const RequestOption*, CLI::Option*>> given;  // options that turn a feature on
  bool seed_given = false;
};

// Adds the options `keep` accepts (all by default) to `sub`, bound to `flags`.
void add_request_flags(CLI::App* sub, const std::shared_ptr<RequestFlags>& flags,
                       const std::function<bool(const RequestOption&)>& keep = {});
// After parsing: the lists parsed, the options that enable a feature applied, the text forms checked (a
// malformed value fails here with one line, before any model is loaded).
void finish_request_flags(RequestFlags& flags);
// finish_request_flags, then what a command line leaves to defaults: the built-in model without --model, a random
// seed (printed and embedded, so the image can be reproduced) without --seed.
GenerateRequest& complete_request(RequestFlags& flags);

}  // namespace mmdit
