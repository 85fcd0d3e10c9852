// Inverting a flow-matching Euler sampler: from a clean latent (sigma 0) back up the flow to the noise from which
// the sampler's steps lead to it, for editing a given image (`mmdit edit --image`, docs/CONTROLS.md). The result
// is the whole trajectory, so that an edit's source branch can follow it step by step.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace mmdit {

enum class InversionMethod {
  // Plain Euler up the flow: x(s_i) = x(s_i+1) + (s_i - s_i+1) v(x(s_i+1), s_i+1). The velocity is taken at the
  // lower end of each interval, where the sampler takes it at the upper end.
  Euler,
  // UniInv (ConsistEdit's real-image inverter, consistEdit/scheduler.py UniInvEulerScheduler): each interval takes
  // the velocity at a look-ahead of its upper end, so that the Euler sampler retraces the path; one model call
  // more than Euler in all.
  UniInv,
};

// "uniinv" or "euler"; UsageError naming --inversion otherwise.
InversionMethod parse_inversion(const std::string& name);

// velocity(x, i): the model's prediction at latent x and the sampler's step i (0..N-1), or i == N for sigma 0.
using VelocityFn = std::function<at::Tensor(const at::Tensor& x, int i)>;

// sigmas: the sampler's N+1 sigmas, falling to 0 (FlowMatchEulerScheduler::sigmas()). Returns N+1 latents:
// path[i] is the latent at sigmas[i]; path[N] is x0 and path[0] the noise the sampler starts from. The
// arithmetic is the scheduler's (float32 state, cast back to x0's dtype).
std::vector<at::Tensor> invert_flow(const at::Tensor& x0, const std::vector<float>& sigmas, InversionMethod method,
                                    const VelocityFn& velocity, const std::function<void(int, int)>& progress = {});

// `latents` with its first row (an edit's source) set to path[i]; `latents` itself when there is no path.
at::Tensor on_path(const std::vector<at::Tensor>& path, const at::Tensor& latents, int i);

}  // namespace mmdit
