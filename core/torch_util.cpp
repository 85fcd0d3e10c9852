#include "core/torch_util.h"

#include <ATen/Context.h>

#include "core/errors.h"

#if MMDIT_HAVE_CUDART
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace mmdit {
namespace {
struct Row {
  DType d;
  at::ScalarType t;
};
constexpr Row kRows[] = {
    {DType::F64, at::kDouble},   {DType::F32, at::kFloat},  {DType::F16, at::kHalf},
    {DType::BF16, at::kBFloat16}, {DType::F8_E4M3, at::kFloat8_e4m3fn}, {DType::F8_E5M2, at::kFloat8_e5m2},
    {DType::I64, at::kLong},     {DType::I32, at::kInt},    {DType::I16, at::kShort},
    {DType::I8, at::kChar},      {DType::U8, at::kByte},    {DType::BOOL, at::kBool},
};
}  // namespace

at::ScalarType to_scalar_type(DType d) {
  for (const auto& r : kRows)
    if (r.d == d) return r.t;
  throw FormatError(std::string("unsupported dtype ") + dtype_name(d));
}

DType from_scalar_type(at::ScalarType t) {
  for (const auto& r : kRows)
    if (r.t == t) return r.d;
  throw FormatError(std::string("safetensors cannot store dtype ") + c10::toString(t));
}

at::Device parse_device(const std::string& s, const std::string& flag) {
  if (s == "cpu") return at::Device(at::kCPU);
  int index = -1;
  if (s == "cuda") {
    index = 0;
  } else if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
             s.find_first_not_of("0123456789", 5) == std::string::npos) {
    index = std::stoi(s.substr(5));
  } else {
    throw UsageError(flag + ": expected cpu, cuda or cuda:N, got '" + s + "'");
  }
  if (!at::hasCUDA()) throw RuntimeFailure(flag + " " + s + ": no CUDA device is available on this machine");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

at::ScalarType pick_dtype(const std::string& dtype, const at::Device& device) {
  if (!dtype.empty()) return parse_dtype(dtype);
  return device.is_cuda() ? at::kBFloat16 : at::kFloat;
}

std::vector<Image> images_from_u8(const at::Tensor& nhwc) {
  const at::Tensor u8 = nhwc.contiguous().cpu();
  std::vector<Image> out;
  for (int64_t b = 0; b < u8.size(0); ++b) {
    Image img;
    img.height = int(u8.size(1));
    img.width = int(u8.size(2));
    img.channels = int(u8.size(3));
    const uint8_t* p = u8[b].data_ptr<uint8_t>();
    img.pixels.assign(p, p + u8[b].numel());
    out.push_back(std::move(img));
  }
  return out;
}

std::vector<Image> to_images(const at::Tensor& nchw) {
  return images_from_u8((nchw.to(at::kFloat) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).permute({0, 2, 3, 1}));
}

at::ScalarType parse_dtype(const std::string& s, const std::string& flag) {
  if (s == "f32" || s == "float32" || s == "fp32") return at::kFloat;
  if (s == "f16" || s == "float16" || s == "fp16") return at::kHalf;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  throw UsageError(flag + ": expected f32, f16 or bf16, got '" + s + "'");
}

const char* short_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "f32";
    case at::kHalf: return "f16";
    case at::kBFloat16: return "bf16";
    default: return c10::toString(t);
  }
}

std::string shape_string(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

DeviceMemory device_memory(const at::Device& device) {
  DeviceMemory m;
#if MMDIT_HAVE_CUDART
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device);
    if (cudaMemGetInfo(&m.free, &m.total) != cudaSuccess) m = DeviceMemory{};
  }
#endif
  return m;
}

size_t peak_device_memory(const at::Device& device) {
#if MMDIT_HAVE_CUDART
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return size_t(stats.allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)].peak);
  }
#endif
  return 0;
}

size_t device_memory_allocated(const at::Device& device) {
#if MMDIT_HAVE_CUDART
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return size_t(stats.allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)].current);
  }
#endif
  return 0;
}

void reset_peak_device_memory(const at::Device& device) {
#if MMDIT_HAVE_CUDART
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
}

void empty_device_cache() {
#if MMDIT_HAVE_CUDART
  if (at::hasCUDA()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace mmdit
