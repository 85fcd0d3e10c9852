#include "models/fp8.h"
#include "models/sd3_pipeline.h"

#include <climits>
#include <map>
#include <optional>

#include <torch/torch.h>

#include "core/errors.h"
#include "models/fused_ops.h"
#include "core/log.h"
#include "core/parallel.h"
#include "core/torch_util.h"
#include "core/weights.h"
#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "models/edit_image.h"
#include "models/sd3_transformer.h"
#include "models/step_graph.h"
#include "models/t5_encoder.h"
#include "models/t5_tokenizer.h"
#include "models/vae.h"
#include "controls/consistedit.h"
#include "controls/control.h"
#include "controls/regional.h"
#include "samplers/flow_match.h"
#include "samplers/cfg_parallel.h"
#include "samplers/guidance.h"
#include "samplers/inversion.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

// Where each part of the pipeline comes from: a diffusers folder, or a single-file checkpoint plus
// separate encoder files/folders and a tokenizer folder.
struct Sources {
  fs::path transformer_dir, vae_dir, clip_l, clip_g, t5;  // folders or files; empty = absent
  fs::path tok_l, tok_g, tok_t5;
  std::optional<WeightStore> single_file;  // set for single-file checkpoints
  nlohmann::json scheduler_config = nlohmann::json::object();
  bool t5_absent = false;  // the model has no T5 (zeros, as diffusers)
};

struct Encoding {
  at::Tensor embeds;  // [1, 77 + T5 tokens, joint_attention_dim]
  at::Tensor pooled;  // [1, pooled_projection_dim]
};

class Sd3Pipeline : public Pipeline {
 public:
  Sd3Pipeline(const GenerateRequest& r, const ModelInfo& m);
  void resolve(GenerateRequest& r) const override;
  std::vector<Image> generate(const GenerateRequest& r, const std::function<void(int, int)>& step) override;
  std::string name() const override { return name_; }

 private:
  void load_transformer_and_vae();
  void load_encoders();
  void release_encoders();
  Encoding encode(const std::string& prompt, int max_sequence_length);
  ModelShape shape() const;
  std::vector<int64_t> edit_tokens(const GenerateRequest& r) const;
  at::Tensor clip_hidden(const ClipTokenizer& tok, ClipTextModel& enc, const std::string& prompt, at::Tensor& pooled);

  Sources src_;
  std::string name_;
  at::Device device_;
  at::ScalarType dtype_;
  std::optional<ClipTokenizer> tok_l_, tok_g_;
  std::optional<T5Tokenizer> tok_t5_;
  std::shared_ptr<ClipTextModel> clip_l_, clip_g_;
  std::shared_ptr<T5EncoderModel> t5_;
  std::shared_ptr<SD3Transformer> transformer_;
  std::shared_ptr<AutoencoderKL> vae_;
  std::map<std::pair<std::string, int>, Encoding> cache_;  // (prompt, T5 length) -> encoding
};

