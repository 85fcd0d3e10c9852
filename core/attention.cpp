#include "core/attention.h"

#include <ATen/Context.h>

#include "core/errors.h"

namespace mmdit {

void set_attention_backend(const std::string& name) {
  auto& ctx = at::globalContext();
  if (name != "auto" && name != "flash" && name != "cudnn" && name != "efficient" && name != "math")
    throw UsageError("--attention: expected auto, flash, cudnn, efficient or math, got '" + name + "'");
  const bool all = name == "auto";
  ctx.setSDPUseFlash(all || name == "flash");
  ctx.setSDPUseCuDNN(all || name == "cudnn");
  ctx.setSDPUseMemEfficient(all || name == "efficient");
  // math stays allowed as the fallback for shapes or devices the fused kernels do not take (CPU).
  ctx.setSDPUseMath(true);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                     const std::optional<at::Tensor>& mask, double scale) {
  // at::scaled_dot_product_attention picks flash / cuDNN / memory-efficient kernels on CUDA and the
  // fused CPU kernel otherwise; same call diffusers' AttnProcessor2_0 makes, so numerics match.
  std::optional<double> s = scale > 0 ? std::optional<double>(scale) : std::nullopt;
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false, s);
}

}  // namespace mmdit
