#include "core/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace mmdit {
namespace {

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8},         {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::I64, "I64", 8},         {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},           {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
};

// Names can be any bytes; keep messages one printable line.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s.substr(0, 200)) out += (c >= 32 && c < 127) ? char(c) : '?';
  if (s.size() > 200) out += "...";
  return out;
}

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw FormatError(what + ": " + problem);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a JSON array of non-negative integers that fit in int64.
std::vector<uint64_t> uint_array(const nlohmann::json& j, const std::string& what, const std::string& field) {
  if (!j.is_array()) fail(what, field + " is not an array");
  std::vector<uint64_t> out;
  for (const auto& v : j) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > uint64_t(INT64_MAX))
      fail(what, field + " holds a value that is not a non-negative integer");
    out.push_back(v.get<uint64_t>());
  }
  return out;
}

TensorInfo parse_entry(const std::string& name, const nlohmann::json& e, const std::string& what) {
  const std::string where = "tensor '" + printable(name) + "'";
  if (!e.is_object()) fail(what, where + " is not a JSON object");
  auto dt = e.find("dtype");
  auto sh = e.find("shape");
  auto off = e.find("data_offsets");
  if (dt == e.end() || sh == e.end() || off == e.end())
    fail(what, where + " lacks one of dtype, shape, data_offsets");
  if (!dt->is_string()) fail(what, where + " has a dtype that is not a string");
  auto dtype = dtype_from_name(dt->get<std::string>());
  if (!dtype) fail(what, where + " has unknown dtype '" + printable(dt->get<std::string>()) + "'");
  TensorInfo t;
  t.name = name;
  t.dtype = *dtype;
  auto dims = uint_array(*sh, what, where + " shape");
  auto offs = uint_array(*off, what, where + " data_offsets");
  if (offs.size() != 2) fail(what, where + " data_offsets must hold two numbers");
  t.begin = offs[0];
  t.end = offs[1];
  if (t.begin > t.end) fail(what, where + " data_offsets end before they begin");
  // Shape product with overflow check: the byte count must equal the span exactly.
  unsigned __int128 bytes = dtype_size(t.dtype);
  for (uint64_t d : dims) {
    bytes *= d;
    if (bytes > (unsigned __int128)UINT64_MAX) bytes = (unsigned __int128)UINT64_MAX;  // saturate
    t.shape.push_back(int64_t(d));
  }
  if (bytes == (unsigned __int128)UINT64_MAX) fail(what, where + " has a shape too large for any file");
  if (bytes != (unsigned __int128)(t.end - t.begin))
    fail(what, where + " shape needs " + std::to_string((uint64_t)bytes) + " bytes but data_offsets span " +
                   std::to_string(t.end - t.begin));
  return t;
}

}  // namespace

const char* dtype_name(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r.name;
  return "?";
}

std::optional<DType> dtype_from_name(const std::string& s) {
  for (const auto& r : kDTypes)
    if (s == r.name) return r.dtype;
  return std::nullopt;
}

size_t dtype_size(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r.size;
  return 0;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= uint64_t(d);
  return n;
}

const TensorInfo* SafetensorsHeader::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what) {
  if (size == 0) fail(what, "file is empty, not a safetensors file");
  if (size < 8) fail(what, "file is " + std::to_string(size) + " bytes, too short for a safetensors header");
  const uint64_t n = read_u64_le(bytes);
  if (n > kMaxHeaderBytes)
    fail(what, "header length " + std::to_string(n) + " exceeds the 100 MB limit (not a safetensors file?)");
  if (n > size - 8)
    fail(what, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                   " bytes; truncated?)");
  if (n < 2) fail(what, "header of " + std::to_string(n) + " bytes cannot hold a JSON object");
  auto j = nlohmann::json::parse(bytes + 8, bytes + 8 + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(what, "header is not valid JSON");
  if (!j.is_object()) fail(what, "header is JSON but not an object");

  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const uint64_t data_size = size - h.data_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(what, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        h.metadata[m.key()] = m.value().is_string() ? m.value().get<std::string>()
                                                    : m.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      continue;
    }
    TensorInfo t = parse_entry(it.key(), it.value(), what);
    if (t.end > data_size)
      fail(what, "tensor '" + printable(t.name) + "' data span [" + std::to_string(t.begin) + ", " +
                     std::to_string(t.end) + ") lies outside the " + std::to_string(data_size) +
                     "-byte data section (truncated?)");
    h.tensors.push_back(std::move(t));
  }
  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  // Sorted by start: a span overlaps an earlier one iff it starts before the furthest end so far.
  // Zero-length spans hold no bytes and cannot overlap anything.
  const TensorInfo* furthest = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin == t.end) continue;
    if (furthest && t.begin < furthest->end)
      fail(what, "tensors '" + printable(furthest->name) + "' and '" + printable(t.name) +
                     "' have overlapping data spans");
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
  return h;
}

std::string build_safetensors_header(std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (auto& t : tensors) {
    t.begin = offset;
    t.end = offset + t.numel() * dtype_size(t.dtype);
    offset = t.end;
    j[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string body = j.dump();
  while ((8 + body.size()) % 8 != 0) body += ' ';  // align the data section, as the reference writer does
  std::string out(8, '\0');
  uint64_t n = body.size();
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + body;
}

}  // namespace mmdit
