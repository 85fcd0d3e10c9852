// The JSON Schema entry of each request option (docs/jobs.schema.json comes from `mmdit run --schema`).
#include <climits>

#include "core/options.h"

namespace mmdit {
using Type = RequestOption::Type;

nlohmann::ordered_json option_schema(const RequestOption& o) {
  nlohmann::ordered_json p;
  p["description"] = o.job_help.empty() ? o.help : o.job_help;
  switch (o.type) {
    case Type::String:
    case Type::Path:
    case Type::Folder:
      p["type"] = "string";
      if (o.type != Type::String || o.key == "output") p["minLength"] = 1;
      if (!o.choices.empty()) p["enum"] = o.choices;
      if (o.key == "device") p["pattern"] = "^(cpu|cuda(:[0-9]{1,3})?)$";
      if (o.key == "output") p["pattern"] = "^([^{}]|\\{(index|seed|prompt_slug|date)\\})*\\.([pP][nN][gG]|[mM][pP]4)$";
      if (o.type == Type::Folder) p["pattern"] = "^([^{}]|\\{(index|seed|prompt_slug|date)\\})*$";
      break;
    case Type::Integer:
    case Type::Number:
      p["type"] = o.type == Type::Integer ? "integer" : "number";
      if (o.min) p[o.min_exclusive ? "exclusiveMinimum" : "minimum"] = *o.min;
      if (o.max) p["maximum"] = *o.max;
      else if (o.type == Type::Integer) p["maximum"] = INT_MAX;
      break;
    case Type::Flag:
      p["type"] = "boolean";
      break;
    case Type::Seed:
      p["type"] = "integer";
      p["minimum"] = 0;
      p["maximum"] = std::numeric_limits<uint64_t>::max();
      break;
    case Type::IntList:
      p["oneOf"] = {{{"type", "array"}, {"items", {{"type", "integer"}, {"minimum", 0}}}},
                    {{"type", "string"}, {"pattern", "^[0-9]+(,[0-9]+)*$"}}};
      break;
    case Type::HeadList:
      p["oneOf"] = {{{"type", "array"},
                     {"items",
                      {{"type", "array"}, {"items", {{"type", "integer"}, {"minimum", 0}}}, {"minItems", 2}, {"maxItems", 2}}}},
                    {{"type", "string"}, {"pattern", "^[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*$"}}};
      break;
    case Type::Prompts: {
      nlohmann::ordered_json held = {{"type", "object"},
                                     {"properties", {{"prompt", {{"type", "string"}, {"pattern", "\\S"}}},
                                                     {"tiles", {{"type", "integer"}, {"minimum", 1}, {"maximum", 64}}}}},
                                     {"required", {"prompt"}},
                                     {"additionalProperties", false}};
      p["type"] = "array";
      p["minItems"] = 1;
      p["items"] = {{"oneOf", {{{"type", "string"}, {"pattern", "\\S"}}, held}}};
      break;
    }
    case Type::Regions: {
      nlohmann::ordered_json box = {{"type", "object"},
                                    {"properties",
                                     {{"box", {{"type", "array"}, {"items", {{"type", "integer"}, {"minimum", 0}}},
                                               {"minItems", 4}, {"maxItems", 4}}},
                                      {"prompt", {{"type", "string"}}}}},
                                    {"required", {"box", "prompt"}},
                                    {"additionalProperties", false}};
      nlohmann::ordered_json mask = {{"type", "object"},
                                     {"properties", {{"mask", {{"type", "string"}, {"minLength", 1}}},
                                                     {"prompt", {{"type", "string"}}}}},
                                     {"required", {"mask", "prompt"}},
                                     {"additionalProperties", false}};
      p["type"] = "array";
      p["minItems"] = 1;
      p["items"] = {{"oneOf", {box, mask}}};
      break;
    }
    case Type::LayerScale:
      p["type"] = "string";
      p["pattern"] = "^[0-9]+(,[0-9]+)*:[0-9.eE+-]+$";
      break;
  }
  return p;
}

}  // namespace mmdit
