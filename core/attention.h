// The one attention function every model calls. The descriptor says where the call sits (model, layer,
// denoising step) and which token ranges of the joint sequence are image/video and text, so attention
// controls (regional masks, key/value injection, head perturbation) can plug in here and only here.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/ATen.h>

namespace mmdit {

struct TokenRange {
  int64_t begin = 0;
  int64_t end = 0;  // exclusive
  int64_t size() const { return end - begin; }
};

struct AttentionDesc {
  const char* model = "";  // "sd3", "flux", "cogvideox", "clip", "t5"
  int layer = -1;          // block index within the network
  int step = -1;           // denoising step index, -1 outside the sampler loop
  int64_t heads = 0;
  TokenRange image;        // image/video tokens of the joint sequence (empty for text encoders)
  TokenRange text;         // text tokens of the joint sequence
};

// Which fused kernel at::scaled_dot_product_attention may use on CUDA: "auto" (PyTorch's own order,
// what diffusers eager gets), "flash", "cudnn", "efficient" or "math". Throws UsageError otherwise.
void set_attention_backend(const std::string& name);

// q, k, v: [batch, heads, tokens, head_dim]. mask: optional, broadcastable to
// [batch, heads, q_tokens, k_tokens], bool (true = attend) or additive float. scale: 0 = 1/sqrt(head_dim).
// Returns [batch, heads, tokens, head_dim].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                     const std::optional<at::Tensor>& mask = std::nullopt, double scale = 0.0);

}  // namespace mmdit
