// The text forms of request options (core/options.h): layer lists, layer:head pairs, layers:factor, region boxes
// and masks, and output templates.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"
#include "core/options.h"

namespace mmdit {
namespace fs = std::filesystem;
using Type = RequestOption::Type;

namespace {

const char* kPlaceholders[] = {"index", "seed", "prompt_slug", "date"};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t end = s.find(sep, pos);
    out.push_back(s.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    if (end == std::string::npos) return out;
    pos = end + 1;
  }
}

// A non-negative integer of at most 6 digits ("7", not "+7", "07x" or "").
bool small_uint(const std::string& s) {
  return !s.empty() && s.size() <= 6 && s.find_first_not_of("0123456789") == std::string::npos;
}

bool parse_number(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(out);
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

std::string option_text_problem(RequestOption::Type t, const std::string& s) {
  if (t == Type::IntList) {
    for (const auto& item : split(s, ','))
      if (!small_uint(item)) return "expected comma-separated layer numbers like \"7,8,9\"";
    return "";
  }
  if (t == Type::HeadList) {
    for (const auto& item : split(s, ',')) {
      auto lh = split(item, ':');
      if (lh.size() != 2 || !small_uint(lh[0]) || !small_uint(lh[1]))
        return "expected layer:head pairs like \"12:3,12:7\"";
    }
    return "";
  }
  // LayerScale
  const size_t colon = s.rfind(':');
  double f = 0;
  if (colon == std::string::npos || option_text_problem(Type::IntList, s.substr(0, colon)) != "" ||
      !parse_number(s.substr(colon + 1), f))
    return "expected layers and a factor like \"0,1,2:1.5\"";
  if (f < 0) return "the factor must be at least 0";
  return "";
}

std::vector<int> parse_layer_list(const std::string& s, const std::string& flag) {
  if (option_text_problem(Type::IntList, s) != "")
    throw UsageError(flag + ": expected comma-separated layer numbers like 7,8,9, got " + quoted(s));
  std::vector<int> out;
  for (const auto& item : split(s, ',')) out.push_back(std::stoi(item));
  return out;
}

std::vector<std::pair<int, int>> parse_head_list(const std::string& s, const std::string& flag) {
  if (s.empty()) return {};
  if (option_text_problem(Type::HeadList, s) != "")
    throw UsageError(flag + ": expected layer:head pairs like 12:3,12:7, got " + quoted(s));
  std::vector<std::pair<int, int>> out;
  for (const auto& item : split(s, ',')) {
    auto lh = split(item, ':');
    out.emplace_back(std::stoi(lh[0]), std::stoi(lh[1]));
  }
  return out;
}

std::pair<std::vector<int>, double> parse_layer_scale(const std::string& s, const std::string& flag) {
  const std::string p = option_text_problem(Type::LayerScale, s);
  if (p != "") throw UsageError(flag + ": " + p + ", got " + quoted(s));
  const size_t colon = s.rfind(':');
  double f = 0;
  parse_number(s.substr(colon + 1), f);
  return {parse_layer_list(s.substr(0, colon), flag), f};
}

GenerateRequest::Region parse_region_box(const std::string& s) {
  const size_t colon = s.find(':');
  const auto xy = colon == std::string::npos ? std::vector<std::string>{} : split(s.substr(0, colon), ',');
  GenerateRequest::Region r;
  int* c[4] = {&r.x0, &r.y0, &r.x1, &r.y1};
  bool ok = xy.size() == 4;
  for (size_t i = 0; ok && i < 4; ++i) {
    ok = small_uint(xy[i]);
    if (ok) *c[i] = std::stoi(xy[i]);
  }
  if (!ok || colon + 1 >= s.size())
    throw UsageError("--region: expected X0,Y0,X1,Y1:PROMPT (a box in output pixels), got " + quoted(s));
  if (r.x1 <= r.x0 || r.y1 <= r.y0)
    throw UsageError("--region " + s.substr(0, colon) + ": an empty box (right and bottom are exclusive)");
  r.prompt = s.substr(colon + 1);
  return r;
}

GenerateRequest::Region parse_region_mask(const std::string& s) {
  // FILE:PROMPT, the file name ending in an image extension (so a path may hold ':').
  std::string lower = s;
  for (auto& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  size_t colon = std::string::npos;
  for (const char* ext : {".png:", ".jpg:", ".jpeg:"})
    if (size_t at = lower.find(ext); at != std::string::npos) colon = std::min(colon, at + std::strlen(ext) - 1);
  if (colon == std::string::npos) colon = s.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size())
    throw UsageError("--region-mask: expected FILE.png:PROMPT, got " + quoted(s));
  GenerateRequest::Region r;
  r.mask = s.substr(0, colon);
  r.prompt = s.substr(colon + 1);
  return r;
}

std::string template_problem(const std::string& t, bool output) {
  if (t.empty()) return "must not be empty";
  size_t pos = 0;
  while ((pos = t.find('{', pos)) != std::string::npos) {
    const size_t end = t.find('}', pos);
    if (end == std::string::npos) return "unclosed '{' in " + nlohmann::json(t).dump();
    const std::string name = t.substr(pos + 1, end - pos - 1);
    if (std::find(std::begin(kPlaceholders), std::end(kPlaceholders), name) == std::end(kPlaceholders))
      return "unknown placeholder {" + name + "} (known: {index}, {seed}, {prompt_slug}, {date})";
    pos = end + 1;
  }
  if (!output) return "";
  std::string ext = fs::path(t).extension().string();
  for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".png" && ext != ".mp4")
    return "outputs are .png images, .mp4 videos or frame patterns like f_%03d.png, got " + nlohmann::json(t).dump();
  return "";
}

std::string expand_template(const std::string& t, int index, uint64_t seed, const std::string& prompt,
                            const std::string& date) {
  std::string out;
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t open = t.find('{', pos);
    if (open == std::string::npos) {
      out += t.substr(pos);
      break;
    }
    out += t.substr(pos, open - pos);
    const size_t close = t.find('}', open);
    const std::string name = t.substr(open + 1, close - open - 1);
    if (name == "index") out += std::to_string(index);
    else if (name == "seed") out += std::to_string(seed);
    else if (name == "prompt_slug") out += prompt_slug(prompt);
    else if (name == "date") out += date;
    pos = close + 1;
  }
  return out;
}

std::string prompt_slug(const std::string& prompt) {
  std::string s;
  for (unsigned char c : prompt) {
    if (std::isalnum(c) && c < 128) {
      s += char(std::tolower(c));
    } else if (!s.empty() && s.back() != '-') {
      s += '-';
    }
    if (s.size() >= 40) break;
  }
  if (s.size() > 40) s.resize(40);
  while (!s.empty() && s.back() == '-') s.pop_back();
  return s.empty() ? "empty" : s;
}

}  // namespace mmdit
