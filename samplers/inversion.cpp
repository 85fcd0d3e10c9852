#include "samplers/inversion.h"

#include "core/errors.h"

namespace mmdit {

InversionMethod parse_inversion(const std::string& name) {
  if (name == "uniinv") return InversionMethod::UniInv;
  if (name == "euler") return InversionMethod::Euler;
  throw UsageError("--inversion: expected uniinv or euler, got '" + name + "'");
}

std::vector<at::Tensor> invert_flow(const at::Tensor& x0, const std::vector<float>& sigmas, InversionMethod method,
                                    const VelocityFn& velocity, const std::function<void(int, int)>& progress) {
  const int n = int(sigmas.size()) - 1;
  if (n < 1 || sigmas.back() != 0.0f) throw RuntimeFailure("inversion: the sigmas must fall to 0");
  const auto dtype = x0.scalar_type();
  // Interval i: from sigmas[i+1] up to sigmas[i]; dt as the scheduler computes it, in float32.
  auto dt = [&](int i) { return double(sigmas[size_t(i)] - sigmas[size_t(i) + 1]); };
  std::vector<at::Tensor> path(size_t(n) + 1);
  path[size_t(n)] = x0;
  at::Tensor z = x0.to(at::kFloat);
  if (method == InversionMethod::Euler) {
    for (int i = n - 1; i >= 0; --i) {
      at::Tensor v = velocity(path[size_t(i) + 1], i + 1);
      z = z + dt(i) * v;
      path[size_t(i)] = z.to(dtype);
      if (progress) progress(n - i, n);
    }
    return path;
  }
  // UniInv: the velocity at sigma 0 gives the first look-ahead; then every interval's velocity v, taken at the
  // look-ahead of its upper end, moves the path (z += dt v) and makes the next look-ahead (z + dt_next v).
  at::Tensor look = (z + dt(n - 1) * velocity(x0, n)).to(dtype);
  for (int i = n - 1; i >= 0; --i) {
    at::Tensor v = velocity(look, i);
    z = z + dt(i) * v;
    path[size_t(i)] = z.to(dtype);
    if (i > 0) look = (z + dt(i - 1) * v).to(dtype);
    if (progress) progress(n - i, n);
  }
  return path;
}

at::Tensor on_path(const std::vector<at::Tensor>& path, const at::Tensor& latents, int i) {
  if (path.empty()) return latents;
  at::Tensor out = latents.clone();
  out.narrow(0, 0, 1).copy_(path[size_t(i)]);
  return out;
}

}  // namespace mmdit
