// The controls by name: each controls/*.cpp file provides its factory, listed in registry.cpp. A factory returns
// nullptr when the request does not ask for its control, and throws UsageError (naming the flag) when the request
// asks for something the model cannot take.
#pragma once
#include <memory>

#include "controls/control.h"

namespace mmdit {

using ControlFactory = std::unique_ptr<Control> (*)(const GenerateRequest& r, const ModelShape& model);

std::unique_ptr<Control> make_pag(const GenerateRequest& r, const ModelShape& model);              // pag.cpp
std::unique_ptr<Control> make_skip_layer_guidance(const GenerateRequest& r, const ModelShape& model);  // skip_guidance.cpp
std::unique_ptr<Control> make_stg(const GenerateRequest& r, const ModelShape& model);              // skip_guidance.cpp
std::unique_ptr<Control> make_text_scale(const GenerateRequest& r, const ModelShape& model);       // blocks.cpp
std::unique_ptr<Control> make_skip_blocks(const GenerateRequest& r, const ModelShape& model);      // blocks.cpp
std::unique_ptr<Control> make_attention_maps(const GenerateRequest& r, const ModelShape& model);   // attention_maps.cpp
std::unique_ptr<Control> make_regional(const GenerateRequest& r, const ModelShape& model);         // regional.cpp
std::unique_ptr<Control> make_consistedit(const GenerateRequest& r, const ModelShape& model);      // consistedit.cpp
std::unique_ptr<Control> make_freeflux(const GenerateRequest& r, const ModelShape& model);         // freeflux.cpp

}  // namespace mmdit
