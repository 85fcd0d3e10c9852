#include "models/t5_encoder.h"

#include <cmath>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/attention.h"
#include "core/errors.h"
#include "core/model_folder.h"
#include "core/weights.h"
#include "models/encoder_layers.h"

namespace mmdit {
namespace fs = std::filesystem;
namespace nn = torch::nn;

namespace {

template <class T>
T get(const nlohmann::json& j, const char* key, T fallback, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw FormatError(what + ": \"" + key + "\" has the wrong type");
  }
}

// transformers clamps f16 activations after each sub-layer so that inf does not propagate.
at::Tensor clamp_f16(const at::Tensor& h) {
  if (h.scalar_type() != at::kHalf) return h;
  const double mx = 65504.0;
  const double v = at::isinf(h).any().item<bool>() ? mx - 1000.0 : mx;
  return at::clamp(h, -v, v);
}

}  // namespace

T5Config T5Config::from_json(const nlohmann::json& j, const std::string& what) {
  T5Config c;
  c.vocab_size = get<int64_t>(j, "vocab_size", c.vocab_size, what);
  c.d_model = get<int64_t>(j, "d_model", c.d_model, what);
  c.d_kv = get<int64_t>(j, "d_kv", c.d_kv, what);
  c.d_ff = get<int64_t>(j, "d_ff", c.d_ff, what);
  c.num_layers = get<int64_t>(j, "num_layers", c.num_layers, what);
  c.num_heads = get<int64_t>(j, "num_heads", c.num_heads, what);
  c.relative_attention_num_buckets =
      get<int64_t>(j, "relative_attention_num_buckets", c.relative_attention_num_buckets, what);
  c.relative_attention_max_distance =
      get<int64_t>(j, "relative_attention_max_distance", c.relative_attention_max_distance, what);
  c.layer_norm_epsilon = get<double>(j, "layer_norm_epsilon", c.layer_norm_epsilon, what);
  // As T5Config.__init__: "gated-ACT" or "ACT"; gated-gelu means gelu_new.
  const std::string ffp = get<std::string>(j, "feed_forward_proj", "relu", what);
  const auto dash = ffp.rfind('-');
  c.is_gated_act = ffp.compare(0, 6, "gated-") == 0;
  c.dense_act_fn = dash == std::string::npos ? ffp : ffp.substr(dash + 1);
  if ((c.is_gated_act && dash != 5) || (!c.is_gated_act && dash != std::string::npos))
    throw FormatError(what + ": feed_forward_proj \"" + ffp + "\" is not 'ACT' or 'gated-ACT'");
  if (ffp == "gated-gelu") c.dense_act_fn = "gelu_new";
  if (c.dense_act_fn != "gelu_new" && c.dense_act_fn != "gelu" && c.dense_act_fn != "relu")
    throw FormatError(what + ": T5 activation \"" + c.dense_act_fn + "\" is not supported (gelu_new, gelu, relu)");
  if (c.d_model <= 0 || c.d_kv <= 0 || c.d_ff <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.vocab_size <= 0 ||
      c.relative_attention_num_buckets < 4 || c.relative_attention_max_distance <= c.relative_attention_num_buckets / 4)
    throw FormatError(what + ": T5 sizes are invalid");
  return c;
}

T5Config T5Config::t5_xxl() { return T5Config{}; }

namespace t5_detail {

struct LayerNorm : nn::Module {
  LayerNorm(int64_t n, double eps, const at::TensorOptions& o) : eps(eps) {
    weight = register_parameter("weight", at::empty({n}, o), /*requires_grad=*/false);
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor variance = x.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
    at::Tensor h = x * at::rsqrt(variance + eps);
    if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) h = h.to(weight.scalar_type());
    return weight * h;
  }
  double eps;
  at::Tensor weight;
};

struct Attention : nn::Module {
  Attention(const T5Config& c, bool has_bias, const at::TensorOptions& opts) : heads(c.num_heads) {
    const auto inner = c.num_heads * c.d_kv;
    auto lin = [&](int64_t i, int64_t o) { return std::make_shared<layers::Linear>(i, o, false, opts); };
    q = register_module("q", lin(c.d_model, inner));
    k = register_module("k", lin(c.d_model, inner));
    v = register_module("v", lin(c.d_model, inner));
    o = register_module("o", lin(inner, c.d_model));
    if (has_bias)
      relative_attention_bias =
          register_module("relative_attention_bias",
                          std::make_shared<layers::Embedding>(c.relative_attention_num_buckets, c.num_heads, opts));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& bias, int layer) {
    const auto B = x.size(0), T = x.size(1);
    auto split = [&](const at::Tensor& t) { return t.view({B, T, heads, -1}).transpose(1, 2); };
    AttentionDesc desc;
    desc.model = "t5";
    desc.layer = layer;
    desc.heads = heads;
    desc.text = {0, T};
    // T5 folds 1/sqrt(d) into its weights: scale 1 cancels SDPA's default.
    at::Tensor out = attention(split(q->forward(x)), split(k->forward(x)), split(v->forward(x)), desc, bias, /*scale=*/1.0);
    return o->forward(out.transpose(1, 2).reshape({B, T, -1}));
  }
  int64_t heads;
  std::shared_ptr<layers::Linear> q, k, v, o;
  std::shared_ptr<layers::Embedding> relative_attention_bias;
};

