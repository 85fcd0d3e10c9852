// CogVideoX text-to-video (diffusers' CogVideoXPipeline): T5 prompt encoding, CFG over [negative,
// positive], optional dynamic CFG, the DDIM or DPM CogVideoX scheduler, the causal 3D VAE.
#pragma once
#include <memory>

#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {

std::unique_ptr<Pipeline> load_cogvideox_pipeline(const GenerateRequest& r, const ModelInfo& m);

}  // namespace mmdit
