// Attention maps (--attention-maps DIR): for each token of the prompt, the image->text attention probability
// of that token, averaged over heads, the chosen layers (--attention-maps-layers, default all) and the steps,
// from the cond branch. The probabilities are exact and never an N x N matrix: the kernel returns each query
// row's log-sum-exp, and P[i, t] = exp(q_i . k_t * scale - LSE_i) for the prompt's T tokens only (O(N T)).
// Written at the end of the generation:
//   NN-word.png       the map of token NN (its position in the tokenizer's ids) scaled to the output size,
//                     gray, 255 at the map's maximum; videos: NN-word.mp4 (or NN-word_%03d.png without FFmpeg),
//                     one frame per latent frame;
//   overlay.png       a contact sheet: the image, then each map over it in red, in file order;
//   maps.safetensors  the raw maps, "maps" [tokens, frames, h, w] float32 on the token grid, and the tokens in
//                     the metadata ("tokens": JSON [[position, text], ...]).
// With --batch N > 1 the maps of image i go to DIR/i/.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "controls/registry.h"
#include "core/errors.h"
#include "core/image_io.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "core/torch_util.h"
#include "core/video_writer.h"
#include "models/pipeline.h"

namespace mmdit {
namespace fs = std::filesystem;
namespace {

std::string file_word(const std::string& w) {
  std::string s;
  for (unsigned char c : w) s += (std::isalnum(c) && c < 128) ? char(std::tolower(c)) : '_';
  return s.substr(0, 32);
}

std::string two_digits(int64_t i) { return (i < 10 ? "0" : "") + std::to_string(i); }

// [H, W] (gray) or [H, W, 3] floats in [0, 1] -> an Image.
Image to_image(const at::Tensor& t) {
  at::Tensor hwc = t.dim() == 2 ? t.unsqueeze(-1) : t;
  return images_from_u8((hwc.clamp(0, 1) * 255).round().to(at::kByte).unsqueeze(0))[0];
}

// An Image as float [H, W, 3] in [0, 1].
at::Tensor rgb(const Image& img) {
  at::Tensor t = at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels}, at::kByte);
  t = t.to(at::kFloat) / 255;
  return img.channels == 3 ? t : t.narrow(2, 0, 1).expand({img.height, img.width, 3});
}

class AttentionMaps : public Control {
 public:
  AttentionMaps(std::string dir, std::vector<int> layers) : dir_(std::move(dir)), layers_(layers.begin(), layers.end()) {}
  std::string name() const override { return "attention-maps"; }

  void begin(const GenerationInfo& info) override {
    info_ = info;
    sum_ = at::Tensor();
    count_ = 0;
    std::vector<int64_t> cols;
    for (const auto& w : info.words) cols.push_back(w.first);
    cols_ = at::tensor(cols, at::kLong);
  }

  bool touches(const AttentionDesc& desc, const ControlContext& ctx) const override {
    return desc.sub == 0 && !info_.words.empty() && (layers_.empty() || layers_.count(desc.layer)) &&
           ctx.find(Branch::Cond);
  }
  bool needs_lse(const AttentionDesc&, const ControlContext&) const override { return true; }

  void after(AttentionCall& call) override {
    const BranchRows& cond = *call.ctx.find(Branch::Cond);
    if (cols_.device() != call.q.device()) cols_ = cols_.to(call.q.device());
    at::Tensor p = call.image_text_probs(cond.begin, cond.end, cols_).mean(1);  // [n, N_img, tokens]
    sum_ = sum_.defined() ? sum_ + p : p;
    ++count_;
  }

  void end(const std::vector<Image>& images) override {
    if (info_.words.empty()) {
      log_warn("--attention-maps: the prompt has no tokens to map");
      return;
    }
    if (!count_) throw RuntimeFailure("--attention-maps: no attention layer was recorded");
    const GenerationInfo& g = info_;
    at::Tensor maps = (sum_ / double(count_)).to(at::kCPU);  // [n, N_img, tokens]
    maps = maps.permute({0, 2, 1}).reshape({maps.size(0), maps.size(2), g.frames, g.grid_h, g.grid_w});
    const int64_t n = maps.size(0);
    const size_t per_image = images.size() / size_t(n);
    for (int64_t b = 0; b < n; ++b) {
      const fs::path dir = n > 1 ? fs::path(dir_) / std::to_string(b) : fs::path(dir_);
      fs::create_directories(dir);
      write_image_maps(dir, maps[b], std::vector<Image>(images.begin() + long(b * per_image),
                                                        images.begin() + long((b + 1) * per_image)));
    }
    log_info("attention maps of " + std::to_string(g.words.size()) + " tokens written to " + dir_);
  }

