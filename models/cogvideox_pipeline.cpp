#include "models/fp8.h"
#include "models/cogvideox_pipeline.h"

#include <cmath>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "core/errors.h"
#include "core/parallel.h"
#include "models/fused_ops.h"
#include "core/torch_util.h"
#include "controls/control.h"
#include "models/cogvideox_transformer.h"
#include "models/cogvideox_vae.h"
#include "models/t5_encoder.h"
#include "models/t5_tokenizer.h"
#include "samplers/cogvideox_schedulers.h"
#include "controls/consistedit.h"
#include "controls/kv_share.h"
#include "samplers/cfg_parallel.h"
#include "samplers/guidance.h"
#include "samplers/prompt_schedule.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

// The CFG scale at timestep t: constant, or the pipeline's use_dynamic_cfg formula with the integer timestep.
double guidance_scale(const GenerateRequest& r, int64_t t) {
  if (!r.dynamic_cfg) return r.cfg;
  return 1 + r.cfg * ((1 - std::cos(M_PI * std::pow(double(r.steps - t) / double(r.steps), 5.0))) / 2);
}

// One DDIM or DPM step of the latents; DPM keeps its previous x0 prediction in old_x0.
at::Tensor scheduler_step(const CogVideoXScheduler& sched, const std::string& sampler, const at::Tensor& pred,
                          at::Tensor& old_x0, const at::Tensor& latents, int i, at::Generator& gen) {
  if (sampler != "dpm") return sched.step_ddim(pred, latents, i).prev_sample;
  auto out = sched.step_dpm(pred, old_x0, latents, i, gen);
  old_x0 = out.pred_original_sample;
  return out.prev_sample;
}

class CogVideoXPipeline : public Pipeline {
 public:
  CogVideoXPipeline(const GenerateRequest& r, const ModelInfo& m);
  void resolve(GenerateRequest& r) const override;
  std::vector<Image> generate(const GenerateRequest& r, const std::function<void(int, int)>& step) override;
  std::vector<Video> generate_video(const GenerateRequest& r, const std::function<void(int, int)>& step) override;
  std::string name() const override { return name_; }
  bool is_video() const override { return true; }

 private:
  at::Tensor encode(const std::string& prompt, int max_sequence_length);
  // A multi-prompt video (samplers/prompt_schedule.h): the tiles' schedule, and the sampler.
  PromptSchedule schedule(const GenerateRequest& r) const;
  Video generate_multiprompt(const GenerateRequest& r, const std::function<void(int, int)>& step);
  // Latents [1, F, C, h, w] to frames (VAE decode, uint8).
  Video decode(at::Tensor latents, const GenerateRequest& r);
  ModelShape shape() const;

  std::string name_;
  at::Device device_;
  at::ScalarType dtype_;
  fs::path t5_dir_;
  std::optional<T5Tokenizer> tok_;
  std::shared_ptr<T5EncoderModel> t5_;
  std::shared_ptr<CogVideoXTransformer> transformer_;
  std::shared_ptr<AutoencoderKLCogVideoX> vae_;
  nlohmann::json scheduler_config_ = nlohmann::json::object();
  std::string default_sampler_ = "ddim";
  std::map<std::pair<std::string, int>, at::Tensor> cache_;
};

CogVideoXPipeline::CogVideoXPipeline(const GenerateRequest& r, const ModelInfo& m)
    : name_(m.variant.empty() ? "cogvideox" : m.variant),
      device_(parse_device(r.device)),
      dtype_(pick_dtype(r.dtype, device_)) {
  if (r.fp8) fp8::require(device_, dtype_);
  if (r.fp8_attention) fp8::require_attention(r.fp8);
  if (m.kind != ModelKind::PipelineFolder)
    throw UsageError("--model " + r.model + ": CogVideoX needs the diffusers pipeline folder (with model_index.json)");
  const ComponentInfo& sched = m.require("scheduler");
  scheduler_config_ = sched.config.is_object() ? sched.config : nlohmann::json::object();
  if (sched.class_name == "CogVideoXDPMScheduler") default_sampler_ = "dpm";
  else if (sched.class_name != "CogVideoXDDIMScheduler")
    throw FormatError(r.model + ": scheduler " + sched.class_name + " is not a CogVideoX scheduler");
  t5_dir_ = r.t5.empty() ? m.require("text_encoder").dir : fs::path(r.t5);
  tok_ = T5Tokenizer::load(r.tokenizer_dir.empty() ? m.require("tokenizer").dir : fs::path(r.tokenizer_dir));
  transformer_ = CogVideoXTransformer::load(m.require("transformer").dir, device_, dtype_);
  if (r.fp8) transformer_->to_fp8(r.fp8_attention);
  vae_ = AutoencoderKLCogVideoX::load(m.require("vae").dir, device_, dtype_);
}

