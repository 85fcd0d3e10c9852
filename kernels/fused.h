// Fused CUDA kernels for the transformer blocks' small operations (the "other" bucket of a step: norms,
// modulation, residuals, QK norms, RoPE, the joint-sequence layout). Plain pointers and a stream only: no
// torch here, so nvcc compiles this fast; models/fused_ops.h wraps them for tensors and holds the ATen
// reference each one must match. All math is float32, rounded once on store.
#pragma once
#include <cstdint>

namespace mmdit::kernels {

enum class DType { F32, F16, BF16 };

// out = LN(x) * (1 + scale) + shift over each row of C values, with optional LayerNorm affine (ln_w, ln_b)
// and, first, an optional residual x = x + gate * y (written to x_out, and normalised as rounded).
// Row r is token r % tokens of batch r / tokens. Tokens below `split` take the modulation of set a, the
// others set b (CogVideoX's text and video); set a is unused when split == 0. shift/scale/gate are rows of
// [B, C] tensors with batch stride mod_stride (chunks of an adaLN output).
struct LnModArgs {
  DType dtype = DType::BF16;
  int64_t rows = 0, cols = 0, tokens = 0, split = 0;
  const void* x = nullptr;
  const void* gate_a = nullptr;  // residual gates (null: no residual)
  const void* gate_b = nullptr;
  const void* y = nullptr;
  void* x_out = nullptr;
  const void* ln_w = nullptr;  // LayerNorm affine, or null
  const void* ln_b = nullptr;
  const void* shift_a = nullptr;
  const void* scale_a = nullptr;
  const void* shift_b = nullptr;
  const void* scale_b = nullptr;
  int64_t mod_stride = 0;
  void* out = nullptr;  // [rows, cols]
  float eps = 1e-6f;
};
// Returns false when the shape is outside what the kernel takes (cols > 8192): use the reference.
bool ln_modulate(const LnModArgs& a, void* stream);

// out = x + gate * y over rows of C values (out may be x); tokens below `split` take gate_a, the others gate_b.
struct ResidualArgs {
  DType dtype = DType::BF16;
  int64_t rows = 0, cols = 0, tokens = 0, split = 0;
  const void* x = nullptr;
  const void* gate_a = nullptr;
  const void* gate_b = nullptr;
  int64_t mod_stride = 0;
  const void* y = nullptr;
  void* out = nullptr;
};
// Returns false when cols is not a multiple of 8 or a pointer is not 16-byte aligned: use the reference.
bool residual(const ResidualArgs& a, void* stream);

// Q/K/V of `tokens` tokens from a projection output (rows of [q | k | v], heads x head_dim each, row stride
// src_row_stride, batch stride src_batch_stride) into [B, dst_tokens, heads, head_dim] buffers at token
// dst_offset: per-head norm of q and k (none, RMSNorm with weight, LayerNorm with weight and bias), then
// RoPE with interleaved pairs on tokens at or after rope_first (table row = dst token - rope_first).
enum class QkNorm { None, Rms, Layer };
struct QkvArgs {
  DType dtype = DType::BF16;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  const void* src = nullptr;
  int64_t src_row_stride = 0, src_batch_stride = 0;
  QkNorm norm = QkNorm::None;
  bool rms_round = false;  // diffusers' RMSNorm: the normalised value rounds to the dtype before the weight
  const void* q_w = nullptr;
  const void* q_b = nullptr;
  const void* k_w = nullptr;
  const void* k_b = nullptr;
  float eps = 1e-6f;
  const float* cos = nullptr;  // [rope rows, head_dim] float32, or null: no RoPE
  const float* sin = nullptr;
  int64_t rope_first = 0;
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  int64_t dst_tokens = 0, dst_offset = 0;
};
// Returns false when head_dim is not a multiple of 64 or above 256: use the reference.
bool qkv_prepare(const QkvArgs& a, void* stream);

}  // namespace mmdit::kernels
