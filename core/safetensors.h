// safetensors files as LibTorch tensors: memory-mapped, validated up front (safetensors_header.h),
// tensors handed out without copying where the stored dtype is used as is.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors_header.h"

namespace at {
class Tensor;
}

namespace mmdit {

class MappedFile;

class SafetensorsFile {
 public:
  // Maps and validates the whole header; throws FileError / FormatError.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  // Mapping is lazy: opening a 20 GB file reads only its header pages.

  const SafetensorsHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return path_; }
  bool has(const std::string& name) const { return header_.find(name) != nullptr; }
  // A CPU tensor over the mapped bytes, in the stored dtype (F8 as torch's float8 types).
  // Copies only when the bytes are misaligned for the dtype. Keeps the mapping alive.
  at::Tensor tensor(const std::string& name) const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
};

// Writes tensors (any device, contiguous or not) to a safetensors file atomically.
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mmdit
