#include "models/fp8.h"

#include <c10/core/GradMode.h>

#include "core/attention_fp8.h"
#include "core/errors.h"
#include "models/fused_ops.h"

#if MMDIT_HAVE_FUSED_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/quant.h"
#endif

namespace mmdit::fp8 {
namespace {

constexpr double kMax = 448.0;  // the largest finite e4m3 value

std::vector<int64_t> lead_of(const at::Tensor& x) {
  auto s = x.sizes().vec();
  s.pop_back();
  return s;
}

#if MMDIT_HAVE_FUSED_KERNELS
// The kernel's view of t's rows: [B, N, C] or [R, C] with unit column stride; false for other layouts.
bool segment_of(const at::Tensor& t, bool gelu, kernels::QuantSegment& s) {
  if (t.stride(-1) != 1 || (t.dim() != 2 && t.dim() != 3)) return false;
  s.x = t.data_ptr();
  s.cols = t.size(-1);
  s.gelu = gelu;
  s.tokens = t.size(-2);
  s.row_stride = t.stride(-2);
  s.batch_stride = t.dim() == 3 ? t.stride(0) : 0;
  return true;
}

// The kernel where it is built and the fast path is on (not --no-fused); false: use the reference.
bool quantize_kernel(const at::Tensor& a, bool gelu_a, const at::Tensor& c, bool gelu_c, const at::Tensor& a_scale,
                     Rows& out) {
  const at::ScalarType dtype = a_scale.defined() ? (c.defined() ? c.scalar_type() : at::kBFloat16) : a.scalar_type();
  if (!a.is_cuda() || fused::mode() != fused::Mode::Auto || dtype != at::kBFloat16) return false;
  if (c.defined() && (c.scalar_type() != dtype || lead_of(c) != lead_of(a))) return false;
  kernels::QuantArgs args;
  args.dtype = kernels::DType::BF16;
  args.segments = c.defined() ? 2 : 1;
  if (!segment_of(a, gelu_a, args.seg[0]) || (c.defined() && !segment_of(c, gelu_c, args.seg[1]))) return false;
  if (a_scale.defined()) args.seg[0].fp8_scale = a_scale.data_ptr<float>();
  out.lead = lead_of(a);
  args.rows = a.numel() / a.size(-1);
  const int64_t cols = a.size(-1) + (c.defined() ? c.size(-1) : 0);
  out.values = at::empty({args.rows, cols}, a.options().dtype(at::kFloat8_e4m3fn));
  out.scale = at::empty({args.rows}, a.options().dtype(at::kFloat));
  args.out = out.values.data_ptr();
  args.scale = out.scale.data_ptr<float>();
  return kernels::quantize_rows(args, c10::cuda::getCurrentCUDAStream(a.device().index()).stream());
}
#endif

}  // namespace

bool fits(const at::Tensor& w) { return w.dim() == 2 && w.size(0) % 16 == 0 && w.size(1) % 16 == 0; }

Weight quantize_weight(const at::Tensor& w) {
  at::NoGradGuard no_grad;
  at::Tensor f = w.to(at::kFloat);
  at::Tensor scale = f.abs().amax(1).clamp_min(1e-12) * (1.0 / kMax);  // a product, as the kernel (and ATen on CUDA) compute it
  return {(f / scale.unsqueeze(1)).to(at::kFloat8_e4m3fn), scale};
}

Rows quantize_reference(const at::Tensor& a, const at::Tensor& c, bool gelu_c, bool gelu_a, const at::Tensor& a_scale) {
  auto rows = [](const at::Tensor& t, bool gelu, const at::Tensor& scale) {
    at::Tensor f = t.reshape({-1, t.size(-1)}).to(at::kFloat);
    if (scale.defined()) f = f * scale;
    return gelu ? at::gelu(f, "tanh") : f;
  };
  at::Tensor f = rows(a, gelu_a, a_scale);
  if (c.defined()) f = at::cat({f, rows(c, gelu_c, {})}, 1);
  at::Tensor scale = f.abs().amax(1).clamp_min(1e-12) * (1.0 / kMax);
  return {(f / scale.unsqueeze(1)).to(at::kFloat8_e4m3fn), scale, lead_of(a)};
}

namespace {
// [a | c] by rows (c may be undefined): the kernel where it runs, else the reference.
Rows quantize_rows(const at::Tensor& a, bool gelu_a, const at::Tensor& c, bool gelu_c, const at::Tensor& a_scale = {}) {
#if MMDIT_HAVE_FUSED_KERNELS
  Rows r;
  if (quantize_kernel(a, gelu_a, c, gelu_c, a_scale, r)) return r;
#endif
  return quantize_reference(a, c, gelu_c, gelu_a, a_scale);
}
}  // namespace

Rows quantize(const at::Tensor& x, bool gelu) { return quantize_rows(x, gelu, {}, false); }
Rows quantize(const at::Tensor& a, const at::Tensor& c, bool gelu_c) { return quantize_rows(a, false, c, gelu_c); }
Rows quantize(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& c, bool gelu_c) {
  return quantize_rows(a, false, c, gelu_c, a_scale);
}

Rows rows_of(const at::Tensor& x, const at::Tensor& scale) {
  at::Tensor values = x.contiguous();
  values = values.view({-1, values.size(-1)});
  return {values, scale.expand({values.size(0)}).contiguous(), lead_of(x)};
}

at::Tensor linear(const Rows& x, const Weight& w, const at::Tensor& bias, at::ScalarType out) {
  std::vector<int64_t> shape = x.lead;
  shape.push_back(w.values.size(0));
  at::Tensor y;
  if (x.values.is_cuda()) {
    std::optional<at::Tensor> b;
    if (bias.defined()) b = bias.scalar_type() == out ? bias : bias.to(out);
    y = at::_scaled_mm(x.values, w.values.t(), x.scale.unsqueeze(1), w.scale.unsqueeze(0), b, std::nullopt, out,
                       /*use_fast_accum=*/true);
  } else {
    at::Tensor xf = x.values.to(at::kFloat) * x.scale.unsqueeze(1);
    at::Tensor wf = w.values.to(at::kFloat) * w.scale.unsqueeze(1);
    y = at::linear(xf, wf, bias.defined() ? std::optional<at::Tensor>(bias.to(at::kFloat)) : std::nullopt).to(out);
  }
  return y.view(shape);
}

void release(at::Tensor& w) {
  at::NoGradGuard no_grad;
  w.set_(at::empty({0}, w.options()));
}

void require(const at::Device& device, at::ScalarType dtype) {
  if (!device.is_cuda()) throw UsageError("--fp8 needs a CUDA GPU (fp8 tensor cores); this run is on " + device.str());
  if (dtype != at::kBFloat16) throw UsageError("--fp8 needs --dtype bf16 (the row-wise fp8 GEMMs write bf16)");
#if MMDIT_HAVE_FUSED_KERNELS
  const auto* p = at::cuda::getDeviceProperties(device.has_index() ? device.index() : at::cuda::current_device());
  if (p->major < 9)
    throw UsageError("--fp8: " + device.str() + " (" + p->name + ", compute capability " + std::to_string(p->major) + "." +
           std::to_string(p->minor) + ") lacks the row-wise fp8 GEMMs (they need 9.0 or newer)");
#endif
}

void require_attention(bool fp8) {
  if (!fp8) throw UsageError("--fp8-attention needs --fp8 (the attention's fp8 output feeds the fp8 projections)");
  if (!fp8_attention_built())
    throw UsageError("--fp8-attention: this build has no cuDNN fp8 attention (the cudnn-frontend headers of "
                     "scripts/requirements.txt were not found when it was configured)");
}

void refuse_attention(const std::string& family) {
  throw UsageError("--fp8-attention: FLUX and CogVideoX only; not wired for " + family + " (head dim 64, where cuDNN's "
                   "fp8 attention measured 0.99x bf16 at SD3.5-large's shape: docs/BENCHMARKS.md)");
}

}  // namespace mmdit::fp8
