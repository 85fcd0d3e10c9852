// The tables must round exactly like torch/numpy: no fused multiply-add contraction here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "samplers/cogvideox_schedulers.h"

#include <cmath>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "core/errors.h"

namespace mmdit {

CogVideoXSchedulerConfig CogVideoXSchedulerConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "scheduler config");
  CogVideoXSchedulerConfig c;
  f.get("num_train_timesteps", c.num_train_timesteps);
  f.get("beta_start", c.beta_start);
  f.get("beta_end", c.beta_end);
  f.get("beta_schedule", c.beta_schedule, {"scaled_linear", "linear"});
  f.get("set_alpha_to_one", c.set_alpha_to_one);
  f.get("steps_offset", c.steps_offset, 0);
  f.get("prediction_type", c.prediction_type, {"epsilon", "sample", "v_prediction"});
  f.get("timestep_spacing", c.timestep_spacing, {"linspace", "leading", "trailing"});
  f.get("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  f.get("snr_shift_scale", c.snr_shift_scale);
  if (f.has("trained_betas")) throw FormatError("scheduler config: trained_betas is not supported");
  return c;
}

namespace {

// torch.linspace's CPU kernel: the first half counts up from start, the second half down from end.
std::vector<double> torch_linspace(double start, double end, int64_t steps) {
  std::vector<double> v(static_cast<size_t>(steps));
  if (steps == 1) {
    v[0] = start;
    return v;
  }
  const double step = (end - start) / double(steps - 1);
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i) v[size_t(i)] = i < half ? start + step * double(i) : end - step * double(steps - i - 1);
  return v;
}

}  // namespace

CogVideoXScheduler::CogVideoXScheduler(const CogVideoXSchedulerConfig& c) : config_(c) {
  const int n = c.num_train_timesteps;
  std::vector<double> betas;
  if (c.beta_schedule == "scaled_linear") {
    betas = torch_linspace(std::sqrt(c.beta_start), std::sqrt(c.beta_end), n);  // python's ** 0.5 is sqrt
    for (auto& b : betas) b = b * b;
  } else {
    // torch.linspace in float32.
    const float fs = float(c.beta_start), fe = float(c.beta_end);
    const float step = (fe - fs) / float(n > 1 ? n - 1 : 1);
    betas.resize(size_t(n));
    for (int i = 0; i < n; ++i)
      betas[size_t(i)] = double(i < n / 2 ? fs + step * float(i) : fe - step * float(n - i - 1));
  }
  alphas_cumprod_.resize(size_t(n));
  double prod = 1.0;
  for (int i = 0; i < n; ++i) {
    prod = prod * (1.0 - betas[size_t(i)]);
    alphas_cumprod_[size_t(i)] = prod;
  }
  const double s = c.snr_shift_scale;
  for (auto& a : alphas_cumprod_) a = a / (s + (1 - s) * a);
  if (c.rescale_betas_zero_snr) {
    std::vector<double> r(alphas_cumprod_.size());
    for (size_t i = 0; i < r.size(); ++i) r[i] = std::sqrt(alphas_cumprod_[i]);
    const double s0 = r.front(), sT = r.back();
    for (auto& v : r) v = v - sT;
    const double k = s0 / (s0 - sT);
    for (auto& v : r) v = v * k;
    for (size_t i = 0; i < r.size(); ++i) alphas_cumprod_[i] = r[i] * r[i];
  }
  final_alpha_cumprod_ = c.set_alpha_to_one ? 1.0 : alphas_cumprod_[0];
}

void CogVideoXScheduler::set_timesteps(int steps) {
  const int n = config_.num_train_timesteps;
  if (steps < 1) throw UsageError("scheduler: the number of steps must be at least 1, got " + std::to_string(steps));
  if (steps > n)
    throw UsageError("scheduler: " + std::to_string(steps) + " steps exceed the " + std::to_string(n) +
                     " training timesteps");
  timesteps_.clear();
  if (config_.timestep_spacing == "linspace") {
    // np.linspace(0, n - 1, steps).round()[::-1]
    const double stop = double(n - 1);
    const double step = steps > 1 ? stop / double(steps - 1) : 0.0;
    for (int i = steps - 1; i >= 0; --i) {
      double v = steps > 1 ? double(i) * step : 0.0;
      if (i == steps - 1 && steps > 1) v = stop;
      timesteps_.push_back(int64_t(std::nearbyint(v)));
    }
  } else if (config_.timestep_spacing == "leading") {
    const int ratio = n / steps;
    for (int i = steps - 1; i >= 0; --i) timesteps_.push_back(int64_t(i) * ratio + config_.steps_offset);
  } else {
    // np.round(np.arange(n, 0, -n / steps)).astype(int64) - 1
    const double ratio = double(n) / double(steps);
    const auto count = int64_t(std::ceil((0.0 - double(n)) / -ratio));
    for (int64_t i = 0; i < count; ++i) timesteps_.push_back(int64_t(std::nearbyint(double(n) + double(i) * -ratio)) - 1);
  }
}

