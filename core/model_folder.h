// Opening what a user points --model at: a diffusers pipeline folder (model_index.json), a single
// component folder (config.json + weights), or a single-file checkpoint; and saying what it is.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mmdit {

enum class ModelKind { PipelineFolder, ComponentFolder, SingleFile };

struct ComponentInfo {
  std::string name;        // "transformer", "text_encoder_2", ... (folder name)
  std::string library;     // "diffusers" / "transformers"
  std::string class_name;  // "SD3Transformer2DModel", "CLIPTokenizer", ...
  std::filesystem::path dir;
  nlohmann::json config;   // config.json / scheduler_config.json / tokenizer_config.json (object or null)
  std::filesystem::path weights;  // weight file or index; empty when the component has none
  bool is_tokenizer = false;
  std::vector<std::string> tokenizer_files;  // vocab.json, merges.txt, spiece.model, tokenizer.json present
};

struct ModelInfo {
  std::filesystem::path path;
  ModelKind kind = ModelKind::PipelineFolder;
  std::string family;   // "sd3", "flux", "cogvideox", "clip", "t5", "vae", or "unknown"
  std::string variant;  // "sd3-medium", "sd3.5-large", "sd3.5-medium", "flux-dev", "flux-schnell", ...
  std::string pipeline_class;
  std::vector<ComponentInfo> components;
  const ComponentInfo* component(const std::string& name) const;
  // The component's folder, or an empty path when model_index.json does not name it.
  std::filesystem::path component_dir(const std::string& name) const;
  // The component, or a FormatError "<model>: model_index.json has no '<name>' component".
  const ComponentInfo& require(const std::string& name) const;
};

// Throws FileError (missing path, folder without model_index.json/config.json/weights) or FormatError
// (bad JSON, a component folder model_index.json names that is absent).
ModelInfo open_model(const std::filesystem::path& path);

// Family/variant of a transformer from its diffusers config, and from single-file tensor names.
void detect_from_config(const std::string& class_name, const nlohmann::json& config, std::string& family,
                        std::string& variant);
void detect_from_tensor_names(const std::vector<std::string>& names, std::string& family, std::string& variant);

const char* kind_name(ModelKind k);

// The built-in demo model (the shapes world, demo/shapes-world in the source tree), used when no model is
// given. Throws UsageError naming the path when it is not there.
std::string builtin_model();

// Reads a JSON file that must hold an object (config.json, model_index.json, indexes): FileError when it
// cannot be opened, FormatError when it is not JSON or not an object, naming the file.
nlohmann::json read_json_object(const std::filesystem::path& path);

// Finds the weight file of a component folder: the .safetensors.index.json if present, else the single
// .safetensors (diffusers' diffusion_pytorch_model* or transformers' model*). `variant` like "fp16".
std::optional<std::filesystem::path> find_weights(const std::filesystem::path& dir, const std::string& variant = "");

}  // namespace mmdit
