// What the FLUX pipeline needs from the FreeFlux control's side (controls/freeflux.cpp): which pass comes first and
// how long it runs. Torch-free.
#pragma once
#include <string>

namespace mmdit {

// "freeflux-nonrigid", "freeflux-add", "freeflux-background".
bool is_freeflux(const std::string& method);
// The step whose attention gives FreeFlux's mask: the official 7 of 50 steps, scaled to `steps` (at least the
// second step, when there is one).
int freeflux_derive_step(int steps);

}  // namespace mmdit
