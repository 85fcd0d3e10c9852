#include "core/model_folder.h"

#include <fstream>
#include <regex>
#include <set>

#include "core/errors.h"
#include "core/mapped_file.h"
#include "core/safetensors_header.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    return fallback;
  }
}

bool has_prefix(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

ComponentInfo read_component(const std::string& name, const fs::path& dir, const std::string& library,
                             const std::string& class_name) {
  ComponentInfo c;
  c.name = name;
  c.dir = dir;
  c.library = library;
  c.class_name = class_name;
  c.is_tokenizer = class_name.find("Tokenizer") != std::string::npos;
  for (const char* cfg : {"config.json", "scheduler_config.json", "tokenizer_config.json"}) {
    if (fs::exists(dir / cfg)) {
      c.config = read_json_object(dir / cfg);
      break;
    }
  }
  for (const char* f : {"vocab.json", "merges.txt", "spiece.model", "tokenizer.json"})
    if (fs::exists(dir / f)) c.tokenizer_files.push_back(f);
  if (auto w = find_weights(dir)) c.weights = *w;
  if (c.class_name.empty() && c.config.is_object()) {
    c.class_name = get_or<std::string>(c.config, "_class_name", "");
    if (c.class_name.empty() && c.config.contains("architectures") && c.config["architectures"].is_array() &&
        !c.config["architectures"].empty() && c.config["architectures"][0].is_string())
      c.class_name = c.config["architectures"][0].get<std::string>();
    c.library = c.config.contains("_diffusers_version") ? "diffusers" : "transformers";
  }
  return c;
}

std::string family_of_pipeline(const std::string& cls) {
  if (has_prefix(cls, "StableDiffusion3")) return "sd3";
  if (has_prefix(cls, "Flux")) return "flux";
  if (has_prefix(cls, "CogVideoX")) return "cogvideox";
  return "unknown";
}

}  // namespace

std::optional<fs::path> find_weights(const fs::path& dir, const std::string& variant) {
  const std::string v = variant.empty() ? "" : "." + variant;
  for (const char* stem : {"diffusion_pytorch_model", "model"}) {
    // transformers names variant indexes model.safetensors.index.fp16.json
    for (const auto& name : {std::string(stem) + ".safetensors.index" + v + ".json",
                             std::string(stem) + v + ".safetensors.index.json",
                             std::string(stem) + v + ".safetensors"}) {
      if (fs::exists(dir / name)) return dir / name;
    }
  }
  return std::nullopt;
}

nlohmann::json read_json_object(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw FileError(p.string() + ": cannot open");
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) throw FormatError(p.string() + ": not valid JSON");
  if (!j.is_object()) throw FormatError(p.string() + ": expected a JSON object");
  return j;
}

const char* kind_name(ModelKind k) {
  switch (k) {
    case ModelKind::PipelineFolder: return "diffusers pipeline folder";
    case ModelKind::ComponentFolder: return "component folder";
    case ModelKind::SingleFile: return "single-file checkpoint";
  }
  return "?";
}

const ComponentInfo* ModelInfo::component(const std::string& name) const {
  for (const auto& c : components)
    if (c.name == name) return &c;
  return nullptr;
}

std::filesystem::path ModelInfo::component_dir(const std::string& name) const {
  const ComponentInfo* c = component(name);
  return c ? c->dir : std::filesystem::path();
}

const ComponentInfo& ModelInfo::require(const std::string& name) const {
  const ComponentInfo* c = component(name);
  if (!c) throw FormatError(path.string() + ": model_index.json has no '" + name + "' component");
  return *c;
}

void detect_from_config(const std::string& cls, const nlohmann::json& cfg, std::string& family, std::string& variant) {
  const int layers = get_or<int>(cfg, "num_layers", 0);
  if (cls == "SD3Transformer2DModel") {
    family = "sd3";
    const bool qk = get_or<std::string>(cfg, "qk_norm", "") == "rms_norm";
    const bool dual = cfg.contains("dual_attention_layers") && cfg["dual_attention_layers"].is_array() &&
                      !cfg["dual_attention_layers"].empty();
    if (dual) variant = layers == 24 ? "sd3.5-medium" : "sd3.5-medium-like";
    else if (qk) variant = layers == 38 ? "sd3.5-large" : "sd3.5-large-like";
    else variant = layers == 24 ? "sd3-medium" : "sd3-like";
    if (variant.size() > 5 && variant.substr(variant.size() - 5) == "-like")
      variant += " (" + std::to_string(layers) + " layers)";
  } else if (cls == "FluxTransformer2DModel") {
    family = "flux";
    variant = get_or<bool>(cfg, "guidance_embeds", false) ? "flux-dev" : "flux-schnell";
  } else if (cls == "CogVideoXTransformer3DModel") {
    family = "cogvideox";
    if (!get_or<bool>(cfg, "use_rotary_positional_embeddings", false)) variant = "cogvideox-2b";
    else if (get_or<int>(cfg, "patch_size_t", 0) > 0) variant = "cogvideox-1.5";
    else variant = "cogvideox-5b";
  } else if (has_prefix(cls, "CLIPTextModel")) {
    family = "clip";
    const int h = get_or<int>(cfg, "hidden_size", 0);
    variant = h == 768 ? "clip-l" : h == 1280 ? "clip-g" : "clip (hidden " + std::to_string(h) + ")";
  } else if (has_prefix(cls, "T5")) {
    family = "t5";
    const int d = get_or<int>(cfg, "d_model", 0);
    variant = d == 4096 ? "t5-v1.1-xxl" : "t5 (d_model " + std::to_string(d) + ")";
  } else if (has_prefix(cls, "AutoencoderKL")) {
    family = "vae";
    variant = cls == "AutoencoderKLCogVideoX" ? "cogvideox-vae"
                                               : std::to_string(get_or<int>(cfg, "latent_channels", 0)) + "-channel kl-vae";
  } else {
    family = "unknown";
    variant = cls;
  }
}

