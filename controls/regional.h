// Regional prompts (InstantX's Regional-Prompting-FLUX, research/controls.md §9), for SD3/SD3.5 and FLUX.
// The pipeline encodes each region's prompt and lays the batch out for the first --region-steps steps as
//   [uncond], cond = the regions' prompts side by side (R x T text tokens), base = the base prompt,
// the uncond and base rows' text padded to R x T. The control (controls/regional.cpp) then gives the cond rows the
// official boolean mask (each region's text sees only itself and its image tokens; an image token sees its
// region's text and the image tokens of its region), masks the padding of the other rows (where the regions split
// the image, the same attention runs as dense calls on gathered tokens: RegionKernel below), and blends the cond
// rows' image attention output with the base row's, (1 - B) regional + B base, in every block; in the
// double-stream blocks (every SD3 block, FLUX's double blocks) the base row's image stream takes the blend too, as
// the official model carries one image stream there. Later steps are plain generation with the base prompt.
#pragma once
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "models/pipeline.h"

namespace mmdit {

// The regions of a request on the output's pixel grid: one bool [H, W] mask per text slot, the background (the
// pixels no region covers, with --region-background or the base prompt) appended when there are any.
struct RegionLayout {
  std::vector<std::string> prompts;
  at::Tensor pixels;  // bool [slots, height, width]
};

// Reads mask images and checks boxes against r.width x r.height; throws UsageError / FileError / FormatError
// naming the flag. max_slots: how many prompts the model's text budget allows.
RegionLayout region_layout(const GenerateRequest& r, int max_slots);

// The official mask resize (F.interpolate mode "nearest-exact"): [slots, H, W] -> [slots, h * w] bool.
at::Tensor region_tokens(const at::Tensor& pixels, int64_t h, int64_t w);

// How the regions' attention runs. Dense: where the regions split the image tokens (no overlap; the background
// slot covers the rest), the mask is block-diagonal once each region's tokens are gathered, so each region runs
// one dense attention call on its own text and image tokens (the flash kernel on CUDA), and a row holding one
// padded prompt one dense call on its real tokens; overlapping regions take the mask. Mask: always the one masked
// call (for comparison: mmdit bench --region-kernel mask, and the tests).
enum class RegionKernel { Dense, Mask };
void set_region_kernel(RegionKernel k);

}  // namespace mmdit
