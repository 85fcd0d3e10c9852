// One table of request options (request_options()) drives the `generate` flags (and their --help groups), the
// job-file keys, their validation, the JSON Schema and the PNG/MP4 metadata: every flag is a job key of the same
// name, written into the output. Torch-free.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/pipeline.h"

namespace mmdit {

// One option of a generation request: the `generate` flag --KEY-WITH-DASHES and the job key KEY.
struct RequestOption {
  enum class Type {
    String,      // any string
    Path,        // a file or folder that must exist; in a job file relative to the file's folder
    Folder,      // a folder to write (created); in a job file relative to the file's folder, with placeholders
    Integer,     // int, range [min, max]
    Number,      // double, range [min, max]
    Seed,        // uint64
    IntList,     // comma-separated on the CLI; an array of integers or "7,8,9" in a job file
    HeadList,    // "L:H,L:H" (layer:head pairs); in a job file also [[L, H], ...]
    LayerScale,  // "L,L:lambda" (layers and one factor)
    Regions,     // job key "regions": [{"box": [x0, y0, x1, y1], "prompt": ...}, {"mask": FILE, "prompt": ...}];
                 // CLI --region X0,Y0,X1,Y1:PROMPT and --region-mask FILE:PROMPT, repeatable
    Prompts,     // job key "prompts": ["...", {"prompt": "...", "tiles": N}]; CLI: --prompt repeated, --prompts-file
    Flag,        // a CLI flag without value; true/false in a job file
  };
  std::string key;         // job key, e.g. "negative_prompt"
  std::string short_flag;  // e.g. "n", or empty
  std::string help;        // CLI help (and schema description unless job_help is set)
  std::string group;       // --help section: Model, Image, Guidance, Controls, Video, Encoders
  Type type = Type::String;
  bool required = false;
  std::optional<double> min, max;
  bool min_exclusive = false;        // min < value rather than min <= value
  std::vector<std::string> choices;  // allowed strings (empty = any)
  std::string job_help;              // description in the schema where it differs from the CLI's
  // Where the value lives in a GenerateRequest (by type: str for String/Path/Folder/HeadList/LayerScale).
  std::string GenerateRequest::*str = nullptr;
  int GenerateRequest::*integer = nullptr;
  double GenerateRequest::*number = nullptr;
  bool GenerateRequest::*flag = nullptr;
  std::vector<int> GenerateRequest::*list = nullptr;
  bool GenerateRequest::*enables = nullptr;  // set when the option is given (APG's keys turn APG on)

  std::string long_flag() const;  // "--negative-prompt"
};

// Every option of `generate`, in its --help order.
const std::vector<RequestOption>& request_options();
const RequestOption* find_option(const std::string& key);

// Job files: appends the problems of one value to `problems` ("jobs[3].steps: expected integer, got \"ten\"",
// `at` = "jobs[3].steps"), and applies a checked value to a request.
void check_option(const RequestOption& o, const nlohmann::json& v, const std::string& at,
                  const std::filesystem::path& base_dir, std::vector<std::string>& problems);
void apply_option(GenerateRequest& r, const RequestOption& o, const nlohmann::json& v,
                  const std::filesystem::path& base_dir);
nlohmann::ordered_json option_schema(const RequestOption& o);

// The text forms of IntList / HeadList / LayerScale (core/option_text.cpp): "" when well formed, else what is
// expected ("expected layer:head pairs like \"12:3,12:7\"").
std::string option_text_problem(RequestOption::Type t, const std::string& s);

// Text values of the list types; throw UsageError naming `flag` ("--pag-heads: expected layer:head pairs like
// 12:3,12:7, got '12'").
std::vector<int> parse_layer_list(const std::string& s, const std::string& flag);
std::vector<std::pair<int, int>> parse_head_list(const std::string& s, const std::string& flag);
std::pair<std::vector<int>, double> parse_layer_scale(const std::string& s, const std::string& flag);
// "--region X0,Y0,X1,Y1:PROMPT" and "--region-mask FILE.png:PROMPT" values.
GenerateRequest::Region parse_region_box(const std::string& s);
GenerateRequest::Region parse_region_mask(const std::string& s);

// The request as JSON, option by option: the core keys always, every other option that differs from its
// default (what the PNG/MP4 metadata carry, so that a run can be reproduced as a job).
nlohmann::ordered_json request_json(const GenerateRequest& r);

// cpu, cuda or cuda:N.
bool valid_device(const std::string& s);
// Helpers of job-file checking: JSON Schema's "integer" (a number without fraction), a value as messages show it
// (shortened), a number as messages show it.
bool json_integer(const nlohmann::json& v, long double& out);
std::string shown(const nlohmann::json& v);
std::string fmt_num(double v);

// Output templates: "" when fine, else the problem ("unknown placeholder {idx} ...").
std::string template_problem(const std::string& t, bool output);
std::string expand_template(const std::string& t, int index, uint64_t seed, const std::string& prompt,
                            const std::string& date);
std::string prompt_slug(const std::string& prompt);  // lowercase [a-z0-9-], at most 40 chars

}  // namespace mmdit
