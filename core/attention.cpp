#include "core/attention.h"

#include <cmath>
#include <limits>

#include <ATen/Context.h>
#include <ATen/SDPBackend.h>

#include "controls/control.h"
#include "core/errors.h"
#include "core/parallel.h"

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

namespace {

std::optional<double> scale_arg(double scale) { return scale > 0 ? std::optional<double>(scale) : std::nullopt; }

// log-sum-exp of q k^T * scale per query row (over the keys a bool mask allows), float32, in chunks of rows:
// O(chunk x S) memory.
at::Tensor lse_in_chunks(const at::Tensor& q, const at::Tensor& k, double scale, const std::optional<at::Tensor>& mask) {
  const double s = scale > 0 ? scale : 1.0 / std::sqrt(double(q.size(-1)));
  const int64_t rows = q.size(2), chunk = 1024;
  at::Tensor kt = k.to(at::kFloat).transpose(-2, -1);
  std::vector<at::Tensor> parts;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t n = std::min(chunk, rows - r);
    at::Tensor scores = at::matmul(q.narrow(2, r, n).to(at::kFloat), kt) * s;
    if (mask) {
      at::Tensor m = mask->size(2) == 1 ? *mask : mask->narrow(2, r, n);
      scores = scores.masked_fill(m.logical_not(), -std::numeric_limits<float>::infinity());
    }
    parts.push_back(at::logsumexp(scores, -1));
  }
  return at::cat(parts, 2);
}

// Backends report the LSE as [B, H, S], [B, H, S, 1] or padded along S: the first S values per row.
at::Tensor lse_rows(const at::Tensor& lse, const at::Tensor& q) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2);
  at::Tensor l = lse.dim() == 4 ? lse.squeeze(-1) : lse;
  if (l.dim() != 3 || l.size(0) != B || l.size(1) != H || l.size(2) < S) return at::Tensor();
  return l.narrow(2, 0, S).to(at::kFloat);
}

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                     const std::optional<at::Tensor>& mask, double scale) {
  // Ulysses (core/parallel.h): this rank's tokens -> every token of this rank's heads, and back.
  if (!mask && ulysses_applies(desc)) return ulysses_attention(q, k, v, desc, scale);
  if (desc.controls && !mask && touched(desc)) return controlled_attention(q, k, v, desc, scale);
  // at::scaled_dot_product_attention picks flash / cuDNN / memory-efficient kernels on CUDA and the
  // fused CPU kernel otherwise; same call diffusers' AttnProcessor2_0 makes, so numerics match.
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false, scale_arg(scale));
}

std::pair<at::Tensor, at::Tensor> attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale, const std::optional<at::Tensor>& mask) {
  const auto s = scale_arg(scale);
  if (mask)
    return {at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, s), lse_in_chunks(q, k, scale, mask)};
  const auto choice = static_cast<at::SDPBackend>(at::_fused_sdp_choice(q, k, v, std::nullopt, 0.0, false, s));
  at::Tensor out, lse;
  // The private ops at::scaled_dot_product_attention itself dispatches to, asked for the LSE as well: the
  // output is the plain path's, bit for bit.
  if (choice == at::SDPBackend::flash_attention && q.is_cpu()) {
    std::tie(out, lse) = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, false, std::nullopt, s);
  } else if (choice == at::SDPBackend::flash_attention) {
    auto r = at::_scaled_dot_product_flash_attention(q, k, v, 0.0, false, false, s);
    out = std::get<0>(r), lse = std::get<1>(r);
  } else if (choice == at::SDPBackend::efficient_attention) {
    auto r = at::_scaled_dot_product_efficient_attention(q, k, v, std::nullopt, true, 0.0, false, s);
    out = std::get<0>(r), lse = std::get<1>(r);
  } else if (choice == at::SDPBackend::cudnn_attention) {
    auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, std::nullopt, true, 0.0, false, false, s);
    out = std::get<0>(r), lse = std::get<1>(r);
  } else {
    out = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, s);
  }
  at::Tensor rows = lse.defined() ? lse_rows(lse, q) : at::Tensor();
  if (!rows.defined()) rows = lse_in_chunks(q, k, scale, std::nullopt);
  return {out, rows};
}

}  // namespace mmdit
