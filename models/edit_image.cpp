#include "models/edit_image.h"

#include <algorithm>

#include "core/errors.h"
#include "core/image_io.h"

namespace mmdit {
namespace {

std::string size_text(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

// The nearest multiple of unit, at least one unit.
int64_t nearest(int64_t x, int64_t unit) { return std::max(unit, (x + unit / 2) / unit * unit); }

}  // namespace

void fit_edit_image(GenerateRequest& r, int64_t unit) {
  if (r.source_prompt.empty()) throw UsageError("--image: only for edits (mmdit edit --image IN --source-prompt ...)");
  const Image img = read_image(r.image);
  const int64_t w = img.width, h = img.height;
  const bool given = r.width > 0 || r.height > 0;
  if (r.resize) {
    if (r.width == 0) r.width = int(given ? nearest(w * r.height / h, unit) : nearest(w, unit));
    if (r.height == 0) r.height = int(given ? nearest(h * r.width / w, unit) : nearest(h, unit));
    return;  // the pipeline's own check names a --width/--height it cannot take
  }
  if (given && (r.width != w || r.height != h))
    throw UsageError("--image " + r.image + " is " + size_text(w, h) + ", not the " +
                     size_text(r.width ? r.width : w, r.height ? r.height : h) + " asked for: add --resize to scale it");
  if (w % unit || h % unit)
    throw UsageError("--image " + r.image + " is " + size_text(w, h) + "; this model takes multiples of " +
                     std::to_string(unit) + ": the nearest is " + size_text(nearest(w, unit), nearest(h, unit)) +
                     " (add --resize to scale it)");
  r.width = int(w), r.height = int(h);
}

at::Tensor load_edit_image(const GenerateRequest& r, at::Device device, at::ScalarType dtype) {
  const Image img = read_image(r.image);
  at::Tensor t = at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels}, at::kByte)
                     .to(at::kFloat)
                     .permute({2, 0, 1})
                     .unsqueeze(0);
  if (img.channels <= 2) t = t.narrow(1, 0, 1).repeat({1, 3, 1, 1});  // grey (+ alpha)
  else t = t.narrow(1, 0, 3);                                          // RGB (+ alpha)
  if (t.size(2) != r.height || t.size(3) != r.width)
    t = at::_upsample_bicubic2d_aa(t, {r.height, r.width}, false).clamp(0, 255);
  return (t / 127.5 - 1).to(device, dtype);
}

}  // namespace mmdit