void detect_from_tensor_names(const std::vector<std::string>& names, std::string& family, std::string& variant) {
  std::set<std::string> s(names.begin(), names.end());
  auto any = [&](const std::string& part) {
    for (const auto& n : names)
      if (n.find(part) != std::string::npos) return true;
    return false;
  };
  // Count numbered blocks such as "joint_blocks.12." to tell depth.
  auto depth = [&](const std::string& block) {
    int d = 0;
    std::regex re(block + "\\.([0-9]+)\\.");
    std::smatch m;
    for (const auto& n : names)
      if (std::regex_search(n, m, re)) d = std::max(d, std::stoi(m[1].str()) + 1);
    return d;
  };
  family = "unknown";
  variant = "";
  if (any("joint_blocks.0.x_block")) {  // Stability's original SD3/SD3.5 layout
    family = "sd3";
    const int d = depth("joint_blocks");
    if (any("x_block.attn2.")) variant = "sd3.5-medium";
    else if (any("x_block.attn.ln_q")) variant = d == 38 ? "sd3.5-large" : "sd3.5-large-like (" + std::to_string(d) + " layers)";
    else variant = d == 24 ? "sd3-medium" : "sd3-like (" + std::to_string(d) + " layers)";
  } else if (any("double_blocks.0.img_attn")) {  // Black Forest Labs' FLUX layout
    family = "flux";
    variant = any("guidance_in.") ? "flux-dev" : "flux-schnell";
  } else if (any("transformer_blocks.0.attn.to_q") && any("context_embedder.") && any("pos_embed.proj")) {
    family = "sd3";
    variant = "sd3 transformer (diffusers names)";
  } else if (any("single_transformer_blocks.0.")) {
    family = "flux";
    variant = any("guidance_embedder") ? "flux-dev (diffusers names)" : "flux-schnell (diffusers names)";
  } else if (any("patch_embed.text_proj")) {
    family = "cogvideox";
    variant = "cogvideox transformer (diffusers names)";
  } else if (any("text_model.encoder.layers.0.")) {
    family = "clip";
    variant = "clip text encoder";
  } else if (any("encoder.block.0.layer.0.SelfAttention")) {
    family = "t5";
    variant = "t5 encoder";
  } else if (any("decoder.up_blocks.") || any("decoder.up.")) {
    family = "vae";
    variant = "vae";
  }
}

ModelInfo open_model(const fs::path& path) {
  ModelInfo m;
  m.path = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw FileError(path.string() + ": no such file or folder");
  if (fs::is_regular_file(path)) {
    m.kind = ModelKind::SingleFile;
    MappedFile map(path);
    auto h = parse_safetensors(map.data(), map.size(), path.string());
    std::vector<std::string> names;
    for (const auto& t : h.tensors) names.push_back(t.name);
    detect_from_tensor_names(names, m.family, m.variant);
    ComponentInfo c;
    c.name = "checkpoint";
    c.dir = path.parent_path();
    c.weights = path;
    m.components.push_back(c);
    return m;
  }
  if (!fs::is_directory(path)) throw FileError(path.string() + ": not a file or folder");
  if (fs::exists(path / "model_index.json")) {
    m.kind = ModelKind::PipelineFolder;
    auto index = read_json_object(path / "model_index.json");
    m.pipeline_class = get_or<std::string>(index, "_class_name", "");
    m.family = family_of_pipeline(m.pipeline_class);
    for (auto it = index.begin(); it != index.end(); ++it) {
      if (has_prefix(it.key(), "_")) continue;
      const auto& v = it.value();
      // Entries are [library, class]; [null, null] marks an absent optional component.
      if (!v.is_array() || v.size() != 2) continue;
      if (!v[0].is_string() || !v[1].is_string()) continue;
      const fs::path dir = path / it.key();
      if (!fs::is_directory(dir))
        throw FormatError((path / "model_index.json").string() + ": names component '" + it.key() +
                          "' but the folder " + dir.string() + " is missing");
      m.components.push_back(read_component(it.key(), dir, v[0].get<std::string>(), v[1].get<std::string>()));
    }
    if (const auto* t = m.component("transformer")) {
      std::string fam;
      detect_from_config(t->class_name, t->config, fam, m.variant);
      if (m.family == "unknown") m.family = fam;
    }
    return m;
  }
  if (fs::exists(path / "config.json")) {
    m.kind = ModelKind::ComponentFolder;
    auto c = read_component(path.filename().string(), path, "", "");
    detect_from_config(c.class_name, c.config, m.family, m.variant);
    m.components.push_back(c);
    return m;
  }
  throw FileError(path.string() + ": not a model folder (no model_index.json or config.json)");
}

std::string builtin_model() {
  const std::filesystem::path p = MMDIT_DEMO_MODEL;  // set by CMake: <source>/demo/shapes-world
  if (!std::filesystem::exists(p / "model_index.json"))
    throw UsageError("no --model given, and the built-in demo model is not at " + p.string());
  return p.string();
}

}  // namespace mmdit
