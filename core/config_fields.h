// Typed, optional fields of a JSON config (a diffusers config.json or scheduler_config.json), read the
// same way by every model: a field that is absent or null keeps the caller's default; a field of the wrong
// type or out of range is a FormatError that names the config and the key ("vae config: 'x' is not a number").
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace mmdit {

class ConfigFields {
 public:
  // `what` starts every message, e.g. "transformer config". Throws FormatError if `j` is not an object.
  ConfigFields(const nlohmann::json& j, std::string what) : j_(j), what_(std::move(what)) {
    if (!j_.is_object()) throw FormatError(what_ + ": not a JSON object");
  }

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  // An integer >= min (int or int64_t fields).
  template <class Int, class = std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool>>>
  void get(const char* key, Int& v, int64_t min = 1) const {
    if (!has(key)) return;
    if (!j_[key].is_number_integer()) bad(key, "is not an integer");
    const int64_t x = j_[key].get<int64_t>();
    if (x < min) bad(key, min == 1 ? "must be positive" : min == 0 ? "must not be negative" : "must be at least " + std::to_string(min));
    v = Int(x);
  }
  void get(const char* key, double& v) const {
    if (!has(key)) return;
    if (!j_[key].is_number()) bad(key, "is not a number");
    v = j_[key].get<double>();
  }
  void get(const char* key, bool& v) const {
    if (!has(key)) return;
    if (!j_[key].is_boolean()) bad(key, "is not a boolean");
    v = j_[key].get<bool>();
  }
  // A string; with `allowed`, one of those values (anything else is "not supported").
  void get(const char* key, std::string& v, std::initializer_list<const char*> allowed = {}) const {
    if (!has(key)) return;
    if (!j_[key].is_string()) bad(key, "is not a string");
    const std::string s = j_[key].get<std::string>();
    bool ok = allowed.size() == 0;
    for (const char* a : allowed) ok = ok || s == a;
    if (!ok) throw FormatError(what_ + ": " + key + " '" + s + "' is not supported");
    v = s;
  }
  // A list of integers, each >= min.
  void get(const char* key, std::vector<int64_t>& v, int64_t min = 1) const {
    if (!has(key)) return;
    if (!j_[key].is_array()) bad(key, "is not a list");
    std::vector<int64_t> out;
    for (const auto& x : j_[key]) {
      if (!x.is_number_integer() || x.get<int64_t>() < min)
        bad(key, "holds " + x.dump() + ", not an integer >= " + std::to_string(min));
      out.push_back(x.get<int64_t>());
    }
    v = std::move(out);
  }

  const nlohmann::json& json() const { return j_; }
  const std::string& what() const { return what_; }

 private:
  [[noreturn]] void bad(const char* key, const std::string& why) const {
    throw FormatError(what_ + ": '" + key + "' " + why);
  }
  const nlohmann::json& j_;
  std::string what_;
};

}  // namespace mmdit
