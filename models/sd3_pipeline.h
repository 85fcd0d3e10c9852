// StableDiffusion3Pipeline (diffusers 0.42.1) for SD3 / SD3.5: prompt encoding with CLIP-L + bigG + T5,
// flow-matching Euler sampling with CFG and skip-layer guidance, VAE decode.
#pragma once
#include <memory>

#include "core/model_folder.h"
#include "models/pipeline.h"

namespace mmdit {

std::unique_ptr<Pipeline> load_sd3_pipeline(const GenerateRequest& r, const ModelInfo& model);

}  // namespace mmdit
