// The one attention function every model calls. The descriptor says where the call sits (model, layer) and
// which token ranges of the joint sequence are image/video and text; `controls` carries the attention controls
// of this forward pass (controls/control.h), which plug in here and at the block hook only. A call that no
// control touches runs the plain fused kernel.
#pragma once
#include <cstdint>
#include <string>
#include <utility>

#include <ATen/ATen.h>

namespace mmdit {

struct TokenRange {
  int64_t begin = 0;
  int64_t end = 0;  // exclusive
  int64_t size() const { return end - begin; }
};

struct ControlContext;

struct AttentionDesc {
  const char* model = "";  // "sd3", "flux", "cogvideox", "clip", "t5"
  int layer = -1;          // block index in call order (FLUX: double blocks, then single blocks)
  int sub = 0;             // 0: the block's joint attention; 1: SD3.5-medium's second, image-only attention
  int64_t heads = 0;
  TokenRange image;        // image/video tokens of the joint sequence (empty for text encoders)
  TokenRange text;         // text tokens of the joint sequence
  const ControlContext* controls = nullptr;  // this forward pass's attention controls, or none
};

// Which fused kernel at::scaled_dot_product_attention may use on CUDA: "auto" (PyTorch's own order,
// what diffusers eager gets), "flash", "cudnn", "efficient" or "math". Throws UsageError otherwise.
void set_attention_backend(const std::string& name);

// q, k, v: [batch, heads, tokens, head_dim]. mask: optional, broadcastable to
// [batch, heads, q_tokens, k_tokens], bool (true = attend) or additive float. scale: 0 = 1/sqrt(head_dim).
// Returns [batch, heads, tokens, head_dim].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                     const std::optional<at::Tensor>& mask = std::nullopt, double scale = 0.0);

// The same kernel as attention() picks for these inputs, also returning the log-sum-exp of each query row's
// scaled scores, [B, H, S] float32: {output, lse}. With a mask, or for a math-kernel fallback, the LSE is
// computed in chunks of query rows, never as one S x S matrix of scores.
std::pair<at::Tensor, at::Tensor> attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale = 0.0,
                                                     const std::optional<at::Tensor>& mask = std::nullopt);

}  // namespace mmdit