void CogVideoXPipeline::resolve(GenerateRequest& r) const {
  const auto& c = transformer_->config();
  const int64_t s = vae_->config().spatial_scale(), unit = s * c.patch_size;
  if (r.width == 0) r.width = int(c.sample_width * s);
  if (r.height == 0) r.height = int(c.sample_height * s);
  if (r.width % unit || r.height % unit)
    throw UsageError("--width/--height " + std::to_string(r.width) + "x" + std::to_string(r.height) +
                     ": must be multiples of " + std::to_string(unit) + " for this model");
  const int64_t tc = vae_->config().temporal_compression_ratio;
  if (r.frames == 0) r.frames = int(c.sample_frames);
  if (r.frames < 1 || (r.frames - 1) % tc != 0)
    throw UsageError("--frames " + std::to_string(r.frames) + ": must be " + std::to_string(tc) + "k+1 (e.g. " +
                     std::to_string(tc * ((r.frames - 1) / tc) + 1) + " or " + std::to_string(tc * ((r.frames - 1) / tc + 1) + 1) + ")");
  if (r.fps == 0) r.fps = 8;
  if (r.steps == 0) r.steps = 50;
  if (r.cfg < 0) r.cfg = 6.0;
  if (r.sampler.empty()) r.sampler = default_sampler_;
  if (r.sampler != "ddim" && r.sampler != "dpm") throw UsageError("--sampler " + r.sampler + ": must be ddim or dpm");
  if (r.batch != 1) throw UsageError("--batch: CogVideoX makes one video per run");
  if (r.max_sequence_length == 0) r.max_sequence_length = int(c.max_text_seq_length);
  if (!c.use_rotary_positional_embeddings && r.max_sequence_length != c.max_text_seq_length)
    throw UsageError("--max-sequence-length: this model needs exactly " + std::to_string(c.max_text_seq_length) + " tokens");
  if (r.shift > 0) throw UsageError("--shift: CogVideoX's schedulers have no shift");
  if (r.dtype.empty()) r.dtype = short_dtype_name(dtype_);
  make_controls(r, shape());  // every control flag checked against this model before anything runs
  if (check_multiprompt(r, shape())) {
    if (c.patch_size_t) throw UsageError("--prompt given several times: multi-prompt video is not yet supported on "
                                         "CogVideoX 1.5 (temporal patches)");
    schedule(r);  // the overlap against the tile
    KvShareWindow w;
    if (!r.kv_share_steps.empty()) parse_kv_share_steps(r.kv_share_steps, r.steps, w);
    GenerateRequest plain = r;
    plain.prompts.clear(), plain.overlap = -1, plain.transition_tiles = 2, plain.kv_share_layers.clear();
    plain.kv_share_steps.clear(), plain.no_kv_share = false, plain.kv_share_words.clear();
    if (!make_controls(plain, shape()).empty())
      throw UsageError("--prompt given several times: a multi-prompt video does not take other attention controls "
                       "or guidance branches yet");
  }
}

PromptSchedule CogVideoXPipeline::schedule(const GenerateRequest& r) const {
  const int64_t tile = (r.frames - 1) / vae_->config().temporal_compression_ratio + 1;
  std::vector<int> holds;
  for (const auto& e : r.prompts) holds.push_back(e.tiles);
  return make_prompt_schedule(holds, tile, r.overlap >= 0 ? r.overlap : default_overlap(tile), r.transition_tiles);
}