Sources find_sources(const GenerateRequest& r, const ModelInfo& m) {
  Sources s;
  if (m.kind == ModelKind::PipelineFolder) {
    s.transformer_dir = m.require("transformer").dir;
    s.vae_dir = m.require("vae").dir;
    s.clip_l = m.require("text_encoder").dir;
    s.clip_g = m.require("text_encoder_2").dir;
    s.t5 = m.component_dir("text_encoder_3");  // optional: without it, zeros (as diffusers)
    s.tok_l = m.require("tokenizer").dir;
    s.tok_g = m.require("tokenizer_2").dir;
    s.tok_t5 = m.component_dir("tokenizer_3");
    if (const ComponentInfo* sc = m.component("scheduler")) s.scheduler_config = sc->config;
  } else if (m.kind == ModelKind::SingleFile) {
    s.single_file = WeightStore::open(r.model);
    s.scheduler_config = {{"num_train_timesteps", 1000}, {"shift", 3.0}};  // SD3/SD3.5 scheduler config
  } else {
    throw UsageError("--model " + r.model + ": a transformer folder alone is not a pipeline; pass the diffusers "
                     "folder that holds it (with model_index.json) or a single-file checkpoint");
  }
  // Separate encoder files/folders override what the model holds.
  if (!r.clip_l.empty()) s.clip_l = r.clip_l;
  if (!r.clip_g.empty()) s.clip_g = r.clip_g;
  if (!r.t5.empty()) s.t5 = r.t5;
  if (!r.tokenizer_dir.empty()) {
    const fs::path d = r.tokenizer_dir;
    for (auto [p, sub] : {std::pair{&s.tok_l, "tokenizer"}, {&s.tok_g, "tokenizer_2"}, {&s.tok_t5, "tokenizer_3"}}) {
      if (!fs::is_directory(d / sub)) throw FileError("--tokenizer-dir " + d.string() + ": no " + sub + "/ subfolder");
      *p = d / sub;
    }
  }
  if (s.single_file) {
    const auto& st = *s.single_file;
    auto has_prefix = [&](const std::string& prefix) {
      for (const auto& n : st.names())
        if (n.compare(0, prefix.size(), prefix) == 0) return true;
      return false;
    };
    if (s.clip_l.empty() && !has_prefix("text_encoders.clip_l."))
      throw UsageError("--model " + r.model + " holds no CLIP-L text encoder: pass --clip-l FILE_OR_FOLDER");
    if (s.clip_g.empty() && !has_prefix("text_encoders.clip_g."))
      throw UsageError("--model " + r.model + " holds no CLIP-G text encoder: pass --clip-g FILE_OR_FOLDER");
    if (s.t5.empty() && !has_prefix("text_encoders.t5xxl.")) s.t5_absent = true;  // diffusers: zeros
    if (s.tok_l.empty())
      throw UsageError("--model " + r.model + ": single-file checkpoints need --tokenizer-dir (a folder with "
                       "tokenizer/, tokenizer_2/ and tokenizer_3/, such as a diffusers SD3 folder)");
  }
  if (s.t5.empty() && !s.single_file) s.t5_absent = true;
  return s;
}

// An encoder given as a folder (transformers layout) or as a file (plain or SAI-prefixed names).
template <typename Model, typename Config>
std::shared_ptr<Model> load_encoder(const fs::path& path, const std::optional<WeightStore>& single,
                                    const std::string& prefix, const Config& builtin, const at::Device& dev,
                                    at::ScalarType dtype) {
  if (!path.empty() && fs::is_directory(path)) return Model::load(path, dev, dtype);
  WeightStore store = path.empty() ? *single : WeightStore::open(path);
  bool prefixed = false;
  for (const auto& n : store.names())
    if (n.compare(0, prefix.size(), prefix) == 0) {
      prefixed = true;
      break;
    }
  return Model::load(prefixed ? store.with_prefix(prefix) : store, builtin, dev, dtype);
}

Sd3Pipeline::Sd3Pipeline(const GenerateRequest& r, const ModelInfo& m)
    : src_(find_sources(r, m)),
      name_(m.variant.empty() ? "sd3" : m.variant),
      device_(parse_device(r.device)),
      dtype_(pick_dtype(r.dtype, device_)) {
  if (r.fp8) fp8::require(device_, dtype_);
  if (r.fp8_attention) fp8::refuse_attention("SD3");
  tok_l_ = ClipTokenizer::load(src_.tok_l);
  tok_g_ = ClipTokenizer::load(src_.tok_g);
  if (!src_.t5_absent) {
    if (src_.tok_t5.empty()) throw UsageError("--model " + r.model + ": a T5 encoder needs tokenizer_3/ (--tokenizer-dir)");
    tok_t5_ = T5Tokenizer::load(src_.tok_t5);
  }
  load_transformer_and_vae();
  if (r.fp8) transformer_->to_fp8();
}

void Sd3Pipeline::load_transformer_and_vae() {
  if (src_.single_file) {
    transformer_ = load_sd3_single_file(*src_.single_file, infer_sd3_config(*src_.single_file), device_, dtype_);
    vae_ = load_vae_single_file(*src_.single_file, infer_vae_config(*src_.single_file), device_, dtype_);
  } else {
    transformer_ = SD3Transformer::load(src_.transformer_dir, device_, dtype_);
    vae_ = AutoencoderKL::load(src_.vae_dir, device_, dtype_);
  }
  if (src_.single_file) name_ = "sd3 single-file (" + std::to_string(transformer_->config().num_layers) + " layers)";
}

void Sd3Pipeline::load_encoders() {
  if (clip_l_) return;
  clip_l_ = load_encoder<ClipTextModel>(src_.clip_l, src_.single_file, "text_encoders.clip_l.transformer.",
                                        ClipTextConfig::clip_l(), device_, dtype_);
  clip_g_ = load_encoder<ClipTextModel>(src_.clip_g, src_.single_file, "text_encoders.clip_g.transformer.",
                                        ClipTextConfig::clip_g(), device_, dtype_);
  if (!src_.t5_absent)
    t5_ = load_encoder<T5EncoderModel>(src_.t5, src_.single_file, "text_encoders.t5xxl.transformer.",
                                       T5Config::t5_xxl(), device_, dtype_);
}

