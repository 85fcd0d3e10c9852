// diffusers' CogVideoXDDIMScheduler and CogVideoXDPMScheduler (0.42.1): scaled-linear betas in float64,
// the SNR shift alphas_cumprod / (s + (1 - s) * alphas_cumprod), optional zero-terminal-SNR rescaling,
// "linspace" / "leading" / "trailing" timestep spacing, epsilon / sample / v_prediction. The tables are
// computed without torch in float64 (as diffusers); the steps are small torch functions that use 0-dim
// float64 tensors for the coefficients, so dtype promotion equals diffusers'.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>


namespace mmdit {

struct CogVideoXSchedulerConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";  // "scaled_linear" or "linear"
  bool set_alpha_to_one = true;
  int steps_offset = 0;
  std::string prediction_type = "epsilon";      // "epsilon", "sample", "v_prediction"
  std::string timestep_spacing = "leading";     // "linspace", "leading", "trailing"
  bool rescale_betas_zero_snr = false;
  double snr_shift_scale = 3.0;

  // From scheduler_config.json; FormatError for values this port lacks (trained_betas,
  // squaredcos_cap_v2, unknown spacing/prediction types).
  static CogVideoXSchedulerConfig from_json(const nlohmann::json& j);
};

struct SchedulerStep {
  at::Tensor prev_sample;
  at::Tensor pred_original_sample;
};

class CogVideoXScheduler {
 public:
  explicit CogVideoXScheduler(const CogVideoXSchedulerConfig& config = {});

  // UsageError when steps < 1 or steps > num_train_timesteps.
  void set_timesteps(int steps);
  int num_steps() const { return int(timesteps_.size()); }
  const std::vector<int64_t>& timesteps() const { return timesteps_; }
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  double final_alpha_cumprod() const { return final_alpha_cumprod_; }
  const CogVideoXSchedulerConfig& config() const { return config_; }

  // CogVideoXDDIMScheduler.step (eta 0) at step index `index`.
  SchedulerStep step_ddim(const at::Tensor& model_output, const at::Tensor& sample, int index) const;
  // CogVideoXDPMScheduler.step at step index `index`: timestep_back is timesteps[index - 1] (none at
  // index 0), `old_pred_original_sample` the previous step's x0 (undefined at the first step). Draws
  // one noise tensor from `generator` (CPU, sample's dtype, then moved), and a second one when the
  // second-order update applies, in diffusers' order.
  SchedulerStep step_dpm(const at::Tensor& model_output, const at::Tensor& old_pred_original_sample,
                         const at::Tensor& sample, int index, at::Generator& generator) const;

 private:
  double alpha_at(int64_t t) const;
  double alpha_prev(int64_t t) const;
  at::Tensor predict_x0(const at::Tensor& model_output, const at::Tensor& sample, double alpha_t) const;
  void check_index(int index) const;

  CogVideoXSchedulerConfig config_;
  std::vector<double> alphas_cumprod_;
  double final_alpha_cumprod_ = 1.0;
  std::vector<int64_t> timesteps_;
};

}  // namespace mmdit
