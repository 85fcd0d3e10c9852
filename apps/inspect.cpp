// `mmdit inspect PATH`: what a model folder or checkpoint is, and what it holds.
#include <cstdio>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "core/errors.h"
#include "core/model_folder.h"
#include "core/weights.h"

namespace mmdit {
namespace fs = std::filesystem;
namespace {

struct InspectOptions {
  std::string path;
  bool tensors = false;
  bool json = false;
};

bool needs_weights(const ComponentInfo& c) {
  return !c.is_tokenizer && c.class_name.find("Scheduler") == std::string::npos &&
         c.class_name.find("FeatureExtractor") == std::string::npos && c.class_name.find("Processor") == std::string::npos;
}

std::string human(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ull) std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1000000ull) std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else if (n >= 1000ull) std::snprintf(buf, sizeof buf, "%.1f K", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu", (unsigned long long)n);
  return buf;
}

// Summary of one component's weights, as JSON (the text view prints from it too).
nlohmann::ordered_json describe(const ComponentInfo& c, const fs::path& root, bool list_tensors,
                                std::vector<std::string>& missing_all) {
  nlohmann::ordered_json j;
  j["name"] = c.name;
  if (!c.library.empty()) j["library"] = c.library;
  if (!c.class_name.empty()) j["class"] = c.class_name;
  if (!c.tokenizer_files.empty()) j["tokenizer_files"] = c.tokenizer_files;
  auto rel = [&](const fs::path& p) { return p.lexically_relative(root).string(); };
  if (c.weights.empty()) {
    if (needs_weights(c)) {
      const fs::path expected = c.dir / (c.library == "diffusers" ? "diffusion_pytorch_model.safetensors" : "model.safetensors");
      j["missing_files"] = {rel(expected)};
      missing_all.push_back(rel(expected));
    }
    return j;
  }
  WeightStore store = WeightStore::open(c.weights);
  j["weights"] = rel(c.weights);
  uint64_t params = 0, unknown = 0;
  std::map<std::string, uint64_t> dtypes;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& name : store.names()) {
    const TensorInfo* t = store.info(name);
    if (!t) {
      ++unknown;
      if (list_tensors) list.push_back({{"name", name}, {"dtype", nullptr}, {"shape", nullptr}});
      continue;
    }
    params += t->numel();
    dtypes[dtype_name(t->dtype)] += 1;
    if (list_tensors) list.push_back({{"name", name}, {"dtype", dtype_name(t->dtype)}, {"shape", t->shape}});
  }
  j["tensors"] = store.size();
  j["parameters"] = params;
  j["dtypes"] = dtypes;
  if (unknown) j["tensors_in_missing_files"] = unknown;
  if (store.files().size() > 1) j["shards"] = store.files().size();
  if (!store.missing_files().empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::array();
    for (const auto& f : store.missing_files()) {
      m.push_back(rel(f));
      missing_all.push_back(rel(f));
    }
    j["missing_files"] = m;
  }
  if (list_tensors) j["tensor_list"] = list;
  return j;
}

void print_text(const nlohmann::ordered_json& r) {
  std::printf("path:     %s (%s)\n", r["path"].get<std::string>().c_str(), r["kind"].get<std::string>().c_str());
  std::printf("family:   %s\n", r["family"].get<std::string>().c_str());
  if (!r["variant"].get<std::string>().empty()) std::printf("variant:  %s\n", r["variant"].get<std::string>().c_str());
  if (r.contains("pipeline")) std::printf("pipeline: %s\n", r["pipeline"].get<std::string>().c_str());
  std::printf("components:\n");
  for (const auto& c : r["components"]) {
    std::string line = "  " + c["name"].get<std::string>();
    line.resize(std::max<size_t>(line.size() + 1, 20), ' ');
    if (c.contains("class")) line += c["class"].get<std::string>();
    if (c.contains("tensors")) {
      line += "  " + std::to_string(c["tensors"].get<uint64_t>()) + " tensors, ";
      // Shapes of tensors in missing shards are unknown: say so rather than print a wrong count.
      line += c.contains("tensors_in_missing_files")
                  ? std::to_string(c["tensors_in_missing_files"].get<uint64_t>()) + " without weights"
                  : human(c["parameters"].get<uint64_t>()) + " params";
      std::string dts;
      for (auto it = c["dtypes"].begin(); it != c["dtypes"].end(); ++it) dts += (dts.empty() ? "" : ",") + it.key();
      if (!dts.empty()) line += ", " + dts;
      if (c.contains("shards")) line += ", " + std::to_string(c["shards"].get<size_t>()) + " shards";
    }
    if (c.contains("tokenizer_files")) {
      line += "  files:";
      for (const auto& f : c["tokenizer_files"]) line += " " + f.get<std::string>();
    }
    if (c.contains("missing_files")) line += "  [weights missing]";
    std::printf("%s\n", line.c_str());
    if (c.contains("tensor_list"))
      for (const auto& t : c["tensor_list"]) {
        std::string shape = t["shape"].is_null() ? "?" : t["shape"].dump();
        std::string dtype = t["dtype"].is_null() ? "(missing)" : t["dtype"].get<std::string>();
        std::printf("    %s  %s  %s\n", t["name"].get<std::string>().c_str(), dtype.c_str(), shape.c_str());
      }
  }
  std::printf("total:    %llu tensors, %s parameters\n", (unsigned long long)r["total_tensors"].get<uint64_t>(),
              human(r["total_parameters"].get<uint64_t>()).c_str());
  if (!r["missing_files"].empty()) {
    std::printf("missing weights (%zu files; parameter totals count only present files):\n", r["missing_files"].size());
    for (const auto& f : r["missing_files"]) std::printf("  %s\n", f.get<std::string>().c_str());
  }
}

void run_inspect(const InspectOptions& o) {
  ModelInfo m = open_model(o.path);
  const fs::path root = m.kind == ModelKind::SingleFile ? fs::path(o.path).parent_path() : fs::path(o.path);
  nlohmann::ordered_json r;
  r["path"] = o.path;
  r["kind"] = kind_name(m.kind);
  r["family"] = m.family;
  r["variant"] = m.variant;
  if (!m.pipeline_class.empty()) r["pipeline"] = m.pipeline_class;
  std::vector<std::string> missing;
  uint64_t tensors = 0, params = 0;
  r["components"] = nlohmann::ordered_json::array();
  for (const auto& c : m.components) {
    auto d = describe(c, root, o.tensors, missing);
    if (d.contains("tensors")) {
      tensors += d["tensors"].get<uint64_t>();
      params += d["parameters"].get<uint64_t>();
    }
    r["components"].push_back(d);
  }
  r["total_tensors"] = tensors;
  r["total_parameters"] = params;
  r["missing_files"] = missing;
  if (o.json) std::printf("%s\n", r.dump(2).c_str());
  else print_text(r);
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* sub = app.add_subcommand("inspect", "Show what a model folder or checkpoint is and holds");
  sub->add_option("path", o->path, "Diffusers folder, component folder, or .safetensors file")->required();
  sub->add_flag("--tensors", o->tensors, "List every tensor's name, dtype and shape");
  sub->add_flag("--json", o->json, "Machine-readable output");
  return {sub, [o] { run_inspect(*o); }};
}

}  // namespace mmdit
