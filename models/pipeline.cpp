#include "models/pipeline.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/log.h"
#include "core/model_folder.h"
#include "models/sd3_pipeline.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

void check_output(const GenerateRequest& r) {
  const fs::path p = output_path(r, 0);
  std::string ext = p.extension().string();
  for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".png") throw UsageError("--output " + r.output + ": images are written as .png");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw FileError("--output " + r.output + ": folder " + dir.string() + " does not exist");
}

}  // namespace

std::string output_path(const GenerateRequest& r, int index) {
  fs::path p = r.output.empty() ? fs::path("mmdit-" + std::to_string(r.seed) + ".png") : fs::path(r.output);
  if (r.batch > 1) p.replace_filename(p.stem().string() + "-" + std::to_string(index) + p.extension().string());
  return p.string();
}

std::unique_ptr<Pipeline> load_pipeline(const GenerateRequest& r) {
  ModelInfo m = open_model(r.model);
  if (m.family == "sd3") return load_sd3_pipeline(r, m);
  throw UsageError("--model " + r.model + ": " + (m.family == "unknown" ? std::string("not a model mmdit recognises")
                                                                        : m.family + " models are not supported yet"));
}

std::map<std::string, std::string> png_metadata(const GenerateRequest& r, const std::string& model_name, int index) {
  char cfg[32], shift[32];
  std::snprintf(cfg, sizeof cfg, "%g", r.cfg);
  std::snprintf(shift, sizeof shift, "%g", r.shift);
  std::string params = r.prompt + "\n";
  if (!r.negative_prompt.empty()) params += "Negative prompt: " + r.negative_prompt + "\n";
  params += "Steps: " + std::to_string(r.steps) + ", Sampler: flow-match euler, CFG scale: " + cfg +
            ", Seed: " + std::to_string(r.seed) + ", Size: " + std::to_string(r.width) + "x" + std::to_string(r.height) +
            ", Shift: " + shift + ", Model: " + model_name;
  if (r.batch > 1) params += ", Batch index: " + std::to_string(index) + " of " + std::to_string(r.batch);
  nlohmann::ordered_json j = {{"model", r.model},   {"prompt", r.prompt}, {"negative_prompt", r.negative_prompt},
                              {"width", r.width},   {"height", r.height}, {"steps", r.steps},
                              {"cfg", r.cfg},       {"seed", r.seed},     {"shift", r.shift},
                              {"batch", r.batch},   {"batch_index", index},
                              {"max_sequence_length", r.max_sequence_length},
                              {"dtype", r.dtype},   {"device", r.device}};
  if (r.slg_scale > 0 && !r.slg_layers.empty()) {
    j["slg_scale"] = r.slg_scale;
    j["slg_layers"] = r.slg_layers;
    j["slg_start"] = r.slg_start;
    j["slg_stop"] = r.slg_stop;
  }
  return {{"parameters", params}, {"Software", "mmdit"}, {"mmdit", j.dump()}};
}

void generate(GenerateRequest r) {
  check_output(r);
  const auto t0 = std::chrono::steady_clock::now();
  auto pipe = load_pipeline(r);
  pipe->resolve(r);
  check_output(r);
  char took[32];
  std::snprintf(took, sizeof took, "%.1f", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  log_info("loaded " + pipe->name() + " in " + took + " s; seed " + std::to_string(r.seed));
  Progress progress("denoise", r.steps);
  auto images = pipe->generate(r, [&](int, int) { progress.step(); });
  progress.finish();
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string path = output_path(r, int(i));
    write_png(path, images[i], png_metadata(r, pipe->name(), int(i)));
    std::printf("%s\n", path.c_str());
  }
}

}  // namespace mmdit
