// Row-wise fp8 (e4m3) quantization of activations for the opt-in fp8 GEMMs (--fp8, models/fp8.h). Plain
// pointers and a stream only, like kernels/fused.h; models/fp8.cpp holds the ATen reference it must match.
#pragma once
#include <cstdint>

#include "kernels/fused.h"

namespace mmdit::kernels {

// Each output row is the concatenation of up to two segments' rows. Row r of a segment starts at
// x + (r / tokens) * batch_stride + (r % tokens) * row_stride (elements), so narrowed token ranges of a
// [B, N, C] tensor need no copy. gelu: the segment's values go through tanh-GELU first (the MLP's activation,
// so the up projection's output is read once).
// fp8_scale: the segment holds e4m3 values whose real value is value * *fp8_scale (the fp8 attention's output).
struct QuantSegment {
  const void* x = nullptr;
  int64_t cols = 0, tokens = 1, row_stride = 0, batch_stride = 0;
  bool gelu = false;
  const float* fp8_scale = nullptr;
};
struct QuantArgs {
  DType dtype = DType::BF16;
  int64_t rows = 0;
  QuantSegment seg[2];
  int segments = 1;
  void* out = nullptr;    // [rows, seg[0].cols + seg[1].cols] e4m3, contiguous
  float* scale = nullptr;  // [rows]: amax / 448 (at least 1e-12 / 448), so that row ~= out * scale
};
// Returns false when a segment's cols or strides are not multiples of 8, or a pointer is not 16-byte aligned:
// use the reference.
bool quantize_rows(const QuantArgs& a, void* stream);

// Per-tensor quantization of the attention's Q, K and V for cuDNN's fp8 attention (core/attention_fp8.h): each of
// the three contiguous tensors of `numel` values gets scale = max(amax, 1e-12) / 448. `params` (device, 7 floats)
// receives what the attention graph reads: the descales of Q, K and V, the probabilities' descale 1/448 and scale
// 448, and the output's scale and descale. The output is an average of V's rows, so |o| <= amax(V): its scale is
// 448 / (kOutMargin * amax(V)), the margin covering the rounding of the fp8 probabilities.
constexpr float kOutMargin = 1.125f;
struct QkvQuantArgs {
  DType dtype = DType::BF16;
  const void* x[3] = {nullptr, nullptr, nullptr};
  void* out[3] = {nullptr, nullptr, nullptr};
  int64_t numel = 0;
  float* amax = nullptr;    // [3] scratch
  float* params = nullptr;  // [7]
};
// False for f32, numel not a multiple of 8 or pointers not 16-byte aligned: use the reference.
bool quantize_qkv(const QkvQuantArgs& a, void* stream);

}  // namespace mmdit::kernels
