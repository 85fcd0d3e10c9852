#include "models/clip_text.h"

#include <fstream>

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

}  // namespace

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& j0, const std::string& what) {
  const nlohmann::json& j = (j0.contains("text_config") && j0["text_config"].is_object()) ? j0["text_config"] : j0;
  ClipTextConfig c;
  c.vocab_size = get<int64_t>(j, "vocab_size", c.vocab_size, what);
  c.hidden_size = get<int64_t>(j, "hidden_size", c.hidden_size, what);
  c.intermediate_size = get<int64_t>(j, "intermediate_size", c.intermediate_size, what);
  c.num_attention_heads = get<int64_t>(j, "num_attention_heads", c.num_attention_heads, what);
  c.num_hidden_layers = get<int64_t>(j, "num_hidden_layers", c.num_hidden_layers, what);
  c.max_position_embeddings = get<int64_t>(j, "max_position_embeddings", c.max_position_embeddings, what);
  c.projection_dim = get<int64_t>(j, "projection_dim", c.projection_dim, what);
  c.eos_token_id = get<int64_t>(j, "eos_token_id", c.eos_token_id, what);
  c.hidden_act = get<std::string>(j, "hidden_act", c.hidden_act, what);
  c.layer_norm_eps = get<double>(j, "layer_norm_eps", c.layer_norm_eps, what);
  if (j0.contains("architectures") && j0["architectures"].is_array() && !j0["architectures"].empty() &&
      j0["architectures"][0].is_string())
    c.with_projection = j0["architectures"][0].get<std::string>().find("WithProjection") != std::string::npos;
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
    throw FormatError(what + ": hidden_act \"" + c.hidden_act + "\" is not supported (quick_gelu or gelu)");
  if (c.hidden_size <= 0 || c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0 ||
      c.num_hidden_layers <= 0 || c.intermediate_size <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 0 ||
      c.projection_dim <= 0)
    throw FormatError(what + ": CLIP text sizes are invalid (hidden_size must divide by num_attention_heads)");
  return c;
}

ClipTextConfig ClipTextConfig::clip_l() { return ClipTextConfig{}; }

ClipTextConfig ClipTextConfig::clip_g() {
  ClipTextConfig c;
  c.hidden_size = 1280;
  c.intermediate_size = 5120;
  c.num_attention_heads = 20;
  c.num_hidden_layers = 32;
  c.projection_dim = 1280;
  c.hidden_act = "gelu";
  return c;
}

