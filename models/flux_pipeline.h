// FluxPipeline (diffusers 0.42.1) for FLUX.1 dev / schnell: CLIP-L pooled output + T5 prompt encoding,
// packed 2x2 latents, custom sigmas linspace(1, 1/steps, steps) with the resolution-dependent shift mu
// (when the scheduler config asks for it), distilled guidance (dev), optional true CFG (two passes, with
// --cfg > 1 and a negative prompt), VAE decode with FLUX's scaling/shift.
//
// Defaults: 28 steps with a guidance embedding (dev, diffusers' num_inference_steps=28), 4 without (schnell,
// the number it is distilled for); --guidance 3.5 (ignored by schnell); --cfg 1 (no true CFG); T5 length
// 512; size 128 * vae_scale_factor (1024) as FluxPipeline's default_sample_size. --shift, when given,
// replaces the dynamic shift by that static shift.
#pragma once
#include <memory>
#include <vector>

#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {

std::unique_ptr<Pipeline> load_flux_pipeline(const GenerateRequest& r, const ModelInfo& model);

// np.linspace(1.0, 1 / steps, steps), the sigmas FluxPipeline passes to the scheduler.
std::vector<double> flux_sigmas(int steps);

}  // namespace mmdit
