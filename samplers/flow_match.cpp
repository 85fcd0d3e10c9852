// The schedule must round exactly like numpy/torch: no fused multiply-add contraction here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "samplers/flow_match.h"

#include <cmath>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "core/config_fields.h"
#include "core/errors.h"

namespace mmdit {

FlowMatchConfig FlowMatchConfig::from_json(const nlohmann::json& j) {
  const ConfigFields f(j, "scheduler config");
  FlowMatchConfig c;
  f.get("num_train_timesteps", c.num_train_timesteps);
  f.get("shift", c.shift);
  f.get("use_dynamic_shifting", c.use_dynamic_shifting);
  f.get("base_shift", c.base_shift);
  f.get("max_shift", c.max_shift);
  f.get("base_image_seq_len", c.base_image_seq_len);
  f.get("max_image_seq_len", c.max_image_seq_len);
  double terminal = 0;
  f.get("shift_terminal", terminal);
  if (terminal != 0) c.shift_terminal = terminal;
  std::string shift_type = c.exponential_time_shift ? "exponential" : "linear";
  f.get("time_shift_type", shift_type, {"exponential", "linear"});
  c.exponential_time_shift = shift_type == "exponential";
  for (const char* k : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"}) {
    bool on = false;
    f.get(k, on);
    if (on) throw FormatError(std::string("scheduler config: ") + k + " is not supported");
  }
  return c;
}

double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len, double base_shift, double max_shift) {
  const double m = (max_shift - base_shift) / double(max_seq_len - base_seq_len);
  const double b = base_shift - m * double(base_seq_len);
  return double(image_seq_len) * m + b;
}

FlowMatchEulerScheduler::FlowMatchEulerScheduler(const FlowMatchConfig& c) : config_(c) {
  // __init__: float32 torch arithmetic over timesteps N..1; only the ends are used later.
  const int n = c.num_train_timesteps;
  auto train_sigma = [&](int t) {
    float s = float(t) / float(n);
    if (!c.use_dynamic_shifting) s = float(c.shift) * s / (1.0f + float(c.shift - 1.0) * s);
    return s;
  };
  sigma_max_ = train_sigma(n);
  sigma_min_ = train_sigma(1);
}

void FlowMatchEulerScheduler::set_timesteps(int steps, std::optional<double> mu) {
  if (steps < 1) throw UsageError("scheduler: the number of steps must be at least 1, got " + std::to_string(steps));
  if (config_.use_dynamic_shifting && !mu)
    throw UsageError("scheduler: use_dynamic_shifting needs mu (the resolution-dependent shift)");
  const double N = config_.num_train_timesteps;
  // np.linspace(sigma_max * N, sigma_min * N, steps) in float64, then / N.
  const double start = double(sigma_max_) * N, stop = double(sigma_min_) * N;
  std::vector<double> s(steps);
  const double step = steps > 1 ? (stop - start) / double(steps - 1) : 0.0;
  for (int i = 0; i < steps; ++i) s[i] = (steps > 1 ? double(i) * step : 0.0) + start;
  if (steps > 1) s[steps - 1] = stop;
  for (auto& v : s) v = v / N;
  // Shift in float64.
  for (auto& v : s) {
    if (config_.use_dynamic_shifting) {
      const double d = 1.0 / v - 1.0;
      v = config_.exponential_time_shift ? std::exp(*mu) / (std::exp(*mu) + d) : *mu / (*mu + d);
    } else {
      v = config_.shift * v / (1.0 + (config_.shift - 1.0) * v);
    }
  }
  if (config_.shift_terminal) {
    const double scale = (1.0 - s.back()) / (1.0 - *config_.shift_terminal);
    for (auto& v : s) v = 1.0 - (1.0 - v) / scale;
  }
  sigmas_.assign(s.begin(), s.end());  // to float32
  timesteps_.resize(steps);
  for (int i = 0; i < steps; ++i) timesteps_[i] = sigmas_[i] * float(config_.num_train_timesteps);
  sigmas_.push_back(0.0f);
}

void FlowMatchEulerScheduler::set_sigmas(const std::vector<double>& in, std::optional<double> mu) {
  if (in.empty()) throw UsageError("scheduler: custom sigmas are empty");
  if (config_.use_dynamic_shifting && !mu)
    throw UsageError("scheduler: use_dynamic_shifting needs mu (the resolution-dependent shift)");
  // np.array(sigmas).astype(float32), then numpy float32 arithmetic (python scalars are weak).
  std::vector<float> s(in.begin(), in.end());
  for (auto& v : s) {
    const float d = 1.0f / v - 1.0f;
    if (config_.use_dynamic_shifting) {
      const float e = config_.exponential_time_shift ? float(std::exp(*mu)) : float(*mu);
      v = e / (e + d);
    } else {
      v = float(config_.shift) * v / (1.0f + float(config_.shift - 1.0) * v);
    }
  }
  if (config_.shift_terminal) {
    const float scale = (1.0f - s.back()) / float(1.0 - *config_.shift_terminal);
    for (auto& v : s) v = 1.0f - (1.0f - v) / scale;
  }
  sigmas_ = s;
  timesteps_.resize(s.size());
  for (size_t i = 0; i < s.size(); ++i) timesteps_[i] = s[i] * float(config_.num_train_timesteps);
  sigmas_.push_back(0.0f);
}

at::Tensor FlowMatchEulerScheduler::step(const at::Tensor& model_output, const at::Tensor& sample, int index) const {
  if (index < 0 || index >= num_steps())
    throw UsageError("scheduler: step index " + std::to_string(index) + " outside 0.." + std::to_string(num_steps() - 1));
  // dt is a 0-dim float32 tensor: the product takes model_output's dtype, the sum float32.
  at::Tensor dt = at::scalar_tensor(sigmas_[index + 1] - sigmas_[index], at::kFloat);
  at::Tensor prev = sample.to(at::kFloat) + dt * model_output;
  return prev.to(model_output.scalar_type());
}

at::Tensor FlowMatchEulerScheduler::scale_noise(const at::Tensor& sample, const at::Tensor& noise, int index) const {
  if (index < 0 || index >= int(sigmas_.size()))
    throw UsageError("scheduler: noise index " + std::to_string(index) + " outside the schedule");
  at::Tensor sigma = at::full({1}, sigmas_[index], at::TensorOptions().dtype(at::kFloat)).to(sample.options());
  return sigma * noise + (1.0 - sigma) * sample;
}

}  // namespace mmdit