namespace clip_detail {

struct Embeddings : nn::Module {
  Embeddings(const ClipTextConfig& c, const at::TensorOptions& o) {
    token_embedding = register_module("token_embedding", std::make_shared<layers::Embedding>(c.vocab_size, c.hidden_size, o));
    position_embedding = register_module(
        "position_embedding", std::make_shared<layers::Embedding>(c.max_position_embeddings, c.hidden_size, o));
  }
  std::shared_ptr<layers::Embedding> token_embedding, position_embedding;
};

struct Attention : nn::Module {
  Attention(const ClipTextConfig& c, const at::TensorOptions& o) : heads(c.num_attention_heads) {
    const auto h = c.hidden_size;
    k_proj = register_module("k_proj", std::make_shared<layers::Linear>(h, h, true, o));
    v_proj = register_module("v_proj", std::make_shared<layers::Linear>(h, h, true, o));
    q_proj = register_module("q_proj", std::make_shared<layers::Linear>(h, h, true, o));
    out_proj = register_module("out_proj", std::make_shared<layers::Linear>(h, h, true, o));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, int layer) {
    const auto B = x.size(0), T = x.size(1);
    auto split = [&](const at::Tensor& t) { return t.view({B, T, heads, -1}).transpose(1, 2); };
    AttentionDesc desc;
    desc.model = "clip";
    desc.layer = layer;
    desc.heads = heads;
    desc.text = {0, T};
    at::Tensor a = attention(split(q_proj->forward(x)), split(k_proj->forward(x)), split(v_proj->forward(x)), desc, mask);
    return out_proj->forward(a.transpose(1, 2).reshape({B, T, -1}));
  }
  int64_t heads;
  std::shared_ptr<layers::Linear> k_proj, v_proj, q_proj, out_proj;
};

struct Mlp : nn::Module {
  Mlp(const ClipTextConfig& c, const at::TensorOptions& o) : quick(c.hidden_act == "quick_gelu") {
    fc1 = register_module("fc1", std::make_shared<layers::Linear>(c.hidden_size, c.intermediate_size, true, o));
    fc2 = register_module("fc2", std::make_shared<layers::Linear>(c.intermediate_size, c.hidden_size, true, o));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = fc1->forward(x);
    h = quick ? h * at::sigmoid(h * 1.702) : at::gelu(h);
    return fc2->forward(h);
  }
  bool quick;
  std::shared_ptr<layers::Linear> fc1, fc2;
};

struct Layer : nn::Module {
  Layer(const ClipTextConfig& c, const at::TensorOptions& o) {
    auto ln = [&] { return std::make_shared<layers::LayerNorm>(c.hidden_size, c.layer_norm_eps, o); };
    self_attn = register_module("self_attn", std::make_shared<Attention>(c, o));
    layer_norm1 = register_module("layer_norm1", ln());
    mlp = register_module("mlp", std::make_shared<Mlp>(c, o));
    layer_norm2 = register_module("layer_norm2", ln());
  }
  at::Tensor forward(at::Tensor x, const at::Tensor& mask, int layer) {
    x = x + self_attn->forward(layer_norm1->forward(x), mask, layer);
    return x + mlp->forward(layer_norm2->forward(x));
  }
  std::shared_ptr<Attention> self_attn;
  std::shared_ptr<layers::LayerNorm> layer_norm1, layer_norm2;
  std::shared_ptr<Mlp> mlp;
};

struct Encoder : nn::Module {
  Encoder(const ClipTextConfig& c, const at::TensorOptions& o) {
    layers = register_module("layers", nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(std::make_shared<Layer>(c, o));
  }
  nn::ModuleList layers{nullptr};
};

struct TextTransformer : nn::Module {
  TextTransformer(const ClipTextConfig& c, const at::TensorOptions& o) {
    embeddings = register_module("embeddings", std::make_shared<Embeddings>(c, o));
    encoder = register_module("encoder", std::make_shared<Encoder>(c, o));
    final_layer_norm = register_module("final_layer_norm", std::make_shared<layers::LayerNorm>(c.hidden_size, c.layer_norm_eps, o));
  }
  std::shared_ptr<Embeddings> embeddings;
  std::shared_ptr<Encoder> encoder;
  std::shared_ptr<layers::LayerNorm> final_layer_norm;
};

}  // namespace clip_detail

ClipTextModel::ClipTextModel(const ClipTextConfig& config, const at::TensorOptions& options) : config_(config) {
  const auto& o = options;
  text_model_ = register_module("text_model", std::make_shared<clip_detail::TextTransformer>(config, o));
  if (config.with_projection)
    text_projection_ = register_module(
        "text_projection", std::make_shared<layers::Linear>(config.hidden_size, config.projection_dim, false, o));
}

at::Device ClipTextModel::device() const { return text_model_->final_layer_norm->weight.device(); }
at::ScalarType ClipTextModel::dtype() const { return text_model_->final_layer_norm->weight.scalar_type(); }

std::shared_ptr<ClipTextModel> ClipTextModel::load(const WeightStore& store0, const ClipTextConfig& config0,
                                                   at::Device device, at::ScalarType dtype) {
  // transformers 5 writes CLIPTextModel without the text_model. prefix; older files (and every SD3/FLUX
  // checkpoint) have it. position_ids is a non-persistent buffer some old files still carry.
  const bool unprefixed = !store0.has("text_model.embeddings.token_embedding.weight") &&
                          store0.has("embeddings.token_embedding.weight");
  WeightStore store = store0.renamed([&](const std::string& n) -> std::optional<std::string> {
    if (n.size() >= 12 && n.compare(n.size() - 12, 12, "position_ids") == 0) return std::nullopt;
    if (unprefixed && n != "text_projection.weight") return "text_model." + n;
    return n;
  });
  if (!store.has("text_model.embeddings.token_embedding.weight") && !store.is_random())
    throw FormatError("CLIP text encoder weights lack text_model.embeddings.token_embedding.weight" +
                      std::string(store.size() ? "" : " (no tensors found)"));
  ClipTextConfig config = config0;
  // Benchmark mode has no tensors to look at: the config's "architectures" decides.
  if (!store.is_random()) config.with_projection = store.has("text_projection.weight");
  auto model = std::make_shared<ClipTextModel>(config, at::TensorOptions().device(device).dtype(dtype));
  load_module(*model, store);
  model->eval();
  return model;
}

std::shared_ptr<ClipTextModel> ClipTextModel::load(const fs::path& dir, at::Device device, at::ScalarType dtype) {
  auto config = ClipTextConfig::from_json(read_json_object(dir / "config.json"), (dir / "config.json").string());
  return load(WeightStore::open(dir), config, device, dtype);
}

ClipTextOutput ClipTextModel::forward(const at::Tensor& input_ids0, const std::optional<at::Tensor>& attention_mask) {
  torch::NoGradGuard no_grad;
  if (input_ids0.dim() != 2 || input_ids0.is_floating_point())
    throw ShapeError("CLIP input_ids must be a [batch, tokens] integer tensor");
  const auto B = input_ids0.size(0), T = input_ids0.size(1);
  if (T > config_.max_position_embeddings || T == 0)
    throw ShapeError("CLIP input has " + std::to_string(T) + " tokens; the model takes 1 to " +
                     std::to_string(config_.max_position_embeddings));
  const auto dev = device();
  at::Tensor ids = input_ids0.to(dev, at::kLong);
  auto& tm = *text_model_;
  at::Tensor x = tm.embeddings->token_embedding->forward(ids) +
                 tm.embeddings->position_embedding->forward(at::arange(T, ids.options())).unsqueeze(0);

  // Causal mask (true = attend), combined with padding keys when a mask is given.
  at::Tensor mask = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(dev)).tril().view({1, 1, T, T});
  if (attention_mask) {
    if (attention_mask->sizes() != ids.sizes()) throw ShapeError("CLIP attention_mask must have input_ids' shape");
    mask = mask & attention_mask->to(dev).ne(0).view({B, 1, 1, T});
  }

  ClipTextOutput out;
  out.hidden_states.reserve(config_.num_hidden_layers + 1);
  out.hidden_states.push_back(x);
  int i = 0;
  for (const auto& m : *tm.encoder->layers) {
    x = m->as<clip_detail::Layer>()->forward(x, mask, i++);
    out.hidden_states.push_back(x);
  }
  out.last_hidden_state = tm.final_layer_norm->forward(x);

  // Pooled token, exactly as transformers: eos_token_id == 2 is the legacy config, pooled at the highest
  // token id; otherwise at the first occurrence of eos_token_id (position 0 if there is none).
  at::Tensor ids32 = ids.to(at::kInt);
  at::Tensor pos = config_.eos_token_id == 2 ? ids32.argmax(-1) : ids32.eq(config_.eos_token_id).to(at::kInt).argmax(-1);
  out.pooled = out.last_hidden_state.index({at::arange(B, pos.options()), pos});
  if (text_projection_) out.text_embeds = text_projection_->forward(out.pooled);
  return out;
}

}  // namespace mmdit
