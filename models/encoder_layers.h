// Weight-holding layers for networks whose weights always come from a checkpoint: parameters are created
// uninitialized (at::empty) directly in the target dtype and device, so building T5-XXL does not spend
// tens of seconds and 19 GB of float32 RAM on a random init that loading overwrites anyway.
// Registered names match torch.nn's (weight, bias).
#pragma once
#include <torch/nn/module.h>

namespace mmdit::layers {

struct Linear : torch::nn::Module {
  Linear(int64_t in, int64_t out, bool bias, const at::TensorOptions& opts) {
    weight = register_parameter("weight", at::empty({out, in}, opts), /*requires_grad=*/false);
    if (bias) this->bias = register_parameter("bias", at::empty({out}, opts), /*requires_grad=*/false);
  }
  at::Tensor forward(const at::Tensor& x) const { return at::linear(x, weight, bias); }
  at::Tensor weight, bias;
};

struct Embedding : torch::nn::Module {
  Embedding(int64_t num, int64_t dim, const at::TensorOptions& opts) {
    weight = register_parameter("weight", at::empty({num, dim}, opts), /*requires_grad=*/false);
  }
  at::Tensor forward(const at::Tensor& ids) const { return at::embedding(weight, ids); }
  at::Tensor weight;
};

struct LayerNorm : torch::nn::Module {
  LayerNorm(int64_t n, double eps, const at::TensorOptions& opts) : n(n), eps(eps) {
    weight = register_parameter("weight", at::empty({n}, opts), /*requires_grad=*/false);
    bias = register_parameter("bias", at::empty({n}, opts), /*requires_grad=*/false);
  }
  at::Tensor forward(const at::Tensor& x) const { return at::layer_norm(x, {n}, weight, bias, eps); }
  int64_t n;
  double eps;
  at::Tensor weight, bias;
};

}  // namespace mmdit::layers
