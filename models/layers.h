// Minimal parameter-holding layers shared by the networks. Unlike torch::nn's, they allocate their
// parameters uninitialized (at::empty: no random init, pages untouched until loaded), since every
// parameter is loaded from a checkpoint; parameter names equal PyTorch's ("weight", "bias").
#pragma once
#include <cmath>
#include <optional>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "models/fp8.h"

namespace mmdit::nn {

// dtype for parameters the layers below allocate; set with ParamDtypeGuard while constructing a network
// so that loading a bf16 checkpoint into a bf16 model copies nothing.
inline at::ScalarType& param_dtype() {
  static thread_local at::ScalarType t = at::kFloat;
  return t;
}
struct ParamDtypeGuard {
  explicit ParamDtypeGuard(at::ScalarType t) : saved(param_dtype()) { param_dtype() = t; }
  ~ParamDtypeGuard() { param_dtype() = saved; }
  at::ScalarType saved;
};
inline at::Tensor empty_param(at::IntArrayRef shape) { return at::empty(shape, at::TensorOptions().dtype(param_dtype())); }

// Constructs Model(config) with `dtype` parameters, fills them with `load(model)`, then moves the model to
// `device` in eval mode: the one way every network is built from a checkpoint.
template <class Model, class Config, class Load>
std::shared_ptr<Model> build_model(const Config& config, at::Device device, at::ScalarType dtype, Load&& load) {
  std::shared_ptr<Model> model;
  {
    ParamDtypeGuard guard(dtype);
    model = std::make_shared<Model>(config);
  }
  load(*model);
  model->to(device);
  model->eval();
  return model;
}

inline std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out, bool with_bias = true) {
    weight = register_parameter("weight", empty_param({out, in}), false);
    if (with_bias) bias = register_parameter("bias", empty_param({out}), false);
  }
  at::Tensor forward(const at::Tensor& x) {
    return q.defined() ? fp8::linear(x, q, bias) : at::linear(x, weight, opt(bias));
  }
  // --fp8 (models/fp8.h): the weight becomes e4m3 and its bf16 copy is freed. Sizes the fp8 GEMM cannot take
  // stay as they are; a layer already quantized (as part of a fused projection) is left alone.
  void to_fp8() {
    if (q.defined() || !fp8::fits(weight)) return;
    q = fp8::quantize_weight(weight);
    fp8::release(weight);
  }
  at::Tensor weight, bias;
  fp8::Weight q;  // set by to_fp8()
};
TORCH_MODULE(Linear);

struct Conv2dImpl : torch::nn::Module {
  Conv2dImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0, bool with_bias = true)
      : stride(stride), padding(padding) {
    weight = register_parameter("weight", empty_param({out, in, kernel, kernel}), false);
    if (with_bias) bias = register_parameter("bias", empty_param({out}), false);
  }
  at::Tensor forward(const at::Tensor& x) { return at::conv2d(x, weight, opt(bias), {stride, stride}, {padding, padding}); }
  at::Tensor weight, bias;
  int64_t stride, padding;
};
TORCH_MODULE(Conv2d);

struct GroupNormImpl : torch::nn::Module {
  GroupNormImpl(int64_t groups, int64_t channels, double eps) : groups(groups), eps(eps) {
    weight = register_parameter("weight", empty_param({channels}), false);
    bias = register_parameter("bias", empty_param({channels}), false);
  }
  at::Tensor forward(const at::Tensor& x) { return at::group_norm(x, groups, weight, bias, eps); }
  at::Tensor weight, bias;
  int64_t groups;
  double eps;
};
TORCH_MODULE(GroupNorm);

// diffusers' RMSNorm: statistics in float32, result in the weight's dtype when that is half/bf16.
struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps) : eps(eps) { weight = register_parameter("weight", empty_param({dim}), false); }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor var = x.to(at::kFloat).pow(2).mean({-1}, /*keepdim=*/true);
    at::Tensor y = x * at::rsqrt(var + eps);
    if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) y = y.to(weight.scalar_type());
    return y * weight;
  }
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// LayerNorm without affine parameters (nn.LayerNorm(elementwise_affine=False)).
inline at::Tensor layer_norm(const at::Tensor& x, double eps) { return at::layer_norm(x, {x.size(-1)}, {}, {}, eps); }

// --- diffusers building blocks shared by the MM-DiTs -----------------------------------------------

// FeedForward(activation_fn="gelu-approximate"): net.0.proj, GELU(tanh), net.2; net.1 (dropout) holds
// nothing but keeps the numbering of diffusers' names.
struct GeluProj : torch::nn::Module {
  GeluProj(int64_t in, int64_t out) { proj = register_module("proj", Linear(in, out)); }
  Linear proj{nullptr};
};
struct NoParams : torch::nn::Module {};
struct FeedForward : torch::nn::Module {
  explicit FeedForward(int64_t dim) {
    net = register_module("net", torch::nn::ModuleList());
    gelu = std::make_shared<GeluProj>(dim, 4 * dim);
    out = Linear(4 * dim, dim);
    net->push_back(gelu);
    net->push_back(std::make_shared<NoParams>());
    net->push_back(out.ptr());
  }
  at::Tensor forward(const at::Tensor& x) { return out(at::gelu(gelu->proj(x), "tanh")); }
  torch::nn::ModuleList net{nullptr};
  std::shared_ptr<GeluProj> gelu;
  Linear out{nullptr};
};

// AdaLayerNormZero-style conditioning: silu -> linear -> `chunks` equal parts (6 for AdaLayerNormZero,
// 9 for SD3.5's AdaLayerNormZeroX, 3 for FLUX's single blocks).
struct AdaNormZero : torch::nn::Module {
  AdaNormZero(int64_t dim, int64_t chunks) : chunks(chunks) { linear = register_module("linear", Linear(dim, chunks * dim)); }
  std::vector<at::Tensor> forward(const at::Tensor& emb) { return linear(at::silu(emb)).chunk(chunks, 1); }
  Linear linear{nullptr};
  int64_t chunks;
};

// diffusers' get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift), in float32.
inline at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, bool flip = true, int64_t shift = 0) {
  const int64_t half = dim / 2;
  at::Tensor exponent = at::arange(0, half, at::TensorOptions().dtype(at::kFloat).device(t.device())) * (-std::log(10000.0));
  exponent = exponent / double(half - shift);
  at::Tensor emb = t.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);
  emb = flip ? at::cat({at::cos(emb), at::sin(emb)}, -1) : at::cat({at::sin(emb), at::cos(emb)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

// diffusers' TimestepEmbedding / PixArtAlphaTextProjection(act silu): linear_1, SiLU, linear_2.
struct TwoLinear : torch::nn::Module {
  TwoLinear(int64_t in, int64_t hidden) {
    linear_1 = register_module("linear_1", Linear(in, hidden));
    linear_2 = register_module("linear_2", Linear(hidden, hidden));
  }
  at::Tensor forward(const at::Tensor& x) { return linear_2(at::silu(linear_1(x))); }
  Linear linear_1{nullptr}, linear_2{nullptr};
};

// x * (1 + scale) + shift with per-sample [B, dim] modulation over the token axis.
inline at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

}  // namespace mmdit::nn