void CogVideoXScheduler::check_index(int index) const {
  if (timesteps_.empty()) throw UsageError("scheduler: set_timesteps was not called");
  if (index < 0 || index >= num_steps())
    throw UsageError("scheduler: step index " + std::to_string(index) + " outside 0.." + std::to_string(num_steps() - 1));
}

double CogVideoXScheduler::alpha_at(int64_t t) const {
  if (t < 0 || t >= int64_t(alphas_cumprod_.size())) throw UsageError("scheduler: timestep " + std::to_string(t) + " out of range");
  return alphas_cumprod_[size_t(t)];
}

double CogVideoXScheduler::alpha_prev(int64_t t) const {
  const int64_t prev = t - config_.num_train_timesteps / num_steps();
  return prev >= 0 ? alphas_cumprod_[size_t(prev)] : final_alpha_cumprod_;
}

namespace {
// A 0-dim float64 CPU tensor: diffusers' coefficients are such tensors, and multiplying one with a
// float32/bf16 tensor keeps the tensor's dtype (the scalar is rounded to it).
at::Tensor d(double v) { return at::scalar_tensor(v, at::TensorOptions().dtype(at::kDouble)); }
}  // namespace

at::Tensor CogVideoXScheduler::predict_x0(const at::Tensor& model_output, const at::Tensor& sample, double a) const {
  const double b = 1 - a;
  if (config_.prediction_type == "epsilon") return (sample - d(std::sqrt(b)) * model_output) / d(std::sqrt(a));
  if (config_.prediction_type == "sample") return model_output;
  return d(std::sqrt(a)) * sample - d(std::sqrt(b)) * model_output;
}

SchedulerStep CogVideoXScheduler::step_ddim(const at::Tensor& model_output, const at::Tensor& sample, int index) const {
  check_index(index);
  const int64_t t = timesteps_[size_t(index)];
  const double a = alpha_at(t), ap = alpha_prev(t);
  at::Tensor x0 = predict_x0(model_output, sample, a);
  const double a_t = std::sqrt((1 - ap) / (1 - a));
  const double b_t = std::sqrt(ap) - std::sqrt(a) * a_t;
  return {d(a_t) * sample + d(b_t) * x0, x0};
}

SchedulerStep CogVideoXScheduler::step_dpm(const at::Tensor& model_output, const at::Tensor& old_x0,
                                           const at::Tensor& sample, int index, at::Generator& generator) const {
  check_index(index);
  const int64_t t = timesteps_[size_t(index)];
  const int64_t prev_t = t - config_.num_train_timesteps / num_steps();
  const double a = alpha_at(t), ap = alpha_prev(t);
  const bool has_back = index > 0;
  const double ab = has_back ? alpha_at(timesteps_[size_t(index - 1)]) : 0.0;
  at::Tensor x0 = predict_x0(model_output, sample, a);
  // get_variables / get_mult, in float64 like diffusers' 0-dim tensors.
  const double lamb = std::log(std::sqrt(a / (1 - a)));
  const double lamb_next = std::log(std::sqrt(ap / (1 - ap)));
  const double h = lamb_next - lamb;
  double r = 0;
  if (has_back) {
    const double lamb_prev = std::log(std::sqrt(ab / (1 - ab)));
    r = (lamb - lamb_prev) / h;
  }
  const double mult1 = std::sqrt((1 - ap) / (1 - a)) * std::exp(-h);
  const double mult2 = std::expm1(-2 * h) * std::sqrt(ap);
  const double mult_noise = std::sqrt(1 - ap) * std::sqrt(1 - std::exp(-2 * h));
  auto draw = [&] {
    return at::randn(sample.sizes(), generator, at::TensorOptions().dtype(sample.scalar_type())).to(sample.device());
  };
  at::Tensor noise = draw();
  at::Tensor prev = d(mult1) * sample - d(mult2) * x0 + d(mult_noise) * noise;
  if (!old_x0.defined() || prev_t < 0) return {prev, x0};
  const double mult3 = 1 + 1 / (2 * r), mult4 = 1 / (2 * r);
  at::Tensor denoised_d = d(mult3) * x0 - d(mult4) * old_x0;
  noise = draw();
  return {d(mult1) * sample - d(mult2) * denoised_d + d(mult_noise) * noise, x0};
}

}  // namespace mmdit