 private:
  // maps [tokens, frames, h, w] of one image (or video: its frames).
  void write_image_maps(const fs::path& dir, const at::Tensor& maps, const std::vector<Image>& frames) {
    const GenerationInfo& g = info_;
    nlohmann::json tokens = nlohmann::json::array();
    for (const auto& [pos, text] : g.words) tokens.push_back({pos, text});
    write_safetensors(dir / "maps.safetensors", {{"maps", maps.contiguous()}}, {{"tokens", tokens.dump()}});
    // Scaled to the output size, each map to its own maximum.
    at::Tensor up = at::upsample_bilinear2d(maps.reshape({-1, 1, g.grid_h, g.grid_w}), {g.height, g.width}, false)
                        .reshape({maps.size(0), g.frames, g.height, g.width});
    up = up / up.flatten(1).amax(1).clamp_min(1e-12).view({-1, 1, 1, 1});
    const bool video = g.frames > 1;
    for (size_t t = 0; t < g.words.size(); ++t) {
      const std::string stem = two_digits(g.words[t].first) + "-" + file_word(g.words[t].second);
      if (!video) {
        write_png(dir / (stem + ".png"), to_image(up[long(t)][0]));
        continue;
      }
      std::vector<Image> seq;
      for (int64_t f = 0; f < g.frames; ++f) seq.push_back(to_image(up[long(t)][f]));
      VideoOptions opts;
      // One map per latent frame, played over the video's duration.
      opts.fps = std::max(1, int(std::lround(double(g.fps) * double(g.frames) / double(std::max<size_t>(1, frames.size())))));
      const bool mp4 = video_mp4_available();
      write_video(dir / (mp4 ? stem + ".mp4" : stem + "_%03d.png"), seq, opts);
    }
    write_png(dir / "overlay.png", contact_sheet(up, frames));
  }

  // The image (a video's middle frame), then each map over it in red, 8 to a row.
  Image contact_sheet(const at::Tensor& up, const std::vector<Image>& frames) const {
    const GenerationInfo& g = info_;
    const int64_t f = g.frames / 2;
    const Image& base_img = frames.at(std::min(frames.size() - 1, size_t(double(f) / double(g.frames) * double(frames.size()))));
    at::Tensor base = rgb(base_img);
    std::vector<at::Tensor> tiles = {base};
    at::Tensor dim = base.mean(2, true).expand_as(base) * 0.5;  // the image in dim gray under the map
    for (int64_t t = 0; t < up.size(0); ++t) {
      at::Tensor m = up[t][f].unsqueeze(2);
      at::Tensor red = at::cat({at::ones_like(m), at::zeros_like(m), at::zeros_like(m)}, 2);
      tiles.push_back(dim * (1 - m) + red * m);
    }
    const int64_t cols = std::min<int64_t>(8, int64_t(tiles.size())), rows = (int64_t(tiles.size()) + cols - 1) / cols;
    at::Tensor sheet = at::ones({rows * (g.height + 2), cols * (g.width + 2), 3});
    for (size_t i = 0; i < tiles.size(); ++i) {
      const int64_t r = int64_t(i) / cols, c = int64_t(i) % cols;
      sheet.narrow(0, r * (g.height + 2) + 1, g.height).narrow(1, c * (g.width + 2) + 1, g.width).copy_(tiles[i]);
    }
    return to_image(sheet);
  }

  std::string dir_;
  std::set<int> layers_;
  GenerationInfo info_;
  at::Tensor cols_, sum_;
  int64_t count_ = 0;
};

}  // namespace

std::unique_ptr<Control> make_attention_maps(const GenerateRequest& r, const ModelShape& model) {
  if (r.attention_maps.empty()) {
    if (!r.attention_maps_layers.empty())
      throw UsageError("--attention-maps-layers: attention maps need --attention-maps DIR");
    return nullptr;
  }
  check_layers(r.attention_maps_layers, model, "--attention-maps-layers");
  std::error_code ec;
  if (fs::exists(r.attention_maps, ec) && !fs::is_directory(r.attention_maps, ec))
    throw FileError("--attention-maps " + r.attention_maps + ": exists and is not a folder");
  return std::make_unique<AttentionMaps>(r.attention_maps, r.attention_maps_layers);
}

}  // namespace mmdit
