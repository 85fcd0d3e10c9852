// diffusers' FlowMatchEulerDiscreteScheduler (0.42.1) as the SD3 / FLUX pipelines use it: sigma
// schedule with static shift or resolution-dependent (dynamic) shift, timesteps = sigma * 1000, a final
// sigma 0, and the Euler step x + (sigma_next - sigma) * v. The schedule is computed without torch,
// reproducing diffusers' float32/float64 arithmetic bit for bit.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace at {
class Tensor;
}

namespace mmdit {

struct FlowMatchConfig {
  int num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int base_image_seq_len = 256;
  int max_image_seq_len = 4096;
  std::optional<double> shift_terminal;
  bool exponential_time_shift = true;  // time_shift_type "exponential" (else "linear")

  // From scheduler_config.json; FormatError for options this port lacks (karras/exponential/beta
  // sigmas, invert_sigmas, stochastic_sampling).
  static FlowMatchConfig from_json(const nlohmann::json& j);
};

// The pipelines' calculate_shift: mu linear in the image token count between (base_len, base_shift)
// and (max_len, max_shift).
double calculate_shift(int64_t image_seq_len, int64_t base_seq_len = 256, int64_t max_seq_len = 4096,
                       double base_shift = 0.5, double max_shift = 1.15);

class FlowMatchEulerScheduler {
 public:
  explicit FlowMatchEulerScheduler(const FlowMatchConfig& config = {});

  // The pipelines' default path (StableDiffusion3Pipeline passes sigmas=None): `steps` timesteps
  // evenly spaced between sigma_max and sigma_min of the training schedule, then shifted. `mu` is
  // required with use_dynamic_shifting (UsageError otherwise) and ignored without it.
  void set_timesteps(int steps, std::optional<double> mu = std::nullopt);
  // Custom sigmas (FluxPipeline passes linspace(1, 1/steps, steps)); shifted in float32 like diffusers.
  void set_sigmas(const std::vector<double>& sigmas, std::optional<double> mu = std::nullopt);

  int num_steps() const { return int(timesteps_.size()); }
  const std::vector<float>& sigmas() const { return sigmas_; }        // num_steps() + 1, last is 0
  const std::vector<float>& timesteps() const { return timesteps_; }  // num_steps(), sigma * 1000
  const FlowMatchConfig& config() const { return config_; }

  // Euler step from step index i: sample.float() + (sigma[i+1] - sigma[i]) * model_output, cast back to
  // model_output's dtype (diffusers' upcast and promotion rules).
  at::Tensor step(const at::Tensor& model_output, const at::Tensor& sample, int index) const;
  // Forward process for img2img: sigma[i] * noise + (1 - sigma[i]) * sample, in sample's dtype.
  at::Tensor scale_noise(const at::Tensor& sample, const at::Tensor& noise, int index) const;

 private:
  FlowMatchConfig config_;
  float sigma_min_ = 0, sigma_max_ = 1;
  std::vector<float> sigmas_, timesteps_;
};

}  // namespace mmdit
