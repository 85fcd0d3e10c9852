#include "core/weights.h"

#include <fstream>
#include <mutex>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "core/errors.h"
#include "core/torch_util.h"
#include "core/model_folder.h"
#include "core/safetensors.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {
bool g_random = false;
std::string g_random_device = "cpu";
}  // namespace

void set_random_weights(bool on, const std::string& device) {
  g_random = on;
  g_random_device = device;
}
bool random_weights() { return g_random; }

WeightStore WeightStore::open(const fs::path& path) {
  if (g_random) {
    WeightStore s;
    s.random_ = true;
    return s;
  }
  fs::path p = path;
  if (fs::is_directory(p)) {
    auto found = find_weights(p);
    if (!found) throw FileError(path.string() + ": folder holds no .safetensors weights or index");
    p = *found;
  }
  if (!fs::exists(p)) throw FileError(p.string() + ": no such file");
  WeightStore s;
  const std::string name = p.filename().string();
  if (name.size() > 5 && name.substr(name.size() - 5) == ".json") {
    auto j = read_json_object(p);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw FormatError(p.string() + ": index has no \"weight_map\" object");
    std::map<std::string, int> shard_index;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw FormatError(p.string() + ": weight_map['" + it.key() + "'] is not a file name");
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..")
        throw FormatError(p.string() + ": weight_map names a shard outside its folder: " + shard);
      auto [pos, added] = shard_index.emplace(shard, int(s.files_.size()));
      if (added) s.files_.push_back(p.parent_path() / shard);
      s.entries_[it.key()] = Entry{pos->second, it.key()};
    }
    for (const auto& f : s.files_) {
      if (fs::exists(f)) {
        auto opened = SafetensorsFile::open(f);
        s.opened_.push_back(opened);
      } else {
        s.opened_.push_back(nullptr);
        s.missing_.push_back(f);
      }
    }
    // Every tensor the index names must be in its shard.
    for (const auto& [tname, e] : s.entries_) {
      const auto& f = s.opened_[e.file];
      if (f && !f->has(e.stored_name))
        throw FormatError(s.files_[e.file].string() + ": index names tensor '" + tname + "' but the shard lacks it");
    }
    return s;
  }
  s.files_.push_back(p);
  s.opened_.push_back(SafetensorsFile::open(p));
  for (const auto& t : s.opened_[0]->header().tensors) s.entries_[t.name] = Entry{0, t.name};
  return s;
}

WeightStore WeightStore::renamed(const std::function<std::optional<std::string>(const std::string&)>& rename) const {
  WeightStore out = *this;
  out.entries_.clear();
  for (const auto& [name, e] : entries_) {
    auto n = rename(name);
    if (!n) continue;
    if (!out.entries_.emplace(*n, e).second)
      throw FormatError("two checkpoint tensors map to the same name '" + *n + "' (one is '" + name + "')");
  }
  return out;
}

WeightStore WeightStore::with_prefix(const std::string& prefix) const {
  return renamed([&](const std::string& n) -> std::optional<std::string> {
    if (n.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
    return n.substr(prefix.size());
  });
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const TensorInfo* WeightStore::info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return nullptr;
  const auto& f = opened_[it->second.file];
  return f ? f->header().find(it->second.stored_name) : nullptr;
}

at::Tensor WeightStore::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw FormatError("checkpoint has no tensor '" + name + "'");
  const auto& f = opened_[it->second.file];
  if (!f) throw FileError(files_[it->second.file].string() + ": weight shard is missing (needed for '" + name + "')");
  return f->tensor(it->second.stored_name);
}

namespace {
void fill_random(torch::nn::Module& module) {
  const at::Device device(g_random_device);
  // Seed 0 for every module, as on the CPU: the same weights in every process (the ranks of one generation).
  at::Generator gen;
  if (device.is_cuda()) {
    gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(0);
  } else {
    gen = at::make_generator<at::CPUGeneratorImpl>(0);
  }
  auto fill = [&](const std::string& name, at::Tensor& t) {
    if (!t.is_floating_point()) return;
    at::Tensor r = at::empty(t.sizes(), t.options().device(device));
    const bool gain = t.dim() == 1 && name.find("norm") != std::string::npos && name.size() >= 6 &&
                      name.compare(name.size() - 6, 6, "weight") == 0;
    if (gain) r.fill_(1.0);
    else r.normal_(0.0, 0.02, gen.defined() ? std::optional<at::Generator>(gen) : std::nullopt);
    t.set_data(r);
  };
  for (auto& p : module.named_parameters(true)) fill(p.key(), p.value());
  for (auto& b : module.named_buffers(true)) fill(b.key(), b.value());
}
}  // namespace

void load_module(torch::nn::Module& module, const WeightStore& store, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  if (store.is_random()) return fill_random(module);
  std::vector<std::string> missing;
  std::set<std::string> used;
  auto load_one = [&](const std::string& name, at::Tensor& target) {
    const std::string key = options.prefix + name;
    if (!store.has(key)) {
      missing.push_back(key);
      return;
    }
    used.insert(key);
    at::Tensor src = store.get(key);
    if (src.sizes() != target.sizes())
      throw ShapeError(key + ": checkpoint shape " + shape_string(src.sizes()) + " but the model expects " +
                       shape_string(target.sizes()) + " (config and weights disagree?)");
    // Floating weights take the model's dtype (fp8/bf16/f16 files upcast or downcast here);
    // integer buffers keep theirs.
    auto dtype = target.is_floating_point() ? target.scalar_type() : src.scalar_type();
    target.set_data(src.to(target.device(), dtype));
  };
  for (auto& p : module.named_parameters(/*recurse=*/true)) load_one(p.key(), p.value());
  for (auto& b : module.named_buffers(/*recurse=*/true)) load_one(b.key(), b.value());
  if (!options.strict) return;
  if (!missing.empty()) throw FormatError("checkpoint lacks " + std::to_string(missing.size()) + " tensors the model needs: " + some_names(missing));
  std::vector<std::string> unexpected;
  for (const auto& n : store.names())
    if (n.compare(0, options.prefix.size(), options.prefix) == 0 && !used.count(n)) unexpected.push_back(n);
  if (!unexpected.empty())
    throw FormatError("checkpoint has " + std::to_string(unexpected.size()) + " tensors the model does not use: " + some_names(unexpected));
}

}  // namespace mmdit
