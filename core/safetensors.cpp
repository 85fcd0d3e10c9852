#include "core/safetensors.h"

#include <ATen/ATen.h>

#include "core/atomic_file.h"
#include "core/errors.h"
#include "core/mapped_file.h"
#include "core/torch_util.h"

namespace mmdit {

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  auto f = std::make_shared<SafetensorsFile>();
  f->path_ = path;
  f->map_ = std::make_shared<MappedFile>(path);
  f->header_ = parse_safetensors(f->map_->data(), f->map_->size(), path.string());
  return f;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* t = header_.find(name);
  if (!t) throw FormatError(path_.string() + ": no tensor named '" + name + "'");
  const auto options = at::TensorOptions().dtype(to_scalar_type(t->dtype));
  const uint8_t* p = map_->data() + header_.data_offset + t->begin;
  if (t->numel() == 0) return at::empty(t->shape, options);
  auto keep_alive = map_;
  // The mapping is private copy-on-write, so a stray in-place op can never reach the file.
  at::Tensor view = at::from_blob(const_cast<uint8_t*>(p), t->shape, [keep_alive](void*) {}, options);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t->dtype) != 0) return view.clone();  // misaligned
  return view;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> infos;
  std::vector<at::Tensor> cpu;
  for (const auto& [name, t] : tensors) {
    TensorInfo info;
    info.name = name;
    info.dtype = from_scalar_type(t.scalar_type());
    info.shape = t.sizes().vec();
    infos.push_back(info);
    cpu.push_back(t.to(at::kCPU).contiguous());
  }
  std::string bytes = build_safetensors_header(infos, metadata);
  for (const auto& t : cpu) bytes.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  atomic_write_bytes(path, bytes);
}

}  // namespace mmdit