at::Tensor CogVideoXPipeline::encode(const std::string& prompt, int max_len) {
  auto key = std::make_pair(prompt, max_len);
  if (auto it = cache_.find(key); it != cache_.end()) return it->second;
  if (!t5_) t5_ = T5EncoderModel::load(t5_dir_, device_, dtype_);
  torch::NoGradGuard no_grad;
  at::Tensor e = t5_->forward(at::tensor(tok_->encode(prompt, max_len), at::kLong).unsqueeze(0)).to(dtype_);
  cache_[key] = e;
  return e;
}

ModelShape CogVideoXPipeline::shape() const {
  const auto& c = transformer_->config();
  return {"cogvideox", int(c.num_layers), 0, int(c.num_attention_heads)};
}

std::vector<Video> CogVideoXPipeline::generate_video(const GenerateRequest& r, const std::function<void(int, int)>& step) {
  torch::NoGradGuard no_grad;
  fused::set_mode(r.no_fused ? fused::Mode::Off : fused::Mode::Auto);
  // Several GPUs (core/parallel.h): the plan of this run, active while it generates.
  const ParallelPlan plan = plan_parallel(world(), r.cfg > 1.0, shape().heads, name(), r);
  const PlanScope plan_scope(&plan);
  if (check_multiprompt(r, shape())) return {generate_multiprompt(r, step)};
  const auto& tc = transformer_->config();
  const bool cfg = r.cfg > 1.0;
  at::Tensor embeds = encode(r.prompt, r.max_sequence_length), neg_embeds;
  if (cfg) neg_embeds = encode(r.negative_prompt, r.max_sequence_length);
  if (device_.is_cuda()) t5_.reset();  // the encodings are cached; the transformer needs the memory

  CogVideoXScheduler sched(CogVideoXSchedulerConfig::from_json(scheduler_config_));
  sched.set_timesteps(r.steps);
  const int64_t tcomp = vae_->config().temporal_compression_ratio, s = vae_->config().spatial_scale();
  int64_t frames = r.frames;
  int64_t latent_frames = (frames - 1) / tcomp + 1, additional = 0;
  if (tc.patch_size_t && latent_frames % tc.patch_size_t) {
    additional = tc.patch_size_t - latent_frames % tc.patch_size_t;
    frames += additional * tcomp;
    latent_frames = (frames - 1) / tcomp + 1;
  }
  // prepare_latents: randn_tensor on the CPU generator in the model dtype, then moved.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  at::Tensor latents =
      at::randn({1, latent_frames, tc.in_channels, r.height / s, r.width / s}, gen, at::TensorOptions().dtype(dtype_)).to(device_);
  std::optional<std::pair<at::Tensor, at::Tensor>> rope;
  if (tc.use_rotary_positional_embeddings) rope = cogvideox_rotary_embeddings(tc, r.height, r.width, latent_frames, s);

  // The guidance stage owns the batch: [uncond], cond, one perturbed branch per guidance control (STG, SLG, PAG).
  Guidance guidance(GuidanceConfig::from_request(r, cfg), make_controls(r, shape()), shape());
  GenerationInfo info;
  info.words = tok_->word_tokens(r.prompt, r.max_sequence_length);
  info.frames = tc.patch_size_t ? latent_frames / tc.patch_size_t : latent_frames;
  info.grid_h = r.height / s / tc.patch_size, info.grid_w = r.width / s / tc.patch_size;
  info.width = r.width, info.height = r.height, info.fps = r.fps;
  guidance.begin(info);
  at::Tensor old_x0;
  for (int i = 0; i < r.steps; ++i) {
    const int64_t t = sched.timesteps()[size_t(i)];
    const double g = guidance_scale(r, t);
    at::Tensor pred;
    if (guidance.zero_step(i)) {
      pred = at::zeros_like(latents, at::kFloat);
    } else {
      const ControlContext ctx = guidance.context(i, r.steps, double(t), 1);
      at::Tensor x = Guidance::by_branch(ctx, latents, latents);
      const BatchSplit split(ctx);  // CFG-parallel: this rank's rows (samplers/cfg_parallel.h)
      at::Tensor ts = at::full({split.rows()}, t, at::TensorOptions().dtype(at::kLong).device(device_));
      at::Tensor out = split.gather(transformer_->forward(split.take(x), split.take(Guidance::by_branch(ctx, embeds, neg_embeds)),
                                                         ts, rope, std::nullopt, &split.context()));
      pred = guidance.combine(out.to(at::kFloat), ctx, g);
    }
    latents = scheduler_step(sched, r.sampler, pred, old_x0, latents, i, gen).to(dtype_);
    if (step) step(i + 1, r.steps);
  }
  Video out = decode(latents.narrow(1, additional, latents.size(1) - additional), r);
  guidance.end(out.frames);
  return {out};
}

