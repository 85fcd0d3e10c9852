// The transformer blocks' fast path: fused QKV projections, one-pass norm + modulation (+ residual), QK
// norm + RoPE written straight into the joint sequence's Q/K/V buffers, GELU in the GEMM epilogue, no
// concatenations. On CUDA the one-pass steps run the kernels of kernels/fused.cu; each also has an ATen
// reference here (the same math as the models' plain path) that the GPU checks compare the kernels with,
// and that `Mode::Reference` runs on any device so the CPU tests can check the fast path's wiring.
// The fast path keeps both hook points: every attention still goes through mmdit::attention, and blocks
// still go through block_plan, so attention controls act on it as on the plain path.
#pragma once
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "kernels/fused.h"

namespace mmdit::fused {

enum class Mode {
  Auto,       // the fast path on CUDA with the kernels; the plain path on the CPU (the f32 golden path)
  Off,        // the plain path everywhere (--no-fused)
  Reference,  // the fast path's structure with the ATen reference ops, on any device (tests)
};
void set_mode(Mode m);
Mode mode();
struct ModeGuard {  // sets a mode for a scope
  explicit ModeGuard(Mode m) : saved(mode()) { set_mode(m); }
  ~ModeGuard() { set_mode(saved); }
  Mode saved;
};
// Whether this binary has the CUDA kernels.
bool kernels_built();
// Whether a block whose input is x takes the fast path.
bool active(const at::Tensor& x);

// Modulation of one norm: per-batch rows [B, C] (chunks of an adaLN output). CogVideoX modulates its text
// tokens [0, split) with the `text_*` set and the video tokens with the other.
struct Modulation {
  Modulation() = default;
  Modulation(at::Tensor shift, at::Tensor scale, at::Tensor gate = {}) : shift(shift), scale(scale), gate(gate) {}
  Modulation(at::Tensor shift, at::Tensor scale, at::Tensor gate, at::Tensor text_shift, at::Tensor text_scale,
             at::Tensor text_gate, int64_t split)
      : shift(shift), scale(scale), gate(gate), text_shift(text_shift), text_scale(text_scale), text_gate(text_gate),
        split(split) {}
  at::Tensor shift, scale, gate;
  at::Tensor text_shift, text_scale, text_gate;
  int64_t split = 0;
};

// {x', LN(x') * (1 + scale) + shift} with x' = x + gate * y when y is defined (else x' = x); LN with the
// optional affine ln_w, ln_b. x, y: [B, N, C].
std::pair<at::Tensor, at::Tensor> ln_modulate(const at::Tensor& x, const at::Tensor& y, const Modulation& m,
                                              double eps, const at::Tensor& ln_w = {}, const at::Tensor& ln_b = {});

// The joint sequence's Q, K, V: [B, N, heads, head_dim] each; heads(t) views one as [B, heads, N, head_dim] for
// mmdit::attention. The cuDNN kernel takes these strides without a copy and returns its output with the same
// strides, so the [B, N, heads * head_dim] view of the output is free too.
struct Qkv {
  at::Tensor q, k, v;
};
Qkv qkv_buffers(int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
inline at::Tensor heads(const at::Tensor& t) { return t.transpose(1, 2); }

struct QkNormSpec {
  kernels::QkNorm kind = kernels::QkNorm::None;
  bool rms_round = false;  // diffusers' RMSNorm (round, then weight) rather than torch's rms_norm
  at::Tensor q_w, q_b, k_w, k_b;
  double eps = 1e-6;
};
// Writes the Q, K, V of src [B, n, >= 3 * heads * head_dim] ([q | k | v] in each row's first columns) into
// dst at token `offset`, after the per-head norm and, where cos/sin ([rows, head_dim] float32) are given,
// RoPE on tokens offset + i >= rope_first (table row offset + i - rope_first).
void qkv_prepare(const at::Tensor& src, const QkNormSpec& norm, const at::Tensor& cos, const at::Tensor& sin,
                 int64_t rope_first, Qkv& dst, int64_t offset);

// Rows [b, e) of the buffers (views).
Qkv rows(const Qkv& buf, int64_t b, int64_t e);
// Rows that repeat other rows' image stream (BlockPlan::image_copies): the last copies.size() rows of the buffers
// take tokens [begin, end) of rows `copies`; with_copies(x) appends rows `copies` of x [U, N, C] to it.
void copy_image_rows(Qkv& buf, int64_t begin, int64_t end, const std::vector<int64_t>& copies);
at::Tensor with_copies(const at::Tensor& x, const std::vector<int64_t>& copies);

// gelu_tanh(x W^T + b): the GELU in the GEMM's epilogue on CUDA (cuBLASLt's is the tanh form).
at::Tensor linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// [a | c] W^T + bias without building [a | c]: two GEMMs accumulating into one output.
at::Tensor linear_of_concat(const at::Tensor& a, const at::Tensor& c, const at::Tensor& w, const at::Tensor& bias);
// x + gate * y with gate [B, C] over the tokens of x, y [B, N, C].
at::Tensor residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y);
// x += gate * y in place, the tokens below m.split with m.text_gate and the others with m.gate (CogVideoX).
void add_residual_(at::Tensor& x, const Modulation& m, const at::Tensor& y);

// Concatenates parameters along dim 0 into one tensor and turns each into a view of it (no second copy
// stays alive): one GEMM for Q, K and V. Returns an undefined tensor when any is undefined.
at::Tensor fuse_rows(const std::vector<at::Tensor*>& params);
// fuse_rows of the weights and of the biases of linear layers (module holders with weight and bias): {weight, bias}.
template <class... Linear>
std::pair<at::Tensor, at::Tensor> fuse_linears(Linear&... layers) {
  return {fuse_rows({&layers->weight...}), fuse_rows({&layers->bias...})};
}

}  // namespace mmdit::fused
