#include "models/pipeline.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/log.h"
#include "core/model_folder.h"
#include "core/options.h"
#include "core/parallel.h"
#include "core/video_writer.h"
#include "models/cogvideox_pipeline.h"
#include "models/flux_pipeline.h"
#include "models/sd3_pipeline.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

bool is_pattern(const std::string& s) { return is_frame_pattern(s); }

// Video output: a printf pattern of PNG frames (out_%03d.png), or a video file (core/video_writer.h).
void check_video_output(const GenerateRequest& r) {
  if (r.output.empty()) throw UsageError("--output: video models need an output, e.g. out.mp4 or out_%03d.png");
  if (!is_pattern(r.output) && fs::path(r.output).extension() == ".mp4" && !video_mp4_available())
    throw UsageError("--output " + r.output + ": this mmdit was built without FFmpeg: MP4 output unavailable; write frames with --output 'frame_%03d.png'");
  const fs::path p(r.output);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw FileError("--output " + r.output + ": folder " + dir.string() + " does not exist");
  if (is_pattern(r.output)) {
    const fs::path probe = expand_frame_pattern(r.output, 0);  // UsageError unless one %d/%Nd/%0Nd
    std::string ext = probe.extension().string();
    for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (ext != ".png")
      throw UsageError("--output " + r.output + ": a frame pattern must hold one integer conversion and end in .png, e.g. out_%03d.png");
  }
}

void check_png_output(const std::string& path, const std::string& flag) {
  std::string ext = fs::path(path).extension().string();
  for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".png") throw UsageError(flag + " " + path + ": images are written as .png");
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw FileError(flag + " " + path + ": folder " + dir.string() + " does not exist");
}

void check_output(const GenerateRequest& r) {
  if (!r.source_output.empty()) check_png_output(r.source_output, "--source-output");
  if (!r.mask_output.empty()) check_png_output(r.mask_output, "--mask-output");
  if (is_pattern(r.output) || fs::path(r.output).extension() == ".mp4") return;  // video outputs: checked after loading
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
  if (m.family == "cogvideox") return load_cogvideox_pipeline(r, m);
  if (m.family == "flux") return load_flux_pipeline(r, m);
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
  // Every option that differs from its default (core/options.h), so the image reproduces as a job.
  nlohmann::ordered_json j = request_json(r);
  j["batch_index"] = index;
  return {{"parameters", params}, {"Software", "mmdit"}, {"mmdit", j.dump()}};
}

std::vector<Video> Pipeline::generate_video(const GenerateRequest&, const std::function<void(int, int)>&) {
  throw UsageError("--model: " + name() + " makes images, not videos");
}

std::vector<std::string> write_videos(const GenerateRequest& r, Pipeline& pipe,
                                      const std::function<void(int, int)>& step) {
  check_video_output(r);
  std::vector<std::string> written;
  auto videos = pipe.generate_video(r, step);
  for (size_t v = 0; v < videos.size(); ++v) {
    const auto& video = videos[v];
    if (is_pattern(r.output)) {
      // Frame 0 of the whole set is written last, so that its presence means a complete output (what
      // `mmdit run --skip-existing` looks for).
      for (size_t i = 0; i < video.frames.size(); ++i) {
        const size_t index = v * video.frames.size() + i;
        if (index == 0) continue;
        const std::string path = expand_frame_pattern(r.output, int(index)).string();
        write_png(path, video.frames[i], png_metadata(r, pipe.name(), int(v)));
        written.push_back(path);
      }
      if (v + 1 == videos.size()) {
        const std::string first = expand_frame_pattern(r.output, 0).string();
        write_png(first, videos[0].frames[0], png_metadata(r, pipe.name(), 0));
        written.insert(written.begin(), first);
      }
    } else {
      // MP4: the parameters as the human-readable comment, the request as JSON in the description.
      auto meta = png_metadata(r, pipe.name(), int(v));
      VideoOptions opts;
      opts.fps = video.fps;
      opts.crf = r.crf;
      opts.metadata = {{"comment", meta["parameters"]}, {"description", meta["mmdit"]}};
      write_video(r.output, video.frames, opts);
      written.push_back(r.output);
    }
  }
  return written;
}

std::vector<std::string> write_images(const GenerateRequest& r, const std::vector<Image>& images,
                                      const std::string& model_name) {
  std::vector<std::string> written;
  if (!r.source_prompt.empty()) {  // an edit: [source, target]
    write_png(output_path(r, 0), images.at(1), png_metadata(r, model_name, 0));
    written.push_back(output_path(r, 0));
    if (!r.source_output.empty()) {
      GenerateRequest source = r;  // the source image's own parameters: its prompt, no edit
      source.prompt = r.source_prompt;
      source.source_prompt.clear();
      write_png(r.source_output, images.at(0), png_metadata(source, model_name, 0));
      written.push_back(r.source_output);
    }
    return written;
  }
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string path = output_path(r, int(i));
    write_png(path, images[i], png_metadata(r, model_name, int(i)));
    written.push_back(path);
  }
  return written;
}

void generate(GenerateRequest r) {
  check_output(r);
  const auto t0 = std::chrono::steady_clock::now();
  auto pipe = load_pipeline(r);
  if (!pipe->is_video() && (r.frames > 0 || r.fps > 0 || !r.sampler.empty() || r.dynamic_cfg || r.vae_tiling))
    throw UsageError("--frames/--fps/--sampler/--dynamic-cfg/--vae-tiling: " + pipe->name() + " is an image model");
  pipe->resolve(r);
  // Over several devices (core/parallel.h), every rank generates and rank 0 writes.
  const bool writes = !world().comm || world().comm->rank() == 0;
  if (pipe->is_video()) {
    Progress progress("denoise", r.steps);
    if (!writes) {
      pipe->generate_video(r, [&](int, int) { progress.step(); });
      return;
    }
    auto written = write_videos(r, *pipe, [&](int, int) { progress.step(); });
    progress.finish();
    for (const auto& path : written) std::printf("%s\n", path.c_str());
    return;
  }
  check_output(r);
  char took[32];
  std::snprintf(took, sizeof took, "%.1f", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  log_info("loaded " + pipe->name() + " in " + took + " s; seed " + std::to_string(r.seed));
  Progress progress("denoise", r.steps);
  auto images = pipe->generate(r, [&](int, int) { progress.step(); });
  progress.finish();
  if (!writes) return;
  for (const auto& path : write_images(r, images, pipe->name())) std::printf("%s\n", path.c_str());
}

}  // namespace mmdit
