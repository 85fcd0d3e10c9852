// Opt-in fp8 attention (--fp8-attention, with --fp8; FLUX and CogVideoX): cuDNN's fp8 flash attention (the cudnn-frontend graph API,
// PyPI nvidia-cudnn-frontend headers, torch's libcudnn) on Q, K and V quantized per tensor to e4m3. On Hopper its
// output is e4m3 too, with one scale, which the fp8 output projection takes as it is. Lossy: docs/BENCHMARKS.md
// reports the PSNR against bf16. Like attention(), a call that an attention control touches, or that Ulysses
// splits, is not taken here: the caller then runs attention().
#pragma once
#include <optional>

#include <ATen/ATen.h>

#include "core/attention.h"

namespace mmdit {

// o ~= values * descale: values [B, N, H * D] e4m3 (token-major, heads side by side, as the projections read
// it), descale [1] float32.
struct Fp8Attention {
  at::Tensor values, descale;
};

// q, k, v: [B, H, N, D] views of contiguous [B, N, H, D] bf16 tensors (the fast path's joint buffers), scale
// 1/sqrt(D). nullopt where this call cannot run in fp8: a control touches it, Ulysses splits it, not CUDA or not
// bf16, other layouts, cuDNN without the fp8 kernel for this shape, or a build without the cudnn-frontend headers.
std::optional<Fp8Attention> attention_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const AttentionDesc& desc);

// Whether this build has the cudnn-frontend (the flag is refused without it).
bool fp8_attention_built();

// What the kernel computes, with ATen ops in float32: Q, K, V quantized per tensor, the softmax's probabilities
// quantized as p * 448 (cuDNN's scale_s), o quantized with 448 / (1.125 amax(V)). For tests.
Fp8Attention attention_fp8_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace mmdit
