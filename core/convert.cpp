#include "core/convert.h"

#include <regex>
#include <set>

#include <torch/nn/module.h>

#include "core/errors.h"
#include "core/torch_util.h"

namespace mmdit {
namespace {

at::Tensor apply(const at::Tensor& t, Transform tr, const std::string& name) {
  switch (tr) {
    case Transform::Copy:
      return t;
    case Transform::SwapHalves: {
      if (t.dim() < 1 || t.size(0) % 2 != 0)
        throw ShapeError(name + ": cannot swap halves of a tensor of shape " + shape_string(t.sizes()));
      auto h = t.chunk(2, 0);
      return at::cat({h[1], h[0]}, 0);
    }
    case Transform::SqueezeConv: {
      if (t.dim() <= 2) return t;  // biases, or already a linear weight
      for (int64_t d = 2; d < t.dim(); ++d)
        if (t.size(d) != 1) throw ShapeError(name + ": expected a 1x1 convolution, got shape " + shape_string(t.sizes()));
      return t.reshape({t.size(0), t.size(1)});
    }
  }
  return t;
}

}  // namespace

TensorMap convert_weights(const WeightStore& store, const std::vector<RenameRule>& rules) {
  std::vector<std::regex> compiled;
  compiled.reserve(rules.size());
  for (const auto& r : rules) compiled.emplace_back(r.pattern, std::regex::ECMAScript | std::regex::optimize);
  TensorMap out;
  std::map<std::string, std::string> source_of;
  std::vector<std::string> unmatched;
  for (const auto& name : store.names()) {
    size_t i = 0;
    for (; i < rules.size(); ++i)
      if (std::regex_match(name, compiled[i])) break;
    if (i == rules.size()) {
      unmatched.push_back(name);
      continue;
    }
    const auto& rule = rules[i];
    if (rule.targets.empty()) continue;
    at::Tensor t = store.get(name);
    std::vector<at::Tensor> parts;
    if (!rule.split_sizes.empty()) {
      int64_t total = 0;
      for (int64_t s : rule.split_sizes) total += s;
      if (rule.split_sizes.size() != rule.targets.size() || t.dim() < 1 || t.size(0) != total)
        throw ShapeError(name + ": shape " + shape_string(t.sizes()) + " does not split into parts of " +
                         shape_string(rule.split_sizes) + " along dim 0");
      parts = t.split_with_sizes(rule.split_sizes, 0);
    } else if (rule.targets.size() > 1) {
      const int64_t n = int64_t(rule.targets.size());
      if (t.dim() < 1 || t.size(0) % n != 0)
        throw ShapeError(name + ": shape " + shape_string(t.sizes()) + " does not split into " + std::to_string(n) +
                         " equal parts along dim 0");
      parts = t.chunk(n, 0);
    } else {
      parts = {t};
    }
    for (size_t k = 0; k < parts.size(); ++k) {
      const std::string target = std::regex_replace(name, compiled[i], rule.targets[k]);
      if (!source_of.emplace(target, name).second)
        throw FormatError("two checkpoint tensors map to the same name '" + target + "' ('" + source_of[target] +
                          "' and '" + name + "')");
      out[target] = apply(parts[k], rule.transform, name);
    }
  }
  if (!unmatched.empty())
    throw FormatError("checkpoint has " + std::to_string(unmatched.size()) +
                      " tensors the conversion table does not know: " + some_names(unmatched));
  return out;
}

void load_module(torch::nn::Module& module, const TensorMap& tensors, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> missing;
  std::set<std::string> used;
  auto load_one = [&](const std::string& name, at::Tensor& target) {
    const std::string key = options.prefix + name;
    auto it = tensors.find(key);
    if (it == tensors.end()) {
      missing.push_back(key);
      return;
    }
    used.insert(key);
    const at::Tensor& src = it->second;
    if (src.sizes() != target.sizes())
      throw ShapeError(key + ": checkpoint shape " + shape_string(src.sizes()) + " but the model expects " +
                       shape_string(target.sizes()) + " (config and weights disagree?)");
    auto dtype = target.is_floating_point() ? target.scalar_type() : src.scalar_type();
    target.set_data(src.to(target.device(), dtype));
  };
  for (auto& p : module.named_parameters(/*recurse=*/true)) load_one(p.key(), p.value());
  for (auto& b : module.named_buffers(/*recurse=*/true)) load_one(b.key(), b.value());
  if (!options.strict) return;
  if (!missing.empty())
    throw FormatError("checkpoint lacks " + std::to_string(missing.size()) + " tensors the model needs: " + some_names(missing));
  std::vector<std::string> unexpected;
  for (const auto& kv : tensors)
    if (kv.first.compare(0, options.prefix.size(), options.prefix) == 0 && !used.count(kv.first))
      unexpected.push_back(kv.first);
  if (!unexpected.empty())
    throw FormatError("checkpoint has " + std::to_string(unexpected.size()) +
                      " tensors the model does not use: " + some_names(unexpected));
}

}  // namespace mmdit
