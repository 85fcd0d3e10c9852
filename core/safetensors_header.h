// safetensors header parsing and validation, without LibTorch (so the fuzzer and inspect's
// weightless paths stay light). Layout: u64 little-endian header length N, N bytes of JSON,
// then the data section. Every check happens here, before any tensor data is touched.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mmdit {

enum class DType { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType d);
std::optional<DType> dtype_from_name(const std::string& s);
size_t dtype_size(DType d);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
  uint64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;            // in file order of their data offsets
  std::map<std::string, std::string> metadata;  // __metadata__, string values only
  uint64_t data_offset = 0;                   // 8 + header length
  const TensorInfo* find(const std::string& name) const;
};

constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

// Parses and validates a whole file image (bytes, size). `what` names the file in messages.
// Throws FormatError with one line naming `what` and the problem.
SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what);

// Builds the header bytes (length prefix + JSON, padded to 8 bytes) for tensors laid out
// back to back in the given order; fills begin/end of each entry.
std::string build_safetensors_header(std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata);

}  // namespace mmdit
