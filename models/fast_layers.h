// Layers of the transformer blocks' fast path shared by the SD3, FLUX and CogVideoX blocks: one GEMM for a
// stream's Q, K and V, the feed-forward with its GELU fused, and --fp8 for a block's linear layers.
#pragma once
#include <torch/nn/module.h>

#include "models/fp8.h"
#include "models/layers.h"

namespace mmdit::nn {

// Q, K and V of a stream as one GEMM: the three layers' weights are fused into one tensor on first use (each
// layer's weight becomes a view of it, no second copy), and with --fp8 quantized once (each layer's fp8 weight
// a view of the fused one, so the plain path, which calls the layers, runs the same numbers).
struct QkvProjection {
  at::Tensor weight, bias;
  fp8::Weight q;
  // Fuses the layers' weights (once); false when a layer is missing.
  bool fuse(Linear& a, Linear& b, Linear& c);
  // x W^T + b for [q | k | v]; with fp8 weights, xq (x already quantized by rows) is used when given.
  at::Tensor operator()(const at::Tensor& x, const fp8::Rows* xq = nullptr) const;
  // --fp8: quantizes the fused weight and hands each layer its rows; frees the bf16 weights.
  void to_fp8(Linear& a, Linear& b, Linear& c);
};

// FeedForward's out(gelu_tanh(proj(x))) on the fast path: the GELU in the up GEMM's epilogue, or with fp8
// weights in the quantization of the down GEMM's input (the up projection's output is read once).
at::Tensor feed_forward_fused(FeedForward& ff, const at::Tensor& x);

// An output projection of the fp8 attention's e4m3 values (core/attention_fp8.h), [..., C] with one scale [1]:
// straight into the fp8 GEMM, or dequantized where the layer stayed bf16.
at::Tensor project_fp8(Linear& l, const at::Tensor& values, const at::Tensor& descale, at::ScalarType dtype);

// --fp8 for the linear layers under `block` except the adaLN modulation layers (any path part starting with
// "norm": one row per image, so fp8 saves nothing there, and their error would scale every token).
void linears_to_fp8(torch::nn::Module& block);

}  // namespace mmdit::nn