struct SelfAttentionLayer : nn::Module {
  SelfAttentionLayer(const T5Config& c, bool has_bias, const at::TensorOptions& o) {
    SelfAttention = register_module("SelfAttention", std::make_shared<Attention>(c, has_bias, o));
    layer_norm = register_module("layer_norm", std::make_shared<LayerNorm>(c.d_model, c.layer_norm_epsilon, o));
  }
  std::shared_ptr<Attention> SelfAttention;
  std::shared_ptr<LayerNorm> layer_norm;
};

struct DenseActDense : nn::Module {
  DenseActDense(const T5Config& c, const at::TensorOptions& opts) : gated(c.is_gated_act), act(c.dense_act_fn) {
    auto lin = [&](int64_t i, int64_t o) { return std::make_shared<layers::Linear>(i, o, false, opts); };
    if (gated) {
      wi_0 = register_module("wi_0", lin(c.d_model, c.d_ff));
      wi_1 = register_module("wi_1", lin(c.d_model, c.d_ff));
    } else {
      wi = register_module("wi", lin(c.d_model, c.d_ff));
    }
    wo = register_module("wo", lin(c.d_ff, c.d_model));
  }
  at::Tensor activation(const at::Tensor& x) const {
    if (act == "gelu_new") return at::gelu(x, "tanh");
    if (act == "gelu") return at::gelu(x);
    return at::relu(x);
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = gated ? activation(wi_0->forward(x)) * wi_1->forward(x) : activation(wi->forward(x));
    // wo may be kept in float32 (f16 models, as transformers' _keep_in_fp32_modules).
    if (h.scalar_type() != wo->weight.scalar_type()) h = h.to(wo->weight.scalar_type());
    return wo->forward(h);
  }
  bool gated;
  std::string act;
  std::shared_ptr<layers::Linear> wi_0, wi_1, wi, wo;
};

struct FFLayer : nn::Module {
  FFLayer(const T5Config& c, const at::TensorOptions& o) {
    DenseReluDense = register_module("DenseReluDense", std::make_shared<DenseActDense>(c, o));
    layer_norm = register_module("layer_norm", std::make_shared<LayerNorm>(c.d_model, c.layer_norm_epsilon, o));
  }
  std::shared_ptr<DenseActDense> DenseReluDense;
  std::shared_ptr<LayerNorm> layer_norm;
};

struct Block : nn::Module {
  Block(const T5Config& c, bool has_bias, const at::TensorOptions& o) {
    layer = register_module("layer", nn::ModuleList());
    attn = std::make_shared<SelfAttentionLayer>(c, has_bias, o);
    ff = std::make_shared<FFLayer>(c, o);
    layer->push_back(attn);
    layer->push_back(ff);
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& bias, int index) {
    h = h + attn->SelfAttention->forward(attn->layer_norm->forward(h), bias, index);
    h = clamp_f16(h);
    h = h + ff->DenseReluDense->forward(ff->layer_norm->forward(h));
    return clamp_f16(h);
  }
  nn::ModuleList layer{nullptr};
  std::shared_ptr<SelfAttentionLayer> attn;
  std::shared_ptr<FFLayer> ff;
};

struct Stack : nn::Module {
  Stack(const T5Config& c, const at::TensorOptions& o) {
    block = register_module("block", nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) block->push_back(std::make_shared<Block>(c, i == 0, o));
    final_layer_norm = register_module("final_layer_norm", std::make_shared<LayerNorm>(c.d_model, c.layer_norm_epsilon, o));
  }
  Block& at(size_t i) { return *block[i]->as<Block>(); }
  nn::ModuleList block{nullptr};
  std::shared_ptr<LayerNorm> final_layer_norm;
};

}  // namespace t5_detail

T5EncoderModel::T5EncoderModel(const T5Config& config, const at::TensorOptions& options)
    : config_(config), dtype_(options.dtype().toScalarType()) {
  shared_ = register_module("shared", std::make_shared<layers::Embedding>(config.vocab_size, config.d_model, options));
  encoder_ = register_module("encoder", std::make_shared<t5_detail::Stack>(config, options));
  if (dtype_ == at::kHalf)  // transformers keeps "wo" in float32 for float16 (T5 overflows otherwise)
    for (size_t i = 0; i < encoder_->block->size(); ++i) {
      auto& wo = encoder_->at(i).ff->DenseReluDense->wo;
      wo->weight.set_data(wo->weight.to(at::kFloat));
    }
}

