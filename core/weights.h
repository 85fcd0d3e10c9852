// A named set of weight tensors from one safetensors file, a sharded index, or a component folder,
// optionally renamed by a table (original single-file checkpoints -> diffusers names).
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/safetensors_header.h"

namespace at {
class Tensor;
}
namespace torch::nn {
class Module;
}

namespace mmdit {

class SafetensorsFile;

class WeightStore {
 public:
  // path: a .safetensors file, a *.safetensors.index.json, or a component folder. Shards named by an index
  // that are absent are listed in missing_files() (opening tensors from them throws FileError).
  static WeightStore open(const std::filesystem::path& path);

  // A view with names rewritten: rename(original) returns the new name, or nullopt to drop the tensor.
  WeightStore renamed(const std::function<std::optional<std::string>(const std::string&)>& rename) const;
  // A view of the tensors under `prefix` with the prefix removed.
  WeightStore with_prefix(const std::string& prefix) const;

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<std::string> names() const;
  size_t size() const { return entries_.size(); }
  // Header info; nullptr when the tensor's shard is missing (names come from the index only).
  const TensorInfo* info(const std::string& name) const;
  at::Tensor get(const std::string& name) const;  // CPU, stored dtype, zero-copy where possible
  const std::vector<std::filesystem::path>& missing_files() const { return missing_; }
  const std::vector<std::filesystem::path>& files() const { return files_; }
  bool is_random() const { return random_; }

 private:
  struct Entry {
    int file = -1;             // index into files_/opened_; -1 never
    std::string stored_name;   // name inside the file
  };
  std::map<std::string, Entry> entries_;
  std::vector<std::filesystem::path> files_;
  std::vector<std::shared_ptr<SafetensorsFile>> opened_;  // null for missing shards
  std::vector<std::filesystem::path> missing_;
  bool random_ = false;  // benchmark mode: no tensors, load_module fills random values
};

// Benchmark mode (`--random-weights`): weight folders may lack their weight files, and load_module
// fills parameters with seeded random values made directly on `device` instead of reading files
// (norm gains 1, everything else N(0, 0.02)), so full-size models can be timed without checkpoints.
void set_random_weights(bool on, const std::string& device = "cpu");
bool random_weights();

struct LoadOptions {
  std::string prefix;   // prepended to module parameter names when looking up the store
  bool strict = true;   // missing or unexpected tensors are an error
};

// Copies the store's tensors into the module's parameters and buffers by name (diffusers key == module
// path), converting to each parameter's current device and dtype. Throws ShapeError / FormatError
// naming the first mismatched, missing or unexpected tensors.
void load_module(torch::nn::Module& module, const WeightStore& store, const LoadOptions& options = {});

}  // namespace mmdit