Video CogVideoXPipeline::decode(at::Tensor latents, const GenerateRequest& r) {
  latents = (1 / vae_->config().scaling_factor) * latents.permute({0, 2, 1, 3, 4});
  CogVideoXTiling tiling;
  at::Tensor video = vae_->decode(latents, r.vae_tiling ? &tiling : nullptr);  // [1, C, F, H, W]
  // VideoProcessor.postprocess_video(output_type="np"), then x 255 rounded.
  at::Tensor u8 = (video / 2 + 0.5).clamp(0, 1).to(at::kFloat).mul(255).round().to(at::kByte);
  Video out;
  out.fps = r.fps;
  out.frames = images_from_u8(u8[0].permute({1, 2, 3, 0}));  // [F, H, W, C]
  return out;
}

Video CogVideoXPipeline::generate_multiprompt(const GenerateRequest& r, const std::function<void(int, int)>& step) {
  const auto& tc = transformer_->config();
  const bool cfg = r.cfg > 1.0;
  const PromptSchedule plan = schedule(r);
  const int64_t T = plan.tile, L = plan.latent_frames(), s = vae_->config().spatial_scale();
  // The text condition of each tile: its prompts' T5 embeddings mixed linearly (transition tiles).
  std::vector<at::Tensor> prompt_embeds;
  for (const auto& e : r.prompts) prompt_embeds.push_back(encode(e.prompt, r.max_sequence_length));
  std::vector<at::Tensor> conds;
  for (const PromptTile& t : plan.tiles)
    conds.push_back(((1 - t.weight) * prompt_embeds[size_t(t.first)].to(at::kFloat) +
                     t.weight * prompt_embeds[size_t(t.second)].to(at::kFloat)).to(dtype_));
  at::Tensor neg = cfg ? encode(r.negative_prompt, r.max_sequence_length) : at::Tensor();
  if (device_.is_cuda()) t5_.reset();

  CogVideoXScheduler sched(CogVideoXSchedulerConfig::from_json(scheduler_config_));
  sched.set_timesteps(r.steps);
  // One long noise tensor: adjacent tiles share their overlapping frames.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  at::Tensor latents =
      at::randn({1, L, tc.in_channels, r.height / s, r.width / s}, gen, at::TensorOptions().dtype(dtype_)).to(device_);
  std::optional<std::pair<at::Tensor, at::Tensor>> rope;
  if (tc.use_rotary_positional_embeddings) rope = cogvideox_rotary_embeddings(tc, r.height, r.width, T, s);
  const at::Tensor weights = tile_weights(T).to(device_).view({1, T, 1, 1, 1});

  KvShareWindow window = default_kv_share(int(tc.num_layers), r.steps);
  if (!r.kv_share_layers.empty()) window.layers = r.kv_share_layers;
  if (!r.kv_share_steps.empty()) parse_kv_share_steps(r.kv_share_steps, r.steps, window);
  std::unique_ptr<Control> kv = make_kv_share(window.layers, window.first_step, window.last_step);
  // --kv-share-words: DiTCtrl's mask-guided sharing; each tile's subject tokens are those of the prompts it mixes.
  std::unique_ptr<MaskedKvShare> masked;
  std::vector<std::vector<int64_t>> tile_words;
  if (!r.kv_share_words.empty()) {
    std::vector<std::vector<int64_t>> prompt_words;
    std::stringstream list(r.kv_share_words);
    std::string word;
    for (size_t j = 0; std::getline(list, word, ','); ++j) {
      const auto& prompt = r.prompts.at(j).prompt;
      auto at = token_positions(tok_->encode(prompt, r.max_sequence_length), tok_->tokenize(word));
      if (word.empty() || at.empty())
        throw UsageError("--kv-share-words: '" + word + "' is not a word of prompt " + std::to_string(j + 1) + " ('" + prompt + "')");
      prompt_words.push_back(at);
    }
    for (const PromptTile& t : plan.tiles) {
      std::vector<int64_t> cols;
      if (t.weight < 1) cols = prompt_words[size_t(t.first)];
      if (t.weight > 0) cols.insert(cols.end(), prompt_words[size_t(t.second)].begin(), prompt_words[size_t(t.second)].end());
      tile_words.push_back(cols);
    }
    const int64_t pt = tc.patch_size_t ? tc.patch_size_t : 1;
    masked = make_masked_kv_share(window.layers, window.first_step, window.last_step, T / pt,
                                  r.height / s / tc.patch_size, r.width / s / tc.patch_size);
  }

  at::Tensor old_x0;
  const int64_t pairs = int64_t(plan.tiles.size()) - 1;
  for (int i = 0; i < r.steps; ++i) {
    const int64_t t = sched.timesteps()[size_t(i)];
    const double g = guidance_scale(r, t);
    // Every adjacent tile pair as [source, target] in each branch; the tiles' predictions blended per frame.
    at::Tensor v_sum = at::zeros({1, L, latents.size(2), latents.size(3), latents.size(4)},
                                 latents.options().dtype(at::kFloat));
    at::Tensor w_sum = at::zeros({1, L, 1, 1, 1}, v_sum.options());
    for (int64_t k = 0; k < pairs; ++k) {
      const at::Tensor xs = latents.narrow(1, plan.begin(size_t(k)), T), xt = latents.narrow(1, plan.begin(size_t(k + 1)), T);
      ControlContext ctx;
      ctx.model = shape();
      ctx.step = i, ctx.num_steps = r.steps, ctx.timestep = double(t);
      ctx.pairs = true;
      if (masked) {
        masked->set_words(tile_words[size_t(k)], tile_words[size_t(k + 1)]);
        ctx.controls = {masked.get()};
      } else if (!r.no_kv_share) {
        ctx.controls = {kv.get()};
      }
      at::Tensor x, emb;
      if (cfg) {
        ctx.rows = {{Branch::Uncond, 0, 0.0, 0, 2}, {Branch::Cond, 0, 0.0, 2, 4}};
        x = at::cat({xs, xt, xs, xt});
        emb = at::cat({neg, neg, conds[size_t(k)], conds[size_t(k + 1)]});
      } else {
        ctx.rows = {{Branch::Cond, 0, 0.0, 0, 2}};
        x = at::cat({xs, xt});
        emb = at::cat({conds[size_t(k)], conds[size_t(k + 1)]});
      }
      at::Tensor ts = at::full({x.size(0)}, t, at::TensorOptions().dtype(at::kLong).device(device_));
      at::Tensor out = transformer_->forward(x, emb, ts, rope, std::nullopt, &ctx).to(at::kFloat);
      at::Tensor pred = cfg ? out.narrow(0, 0, 2) + g * (out.narrow(0, 2, 2) - out.narrow(0, 0, 2)) : out;
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t b = plan.begin(size_t(k + j));
        v_sum.narrow(1, b, T).add_(weights * pred.narrow(0, j, 1));
        w_sum.narrow(1, b, T).add_(weights);
      }
    }
    const at::Tensor pred = v_sum / w_sum;
    latents = scheduler_step(sched, r.sampler, pred, old_x0, latents, i, gen).to(dtype_);
    if (step) step(i + 1, r.steps);
  }
  return decode(latents, r);
}

std::vector<Image> CogVideoXPipeline::generate(const GenerateRequest& r, const std::function<void(int, int)>& step) {
  std::vector<Image> all;
  for (auto& v : generate_video(r, step))
    for (auto& f : v.frames) all.push_back(std::move(f));
  return all;
}

}  // namespace

std::unique_ptr<Pipeline> load_cogvideox_pipeline(const GenerateRequest& r, const ModelInfo& m) {
  return std::make_unique<CogVideoXPipeline>(r, m);
}

}  // namespace mmdit
