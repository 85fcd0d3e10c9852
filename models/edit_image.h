// The input image of an edit (`mmdit edit --image`): its size decides the output's, and it is read into the
// VAE's input range.
#pragma once
#include <cstdint>

#include <ATen/ATen.h>

#include "models/pipeline.h"

namespace mmdit {

// Sets r.width/r.height from r.image (a PNG or JPEG). A size the model cannot take (not a multiple of `unit`) is
// refused naming the nearest one it can; with --resize the image is scaled to --width/--height when given, else to
// that nearest size. Given --width/--height that differ from the image need --resize. Throws UsageError /
// FormatError (unreadable or not an image).
void fit_edit_image(GenerateRequest& r, int64_t unit);

// The image as [1, 3, r.height, r.width] in [-1, 1] (diffusers' VaeImageProcessor.preprocess): grey is repeated to
// RGB, alpha dropped (PIL's convert("RGB")), scaled with antialiased bicubic when its size differs.
at::Tensor load_edit_image(const GenerateRequest& r, at::Device device, at::ScalarType dtype);

}  // namespace mmdit