at::Device T5EncoderModel::device() const { return encoder_->final_layer_norm->weight.device(); }
at::ScalarType T5EncoderModel::dtype() const { return dtype_; }

at::Tensor T5EncoderModel::relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets,
                                                    int64_t max_distance) {
  // Same tensor ops in the same order as transformers (float32 log), so bucket edges agree exactly.
  num_buckets /= 2;
  at::Tensor buckets = relative_position.gt(0).to(at::kLong) * num_buckets;
  at::Tensor rp = at::abs(relative_position);
  const int64_t max_exact = num_buckets / 2;
  at::Tensor is_small = rp.lt(max_exact);
  at::Tensor large = max_exact + (at::log(rp.to(at::kFloat) / static_cast<double>(max_exact)) /
                                  std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                                  static_cast<double>(num_buckets - max_exact))
                                     .to(at::kLong);
  large = at::minimum(large, at::full_like(large, num_buckets - 1));
  return buckets + at::where(is_small, rp, large);
}

at::Tensor T5EncoderModel::position_bias(int64_t q_len, int64_t k_len) {
  auto& emb = encoder_->at(0).attn->SelfAttention->relative_attention_bias;
  const auto opts = at::TensorOptions().dtype(at::kLong).device(emb->weight.device());
  at::Tensor rel = at::arange(k_len, opts).unsqueeze(0) - at::arange(q_len, opts).unsqueeze(1);
  at::Tensor b = relative_position_bucket(rel, config_.relative_attention_num_buckets,
                                          config_.relative_attention_max_distance);
  return emb->forward(b).permute({2, 0, 1}).unsqueeze(0);
}

std::shared_ptr<T5EncoderModel> T5EncoderModel::load(const WeightStore& store0, const T5Config& config,
                                                     at::Device device, at::ScalarType dtype) {
  const bool has_shared = store0.has("shared.weight");
  WeightStore store = store0.renamed([&](const std::string& n) -> std::optional<std::string> {
    if (n.compare(0, 8, "decoder.") == 0 || n.compare(0, 8, "lm_head.") == 0) return std::nullopt;
    if (n == "encoder.embed_tokens.weight") return has_shared ? std::nullopt : std::optional<std::string>("shared.weight");
    return n;
  });
  if (!store.has("shared.weight") && !store.is_random())
    throw FormatError("T5 encoder weights lack shared.weight (or encoder.embed_tokens.weight)" +
                      std::string(store.size() ? "" : ": no tensors found"));
  auto model = std::make_shared<T5EncoderModel>(config, at::TensorOptions().device(device).dtype(dtype));
  load_module(*model, store);
  model->eval();
  return model;
}

std::shared_ptr<T5EncoderModel> T5EncoderModel::load(const fs::path& dir, at::Device device, at::ScalarType dtype) {
  auto config = T5Config::from_json(read_json_object(dir / "config.json"), (dir / "config.json").string());
  return load(WeightStore::open(dir), config, device, dtype);
}

at::Tensor T5EncoderModel::forward(const at::Tensor& input_ids0, const std::optional<at::Tensor>& attention_mask) {
  torch::NoGradGuard no_grad;
  if (input_ids0.dim() != 2 || input_ids0.is_floating_point() || input_ids0.size(1) == 0)
    throw ShapeError("T5 input_ids must be a non-empty [batch, tokens] integer tensor");
  const auto B = input_ids0.size(0), T = input_ids0.size(1);
  const auto dev = device();
  at::Tensor ids = input_ids0.to(dev, at::kLong);
  at::Tensor h = shared_->forward(ids);
  at::Tensor bias = position_bias(T, T);  // [1, heads, T, T] additive
  if (attention_mask) {
    if (attention_mask->sizes() != ids.sizes()) throw ShapeError("T5 attention_mask must have input_ids' shape");
    at::Tensor keep = attention_mask->to(dev).ne(0).view({B, 1, 1, T});
    const double lowest = bias.scalar_type() == at::kHalf       ? -65504.0
                          : bias.scalar_type() == at::kBFloat16 ? -3.3895313892515355e38
                                                                : double(std::numeric_limits<float>::lowest());
    bias = at::where(keep, bias, at::scalar_tensor(lowest, bias.options()));
  }
  for (size_t i = 0; i < encoder_->block->size(); ++i) h = encoder_->at(i).forward(h, bias, int(i));
  return encoder_->final_layer_norm->forward(h);
}

}  // namespace mmdit
