// Small LibTorch helpers shared by every model: dtype/device parsing and conversion.
#pragma once
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/image_io.h"
#include "core/safetensors_header.h"

namespace mmdit {

at::ScalarType to_scalar_type(DType d);
DType from_scalar_type(at::ScalarType t);  // throws FormatError for types safetensors lacks

// "cpu", "cuda", "cuda:N"; throws UsageError naming `flag` otherwise, RuntimeFailure if CUDA is absent.
at::Device parse_device(const std::string& s, const std::string& flag = "--device");
// "f32", "f16", "bf16" (and the long spellings float32/float16/bfloat16).
at::ScalarType parse_dtype(const std::string& s, const std::string& flag = "--dtype");
const char* short_dtype_name(at::ScalarType t);
// --dtype if given, else the default for the device: bf16 on CUDA, f32 on CPU.
at::ScalarType pick_dtype(const std::string& dtype, const at::Device& device);

// uint8 [N, H, W, C] -> N Images (on the CPU).
std::vector<Image> images_from_u8(const at::Tensor& nhwc);
// diffusers' VaeImageProcessor.postprocess + numpy_to_pil: float [N, C, H, W] in [-1, 1] ->
// (x / 2 + 0.5).clamp(0, 1) * 255, rounded, in float32.
std::vector<Image> to_images(const at::Tensor& nchw);
// "[2, 16, 64, 64]", for messages about shapes.
std::string shape_string(at::IntArrayRef shape);

// Free and total bytes of a CUDA device's memory; {0, 0} on CPU or without the CUDA runtime.
struct DeviceMemory {
  size_t free = 0, total = 0;
};
DeviceMemory device_memory(const at::Device& device);
// Returns the caching allocator's unused blocks to the driver (no-op without CUDA).
void empty_device_cache();
// Peak bytes the caching allocator has handed out on the device since the last reset (0 without CUDA).
size_t peak_device_memory(const at::Device& device);
// Bytes the caching allocator has handed out now (0 off CUDA).
size_t device_memory_allocated(const at::Device& device);
void reset_peak_device_memory(const at::Device& device);

}  // namespace mmdit
