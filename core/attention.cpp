#include "core/attention.h"

namespace mmdit {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                     const std::optional<at::Tensor>& mask, double scale) {
  // at::scaled_dot_product_attention picks flash / cuDNN / memory-efficient kernels on CUDA and the
  // fused CPU kernel otherwise; same call diffusers' AttnProcessor2_0 makes, so numerics match.
  std::optional<double> s = scale > 0 ? std::optional<double>(scale) : std::nullopt;
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false, s);
}

}  // namespace mmdit