void Sd3Pipeline::release_encoders() {
  clip_l_.reset();
  clip_g_.reset();
  t5_.reset();
}

at::Tensor Sd3Pipeline::clip_hidden(const ClipTokenizer& tok, ClipTextModel& enc, const std::string& prompt,
                                    at::Tensor& pooled) {
  auto ids = tok.encode(prompt, 77);
  auto out = enc.forward(at::tensor(ids, at::kLong).unsqueeze(0));
  pooled = out.text_embeds;
  return out.hidden_states[out.hidden_states.size() - 2];  // penultimate layer, as the SD3 pipeline
}

Encoding Sd3Pipeline::encode(const std::string& prompt, int max_sequence_length) {
  auto key = std::make_pair(prompt, max_sequence_length);
  if (auto it = cache_.find(key); it != cache_.end()) return it->second;
  load_encoders();
  torch::NoGradGuard no_grad;
  at::Tensor pooled_l, pooled_g;
  at::Tensor clip = at::cat({clip_hidden(*tok_l_, *clip_l_, prompt, pooled_l), clip_hidden(*tok_g_, *clip_g_, prompt, pooled_g)}, -1);
  const int64_t width = transformer_->config().joint_attention_dim;
  at::Tensor t5;
  if (t5_) {
    t5 = t5_->forward(at::tensor(tok_t5_->encode(prompt, max_sequence_length), at::kLong).unsqueeze(0));
  } else {
    t5 = at::zeros({1, max_sequence_length, width}, clip.options());
  }
  if (t5.size(-1) < clip.size(-1))
    throw ShapeError("T5 width " + std::to_string(t5.size(-1)) + " is smaller than the CLIP states' " +
                     std::to_string(clip.size(-1)));
  clip = at::constant_pad_nd(clip, {0, t5.size(-1) - clip.size(-1)});
  Encoding e{at::cat({clip, t5.to(clip.scalar_type())}, -2), at::cat({pooled_l, pooled_g}, -1)};
  cache_[key] = e;
  return e;
}

void Sd3Pipeline::resolve(GenerateRequest& r) const {
  const auto& cfg = transformer_->config();
  const int64_t unit = vae_->downscale() * cfg.patch_size;
  const int64_t default_size = cfg.sample_size * vae_->downscale();
  if (!r.image.empty()) {
    fit_edit_image(r, unit);     // the image's size is the output's
    if (r.cfg < 0) r.cfg = 1.0;  // ConsistEdit inverts and edits a given image without CFG
  }
  if (r.width == 0) r.width = int(default_size);
  if (r.height == 0) r.height = int(default_size);
  if (r.width % unit || r.height % unit)
    throw UsageError("--width/--height " + std::to_string(r.width) + "x" + std::to_string(r.height) +
                     ": must be multiples of " + std::to_string(unit) + " for this model (try " +
                     std::to_string(r.width - r.width % unit) + "x" + std::to_string(r.height - r.height % unit) + ")");
  if (r.steps == 0) r.steps = 28;
  if (r.cfg < 0) r.cfg = 7.0;
  if (r.max_sequence_length == 0) r.max_sequence_length = 256;
  if (r.max_sequence_length > 512) throw UsageError("--max-sequence-length: at most 512");
  if (r.shift <= 0) r.shift = src_.scheduler_config.value("shift", 3.0);
  make_controls(r, shape());  // every control flag checked against this model before anything runs
  if (!r.source_prompt.empty()) edit_tokens(r);  // the edit words are in the source prompt
  if (r.dtype.empty()) r.dtype = short_dtype_name(dtype_);
}

ModelShape Sd3Pipeline::shape() const {
  const auto& c = transformer_->config();
  return {"sd3", int(c.num_layers), 0, int(c.num_attention_heads)};
}

