#include "models/fast_layers.h"

#include "models/fused_ops.h"

namespace mmdit::nn {

bool QkvProjection::fuse(Linear& a, Linear& b, Linear& c) {
  if (weight.defined()) return true;
  if (a.is_empty() || b.is_empty() || c.is_empty()) return false;
  std::tie(weight, bias) = fused::fuse_linears(a, b, c);
  return weight.defined();
}

at::Tensor QkvProjection::operator()(const at::Tensor& x, const fp8::Rows* xq) const {
  if (!q.defined()) return at::linear(x, weight, opt(bias));
  return xq ? fp8::linear(*xq, q, bias, x.scalar_type()) : fp8::linear(x, q, bias);
}

void QkvProjection::to_fp8(Linear& a, Linear& b, Linear& c) {
  if (q.defined() || !fuse(a, b, c) || !fp8::fits(weight)) return;
  q = fp8::quantize_weight(weight);
  int64_t row = 0;
  for (Linear* l : {&a, &b, &c}) {
    const int64_t n = (*l)->weight.size(0);
    (*l)->q = q.rows(row, n);
    row += n;
    fp8::release((*l)->weight);
  }
  fp8::release(weight);
}

at::Tensor feed_forward_fused(FeedForward& ff, const at::Tensor& x) {
  Linear& up = ff.gelu->proj;
  if (up->q.defined() && ff.out->q.defined()) {
    at::Tensor h = fp8::linear(x, up->q, up->bias);
    return fp8::linear(fp8::quantize(h, /*gelu=*/true), ff.out->q, ff.out->bias, x.scalar_type());
  }
  if (up->q.defined()) return ff.out(at::gelu(up(x), "tanh"));  // only one of the two in fp8 (sizes)
  return ff.out(fused::linear_gelu(x, up->weight, up->bias));
}

at::Tensor project_fp8(Linear& l, const at::Tensor& values, const at::Tensor& descale, at::ScalarType dtype) {
  if (l->q.defined()) return fp8::linear(fp8::rows_of(values, descale), l->q, l->bias, dtype);
  return l((values.to(at::kFloat) * descale).to(dtype));
}

void linears_to_fp8(torch::nn::Module& block) {
  for (const auto& item : block.named_modules("", /*include_self=*/false)) {
    auto* linear = item.value()->as<LinearImpl>();
    if (!linear) continue;
    const std::string& name = item.key();
    const bool adaln = name.rfind("norm", 0) == 0 || name.find(".norm") != std::string::npos;
    if (!adaln) linear->to_fp8();
  }
}

}  // namespace mmdit::nn
