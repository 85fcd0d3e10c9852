// Opt-in fp8 GEMMs (--fp8): the transformer blocks' linear layers run as e4m3 x e4m3 GEMMs with one float32
// scale per weight row and one per activation row (at::_scaled_mm's row-wise mode, bf16 out). The weights are
// quantized once after loading and their bf16 copy is freed; each activation is quantized by the kernel of
// kernels/quant.h right before its GEMM (the MLP's GELU rides along). Lossy: docs/BENCHMARKS.md reports the
// image's PSNR against bf16. The adaLN modulation layers stay bf16 (one row per image: no gain).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace mmdit::fp8 {

// A weight [out, in] as e4m3 values and one float32 scale per output row: w ~= values * scale[:, None].
struct Weight {
  at::Tensor values;  // [out, in] e4m3
  at::Tensor scale;   // [out] float32
  bool defined() const { return values.defined(); }
  Weight rows(int64_t begin, int64_t n) const { return {values.narrow(0, begin, n), scale.narrow(0, begin, n)}; }
};
// Whether the fp8 GEMM takes a weight [out, in]: both sizes multiples of 16. Others stay in bf16.
bool fits(const at::Tensor& w);
Weight quantize_weight(const at::Tensor& w);

// Activations quantized by rows: values [rows, cols] e4m3, scale [rows] float32; `lead` holds the input's
// leading sizes (the GEMM's output is lead + [out]).
struct Rows {
  at::Tensor values, scale;
  std::vector<int64_t> lead;
};
// x [..., C] by rows; gelu: gelu_tanh(x) is what gets quantized.
Rows quantize(const at::Tensor& x, bool gelu = false);
// The rows of [a | c] (one scale over both) without building the concatenation; gelu_c applies to c.
Rows quantize(const at::Tensor& a, const at::Tensor& c, bool gelu_c);
// The same where a holds e4m3 values with one scale (a_scale [1] float32: the fp8 attention's output).
Rows quantize(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& c, bool gelu_c);
// Rows of e4m3 values x [..., C] that share one scale [1] (the fp8 attention's output): no requantization.
Rows rows_of(const at::Tensor& x, const at::Tensor& scale);
// The same with ATen ops: the kernel's reference (and the path where the kernel is not built or not used).
Rows quantize_reference(const at::Tensor& a, const at::Tensor& c = {}, bool gelu_c = false, bool gelu_a = false,
                        const at::Tensor& a_scale = {});

// x W^T + bias, out dtype `out`. CUDA: _scaled_mm row-wise; other devices: the same values dequantized and
// multiplied in float32 (CPU tests of the wiring).
at::Tensor linear(const Rows& x, const Weight& w, const at::Tensor& bias, at::ScalarType out);
inline at::Tensor linear(const at::Tensor& x, const Weight& w, const at::Tensor& bias) {
  return linear(quantize(x), w, bias, x.scalar_type());
}

// Frees a weight's memory in place (the tensor stays, empty): once quantized, the bf16 copy goes. Views of the
// same storage must be released too before the memory is returned.
void release(at::Tensor& w);

// Throws UsageError (one line, exit 2) unless this device and dtype can run --fp8: the row-wise fp8 GEMMs need a
// CUDA GPU of compute capability 9.0 or newer and write bf16.
void require(const at::Device& device, at::ScalarType dtype);
// The same for --fp8-attention (FLUX, CogVideoX): it needs --fp8 (its output feeds the fp8 projections) and a build with the
// cudnn-frontend headers.
void require_attention(bool fp8);
// Throws UsageError: fp8 attention is not wired for SD3 (head dim 64, and two attentions in SD3.5-medium's blocks).
[[noreturn]] void refuse_attention(const std::string& family);

}  // namespace mmdit::fp8