std::vector<int64_t> Sd3Pipeline::edit_tokens(const GenerateRequest& r) const {
  // ConsistEdit's token indices: CLIP-L's, then T5's after the 77 CLIP positions, of each edit word's first
  // occurrence in the source prompt.
  std::vector<int64_t> out;
  const auto clip = tok_l_->encode(r.source_prompt, 77);
  std::vector<int64_t> t5;
  if (tok_t5_) t5 = tok_t5_->encode(r.source_prompt, r.max_sequence_length);
  for (const auto& w : edit_words(r)) {
    auto c = token_positions(clip, tok_l_->tokenize(w));
    std::vector<int64_t> t;
    if (tok_t5_) t = token_positions(t5, tok_t5_->tokenize(w));
    if (c.empty() && t.empty()) throw UsageError("--edit-words: '" + w + "' is not in the source prompt");
    out.insert(out.end(), c.begin(), c.end());
    for (int64_t i : t) out.push_back(77 + i);
  }
  return out;
}

std::vector<Image> Sd3Pipeline::generate(const GenerateRequest& r, const std::function<void(int, int)>& step) {
  torch::NoGradGuard no_grad;
  fused::set_mode(r.no_fused ? fused::Mode::Off : fused::Mode::Auto);
  const bool cfg = r.cfg > 1.0;  // diffusers: do_classifier_free_guidance = guidance_scale > 1
  const bool edit = !r.source_prompt.empty();
  const int64_t n = edit ? 2 : r.batch;  // an edit: [source, target] in every branch
  Encoding pos = encode(r.prompt, r.max_sequence_length);
  Encoding neg, src;
  if (cfg) neg = encode(r.negative_prompt, r.max_sequence_length);
  if (edit) src = encode(r.source_prompt, r.max_sequence_length);
  // Encodings are cached; when device memory runs short, the encoders (T5-XXL alone is ~9.5 GB in bf16)
  // make room for the denoising activations and are reloaded only for a new prompt.
  if (const auto mem = device_memory(device_); mem.total && mem.free < mem.total / 4) {
    log_info("device memory is short: releasing the text encoders");
    release_encoders();
    empty_device_cache();
  }
  // num_images_per_prompt: every image of the batch gets the same encoding.
  auto rep = [](const at::Tensor& t, int64_t k) {
    if (!t.defined()) return t;
    std::vector<int64_t> reps(size_t(t.dim()), 1);
    reps[0] = k;
    return t.repeat(reps);
  };
  at::Tensor embeds = edit ? at::cat({src.embeds, pos.embeds}) : rep(pos.embeds, n);
  at::Tensor pooled = edit ? at::cat({src.pooled, pos.pooled}) : rep(pos.pooled, n);
  at::Tensor neg_embeds = rep(neg.embeds, n), neg_pooled = rep(neg.pooled, n);
  // Regional prompts: the regions' encodings side by side are the cond text of the first steps (controls/regional.h).
  at::Tensor regional_embeds;
  if (!r.regions.empty()) {
    std::vector<at::Tensor> parts;
    for (const auto& p : region_layout(r, INT_MAX).prompts) parts.push_back(encode(p, r.max_sequence_length).embeds);
    regional_embeds = rep(at::cat(parts, 1), n);
  }
  auto padded = [&](const at::Tensor& t) {  // to the regional text length, zeros after the prompt
    return t.defined() ? at::constant_pad_nd(t, {0, 0, 0, regional_embeds.size(1) - t.size(1)}) : t;
  };
  // Noise from the CPU generator in the model dtype, exactly as diffusers' randn_tensor does, then moved:
  // the same seed gives the same image on any device. An edit's source and target share one noise.
  const auto& tc = transformer_->config();
  const int64_t f = vae_->downscale();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  at::Tensor noise = at::randn({edit ? 1 : n, tc.in_channels, r.height / f, r.width / f}, gen,
                               at::TensorOptions().dtype(dtype_)).to(device_);

  FlowMatchConfig sched_cfg = FlowMatchConfig::from_json(src_.scheduler_config);
  sched_cfg.shift = r.shift;
  FlowMatchEulerScheduler sched(sched_cfg);
  sched.set_timesteps(r.steps);
  // All timesteps go to the device once, so the loop makes no host-device copies.
  at::Tensor timesteps = at::tensor(sched.timesteps(), at::kFloat).to(device_);
  // The guidance stage owns the batch: [uncond], cond, [base], one perturbed branch per guidance control.
  Guidance guidance(GuidanceConfig::from_request(r, cfg), make_controls(r, shape()), shape());
  // Several GPUs (core/parallel.h): the plan of this run, active while it generates.
  const ParallelPlan plan = plan_parallel(world(), cfg, shape().heads, name(), r);
  const PlanScope plan_scope(&plan);
  GenerationInfo info;
  info.words = tok_l_->word_tokens(r.prompt, 77);  // CLIP-L's tokens lead SD3's text sequence
  if (edit) info.edit_tokens = edit_tokens(r);
  info.grid_h = r.height / f / tc.patch_size;
  info.grid_w = r.width / f / tc.patch_size;
  info.width = r.width, info.height = r.height, info.batch = r.batch;
  guidance.begin(info);
  // A given image (mmdit edit --image): its latent inverted along the flow with the source prompt, unguided; the
  // source row follows that path, and the target starts from its noise.
  std::vector<at::Tensor> path;
  if (!r.image.empty()) {
    at::Tensor x0 = vae_->encode_latents(load_edit_image(r, device_, dtype_));
    path = invert_flow(x0, sched.sigmas(), parse_inversion(r.inversion), [&](const at::Tensor& x, int i) {
      at::Tensor t = i < r.steps ? timesteps[i] : at::zeros({}, timesteps.options());
      // ConsistEdit's mask comes from the inversion's attention, as in its real-image code (no source pass).
      const ControlContext ctx = guidance.single_control_context(std::min(i, r.steps - 1), r.steps, 0.0, "consistedit");
      return transformer_->forward(x, src.embeds, src.pooled, t.expand({1}), &ctx);
    });
    noise = path[0];
  }
  // One denoising run of `rows` images per branch; pairs: the rows are an edit's [source, target]. prepass_steps:
  // a first pass for an edit's mask, over that many steps, unreported.
  auto denoise = [&](at::Tensor latents, const at::Tensor& e, const at::Tensor& p, const at::Tensor& ne,
                     const at::Tensor& np, int64_t rows, bool pairs, int prepass_steps = 0) {
    const bool report = prepass_steps == 0;
    StepGraph graph(r.cuda_graphs && device_.is_cuda());  // --cuda-graphs: plain steps replayed (models/step_graph.h)
    for (int i = 0; i < (report ? r.steps : prepass_steps); ++i) {
      latents = on_path(path, latents, i);  // the source row follows a given image's path
      at::Tensor v;
      if (guidance.zero_step(i)) {
        v = at::zeros_like(latents);
      } else {
        ControlContext ctx = guidance.context(i, r.steps, sched.timesteps()[size_t(i)], rows);
        ctx.pairs = pairs;
        ctx.prepass = !report;
        at::Tensor x = Guidance::by_branch(ctx, latents, latents);
        at::Tensor text = ctx.region_text ? Guidance::by_branch(ctx, regional_embeds, padded(ne), padded(e))
                                                 : Guidance::by_branch(ctx, e, ne);
        const BatchSplit split(ctx);  // CFG-parallel: this rank's rows (samplers/cfg_parallel.h)
        const ControlContext& part = split.context();
        at::Tensor pred = split.gather(graph({split.take(x), split.take(text), split.take(Guidance::by_branch(ctx, p, np)),
                                              timesteps[i].expand({split.rows()})},
                                             &part, [&](const std::vector<at::Tensor>& in) {
                                               return transformer_->forward(in[0], in[1], in[2], in[3], &part);
                                             }));
        v = guidance.combine(pred, ctx, r.cfg);
      }
      latents = sched.step(v, latents, i);
      if (step && report) step(i + 1, r.steps);
    }
    return on_path(path, latents, r.steps);
  };
  at::Tensor latents;
  if (edit) {
    // ConsistEdit: the source alone first (its attention over every step, or the first --edit-mask-steps, gives the
    // edit mask), then source and target together.
    auto first = [](const at::Tensor& t) { return t.defined() ? t.narrow(0, 0, 1) : t; };
    if (!info.edit_tokens.empty() && path.empty())  // a given image's mask comes from its inversion
      denoise(noise, src.embeds, src.pooled, first(neg_embeds), first(neg_pooled), 1, false,
              consistedit_mask_steps(r, r.steps));
    latents = denoise(noise.repeat({2, 1, 1, 1}), embeds, pooled, neg_embeds, neg_pooled, 2, true);
  } else {
    latents = denoise(noise, embeds, pooled, neg_embeds, neg_pooled, n, false);
  }
  auto images = to_images(vae_->decode_latents(latents));
  guidance.end(images);
  return images;
}

}  // namespace

std::unique_ptr<Pipeline> load_sd3_pipeline(const GenerateRequest& r, const ModelInfo& m) {
  return std::make_unique<Sd3Pipeline>(r, m);
}

}  // namespace mmdit
