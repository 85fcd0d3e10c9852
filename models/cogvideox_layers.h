// Parameter-holding layers the CogVideoX networks add to models/layers.h (same conventions: parameters
// allocated uninitialized in nn::param_dtype(), names equal PyTorch's).
#pragma once
#include <array>

#include "models/layers.h"

namespace mmdit::nn {

// nn.LayerNorm(dim, eps, elementwise_affine=True).
struct AffineLayerNormImpl : torch::nn::Module {
  AffineLayerNormImpl(int64_t dim, double eps) : eps(eps) {
    weight = register_parameter("weight", empty_param({dim}), false);
    bias = register_parameter("bias", empty_param({dim}), false);
  }
  at::Tensor forward(const at::Tensor& x) { return at::layer_norm(x, {x.size(-1)}, weight, bias, eps); }
  at::Tensor weight, bias;
  double eps;
};
TORCH_MODULE(AffineLayerNorm);

// nn.Conv3d with a cubic kernel (kt, k, k), stride (st, 1, 1) or uniform, padding (pt, ph, pw).
struct Conv3dImpl : torch::nn::Module {
  Conv3dImpl(int64_t in, int64_t out, std::array<int64_t, 3> kernel, std::array<int64_t, 3> stride = {1, 1, 1},
             std::array<int64_t, 3> padding = {0, 0, 0}, bool with_bias = true)
      : kernel(kernel), stride(stride), padding(padding) {
    weight = register_parameter("weight", empty_param({out, in, kernel[0], kernel[1], kernel[2]}), false);
    if (with_bias) bias = register_parameter("bias", empty_param({out}), false);
  }
  at::Tensor forward(const at::Tensor& x) {
    return at::conv3d(x, weight, opt(bias), {stride[0], stride[1], stride[2]}, {padding[0], padding[1], padding[2]});
  }
  at::Tensor weight, bias;
  std::array<int64_t, 3> kernel, stride, padding;
};
TORCH_MODULE(Conv3d);

}  // namespace mmdit::nn
