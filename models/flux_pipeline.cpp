#include "models/fp8.h"
#include "models/flux_pipeline.h"

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
#include "models/flux_transformer.h"
#include "models/step_graph.h"
#include "models/t5_encoder.h"
#include "models/t5_tokenizer.h"
#include "models/vae.h"
#include "controls/consistedit.h"
#include "controls/control.h"
#include "controls/freeflux.h"
#include "controls/regional.h"
#include "samplers/flow_match.h"
#include "samplers/cfg_parallel.h"
#include "samplers/guidance.h"
#include "samplers/inversion.h"

namespace mmdit {
namespace fs = std::filesystem;

std::vector<double> flux_sigmas(int steps) {
  std::vector<double> s(size_t(std::max(steps, 0)));
  if (steps == 1) return {1.0};
  const double stop = 1.0 / steps, step = (stop - 1.0) / (steps - 1);
  for (int i = 0; i < steps; ++i) s[size_t(i)] = i * step + 1.0;
  if (steps > 1) s.back() = stop;  // numpy sets the endpoint exactly
  return s;
}

namespace {

// Where each part comes from: a diffusers folder, or a BFL single file plus separate encoders, VAE and
// tokenizer folder.
struct Sources {
  fs::path transformer_dir, vae, clip_l, t5, tok_l, tok_t5;  // folders or files
  std::optional<WeightStore> single_file;
  bool vae_in_single_file = false;
  nlohmann::json scheduler_config = nlohmann::json::object();
};

struct Encoding {
  at::Tensor embeds;  // [1, T5 tokens, joint_attention_dim]
  at::Tensor pooled;  // [1, pooled_projection_dim]
};

// FLUX.1-dev's scheduler_config.json (single files carry none); schnell's turns dynamic shifting off.
nlohmann::json bfl_scheduler_config(bool dev) {
  return {{"num_train_timesteps", 1000}, {"shift", dev ? 3.0 : 1.0}, {"use_dynamic_shifting", dev},
          {"base_shift", 0.5},           {"max_shift", 1.15},       {"base_image_seq_len", 256},
          {"max_image_seq_len", 4096}};
}

bool has_prefix(const WeightStore& st, const std::string& prefix) {
  for (const auto& n : st.names())
    if (n.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}

Sources find_sources(const GenerateRequest& r, const ModelInfo& m) {
  Sources s;
  if (m.kind == ModelKind::PipelineFolder) {
    s.transformer_dir = m.require("transformer").dir;
    s.vae = m.require("vae").dir;
    s.clip_l = m.require("text_encoder").dir;
    s.t5 = m.require("text_encoder_2").dir;
    s.tok_l = m.require("tokenizer").dir;
    s.tok_t5 = m.require("tokenizer_2").dir;
    if (const ComponentInfo* sc = m.component("scheduler")) s.scheduler_config = sc->config;
  } else if (m.kind == ModelKind::SingleFile) {
    s.single_file = WeightStore::open(r.model);
  } else {
    throw UsageError("--model " + r.model + ": a transformer folder alone is not a pipeline; pass the diffusers "
                     "folder that holds it (with model_index.json) or a single-file checkpoint");
  }
  if (!r.clip_l.empty()) s.clip_l = r.clip_l;
  if (!r.t5.empty()) s.t5 = r.t5;
  if (!r.vae.empty()) {
    if (!fs::exists(r.vae)) throw FileError("--vae " + r.vae + ": no such file or folder");
    s.vae = r.vae;
  }
  if (!r.tokenizer_dir.empty()) {
    const fs::path d = r.tokenizer_dir;
    for (auto [p, sub] : {std::pair{&s.tok_l, "tokenizer"}, {&s.tok_t5, "tokenizer_2"}}) {
      if (!fs::is_directory(d / sub)) throw FileError("--tokenizer-dir " + d.string() + ": no " + sub + "/ subfolder");
      *p = d / sub;
    }
  }
  if (s.single_file) {
    if (s.clip_l.empty()) throw UsageError("--model " + r.model + " holds no CLIP-L text encoder: pass --clip-l FILE_OR_FOLDER");
    if (s.t5.empty()) throw UsageError("--model " + r.model + " holds no T5 text encoder: pass --t5 FILE_OR_FOLDER");
    if (s.tok_l.empty())
      throw UsageError("--model " + r.model + ": single-file checkpoints need --tokenizer-dir (a folder with "
                       "tokenizer/ and tokenizer_2/, such as a diffusers FLUX.1 folder)");
    if (s.vae.empty()) {
      if (has_prefix(*s.single_file, "vae.") || has_prefix(*s.single_file, "first_stage_model."))
        s.vae_in_single_file = true;
      else
        throw UsageError("--model " + r.model + " holds no VAE: pass --vae (BFL's ae.safetensors or a diffusers vae/ folder)");
    }
  }
  return s;
}

template <typename Model, typename Config>
std::shared_ptr<Model> load_encoder(const fs::path& path, const Config& builtin, const at::Device& dev, at::ScalarType dtype) {
  if (fs::is_directory(path)) return Model::load(path, dev, dtype);
  return Model::load(WeightStore::open(path), builtin, dev, dtype);
}

class FluxPipelineImpl : public Pipeline {
 public:
  FluxPipelineImpl(const GenerateRequest& r, const ModelInfo& m)
      : src_(find_sources(r, m)), name_(m.variant.empty() ? "flux" : m.variant), device_(parse_device(r.device)),
        dtype_(pick_dtype(r.dtype, device_)) {
    if (r.fp8) fp8::require(device_, dtype_);
    if (r.fp8_attention) fp8::require_attention(r.fp8);
    tok_l_ = ClipTokenizer::load(src_.tok_l);
    tok_t5_ = T5Tokenizer::load(src_.tok_t5);
    if (src_.single_file) {
      transformer_ = load_flux_single_file(*src_.single_file, infer_flux_config(*src_.single_file), device_, dtype_);
      src_.scheduler_config = bfl_scheduler_config(transformer_->config().guidance_embeds);
      name_ = transformer_->config().guidance_embeds ? "flux-dev single-file" : "flux-schnell single-file";
    } else {
      transformer_ = FluxTransformer::load(src_.transformer_dir, device_, dtype_);
    }
    if (r.fp8) transformer_->to_fp8(r.fp8_attention);
    if (src_.vae_in_single_file || (!src_.vae.empty() && !fs::is_directory(src_.vae))) {
      WeightStore store = src_.vae_in_single_file ? *src_.single_file : WeightStore::open(src_.vae);
      VaeConfig vc = infer_vae_config(store);
      vc.scaling_factor = 0.3611;  // FLUX.1 vae/config.json
      vc.shift_factor = 0.1159;
      vae_ = load_vae_single_file(store, vc, device_, dtype_);
    } else {
      vae_ = AutoencoderKL::load(src_.vae, device_, dtype_);
    }
  }

  std::string name() const override { return name_; }

  void resolve(GenerateRequest& r) const override {
    const auto& tc = transformer_->config();
    const int64_t f = vae_->downscale(), unit = f * 2;
    if (tc.in_channels % 4 || tc.in_channels / 4 != vae_->config().latent_channels)
      throw ShapeError("flux: transformer in_channels " + std::to_string(tc.in_channels) + " do not fit the VAE's " +
                       std::to_string(vae_->config().latent_channels) + " latent channels packed 2x2");
    if (!r.image.empty()) fit_edit_image(r, unit);  // the image's size is the output's
    if (r.width == 0) r.width = int(128 * f);
    if (r.height == 0) r.height = int(128 * f);
    if (r.width % unit || r.height % unit)
      throw UsageError("--width/--height " + std::to_string(r.width) + "x" + std::to_string(r.height) +
                       ": must be multiples of " + std::to_string(unit) + " for FLUX (try " +
                       std::to_string(r.width - r.width % unit) + "x" + std::to_string(r.height - r.height % unit) + ")");
    if (r.steps == 0) r.steps = tc.guidance_embeds ? 28 : 4;
    if (r.guidance < 0) r.guidance = 3.5;
    if (r.cfg < 0) r.cfg = 1.0;
    if (r.max_sequence_length == 0) r.max_sequence_length = 512;
    if (r.max_sequence_length > 512) throw UsageError("--max-sequence-length: at most 512");
    if (r.shift <= 0 && !src_.scheduler_config.value("use_dynamic_shifting", false))
      r.shift = src_.scheduler_config.value("shift", 1.0);
    if (r.dtype.empty()) r.dtype = short_dtype_name(dtype_);
    make_controls(r, shape());  // every control flag checked against this model before anything runs
    if (!r.source_prompt.empty()) edit_tokens(r);  // the edit words are in the source prompt
  }

  ModelShape shape() const {
    const auto& c = transformer_->config();
    return {"flux", int(c.num_layers + c.num_single_layers), int(c.num_layers), int(c.num_attention_heads)};
  }

  // The edit words' T5 token indices (FLUX's text sequence), of each word's first occurrence: in the source prompt
  // (ConsistEdit, FreeFlux's kept object), or in the target (FreeFlux's added object); none for a non-rigid edit.
  std::vector<int64_t> edit_tokens(const GenerateRequest& r) const {
    if (r.edit_method == "freeflux-nonrigid") return {};
    const bool add = r.edit_method == "freeflux-add";
    std::vector<int64_t> out;
    const auto ids = tok_t5_->encode(add ? r.prompt : r.source_prompt, r.max_sequence_length);
    for (const auto& w : add ? added_words(r) : edit_words(r)) {
      auto t = token_positions(ids, tok_t5_->tokenize(w));
      if (t.empty()) throw UsageError("--edit-words: '" + w + "' is not in the " + (add ? "target" : "source") + " prompt");
      out.insert(out.end(), t.begin(), t.end());
    }
    return out;
  }

  std::vector<Image> generate(const GenerateRequest& r, const std::function<void(int, int)>& step) override {
  fused::set_mode(r.no_fused ? fused::Mode::Off : fused::Mode::Auto);
    torch::NoGradGuard no_grad;
    const bool true_cfg = r.cfg > 1.0 && !r.negative_prompt.empty();  // FluxPipeline's do_true_cfg
    const bool edit = !r.source_prompt.empty();
    const int64_t n = edit ? 2 : r.batch;  // an edit: [source, target] in every branch
    Encoding pos = encode(r.prompt, r.max_sequence_length);
    Encoding neg, src;
    if (true_cfg) neg = encode(r.negative_prompt, r.max_sequence_length);
    if (edit) src = encode(r.source_prompt, r.max_sequence_length);
    auto rep = [](const at::Tensor& t, int64_t k) {
      if (!t.defined()) return t;
      std::vector<int64_t> reps(size_t(t.dim()), 1);
      reps[0] = k;
      return t.repeat(reps);
    };
    at::Tensor embeds = edit ? at::cat({src.embeds, pos.embeds}) : rep(pos.embeds, n);
    at::Tensor pooled = edit ? at::cat({src.pooled, pos.pooled}) : rep(pos.pooled, n);
    at::Tensor neg_embeds = rep(neg.embeds, n), neg_pooled = rep(neg.pooled, n);
    // Regional prompts: the regions' encodings side by side are the cond text of the first steps
    // (controls/regional.h), with zero text ids as the official pipeline.
    at::Tensor regional_embeds;
    if (!r.regions.empty()) {
      std::vector<at::Tensor> parts;
      for (const auto& p : region_layout(r, INT_MAX).prompts) parts.push_back(encode(p, r.max_sequence_length).embeds);
      regional_embeds = rep(at::cat(parts, 1), n);
    }
    if (device_.is_cuda()) release_encoders();
    auto padded = [&](const at::Tensor& t) {  // to the regional text length, zeros after the prompt
      return t.defined() ? at::constant_pad_nd(t, {0, 0, 0, regional_embeds.size(1) - t.size(1)}) : t;
    };

    // prepare_latents: randn [B, C, 2*(H/16), 2*(W/16)] from the CPU generator in the model dtype, packed. An
    // edit's source and target share one noise.
    const auto& tc = transformer_->config();
    const int64_t f = vae_->downscale();
    const int64_t lh = 2 * (r.height / (f * 2)), lw = 2 * (r.width / (f * 2));
    auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
    at::Tensor noise = at::randn({edit ? 1 : n, tc.in_channels / 4, lh, lw}, gen, at::TensorOptions().dtype(dtype_));
    noise = flux_pack_latents(noise).to(device_);
    const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
    at::Tensor img_ids = flux_image_ids(lh / 2, lw / 2, opts);
    at::Tensor txt_ids = flux_text_ids(embeds.size(1), opts);

    FlowMatchConfig sc = FlowMatchConfig::from_json(src_.scheduler_config);
    std::optional<double> mu;
    if (r.shift > 0 && sc.use_dynamic_shifting) {
      sc.use_dynamic_shifting = false;  // an explicit --shift replaces the resolution-dependent one
    }
    if (!sc.use_dynamic_shifting) {
      if (r.shift > 0) sc.shift = r.shift;
    } else {
      mu = calculate_shift(noise.size(1), sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift, sc.max_shift);
    }
    FlowMatchEulerScheduler sched(sc);
    sched.set_sigmas(flux_sigmas(r.steps), mu);
    // Everything per step is on the device before the loop: timestep / 1000 in the latents' dtype, as
    // FluxPipeline passes it, and the guidance scale in float32.
    at::Tensor timesteps = at::tensor(sched.timesteps(), at::kFloat).to(device_).to(dtype_) / 1000;
    // The guidance stage owns the batch: [negative], prompt, [base], one perturbed branch per guidance control.
    Guidance guidance(GuidanceConfig::from_request(r, true_cfg), make_controls(r, shape()), shape());
    // Several GPUs (core/parallel.h): the plan of this run, active while it generates.
    const ParallelPlan plan = plan_parallel(world(), true_cfg, shape().heads, name(), r);
    const PlanScope plan_scope(&plan);
    GenerationInfo info;
    info.words = tok_t5_->word_tokens(r.prompt, r.max_sequence_length);  // T5's tokens are FLUX's text sequence
    if (edit) info.edit_tokens = edit_tokens(r);
    info.grid_h = lh / 2, info.grid_w = lw / 2;
    info.width = r.width, info.height = r.height, info.batch = r.batch;
    guidance.begin(info);
    // A given image (mmdit edit --image): its packed latent inverted along the flow with the source prompt and the
    // same distilled guidance; the source row follows that path, and the target starts from its noise.
    std::vector<at::Tensor> path;
    if (!r.image.empty()) {
      at::Tensor x0 = flux_pack_latents(vae_->encode_latents(load_edit_image(r, device_, dtype_)));
      at::Tensor g;
      if (tc.guidance_embeds) g = at::full({1}, r.guidance, at::TensorOptions().dtype(at::kFloat).device(device_));
      path = invert_flow(x0, sched.sigmas(), parse_inversion(r.inversion), [&](const at::Tensor& x, int i) {
        at::Tensor t = i < sched.num_steps() ? timesteps[i] : at::zeros({}, timesteps.options());
        // ConsistEdit's mask comes from the inversion's attention, as in its real-image code (no source pass).
        const int n_steps = sched.num_steps();
        const ControlContext ctx = guidance.single_control_context(std::min(i, n_steps - 1), n_steps, 0.0, "consistedit");
        return transformer_->forward(x, src.embeds, src.pooled, t.expand({1}), img_ids, txt_ids, g, &ctx);
      });
      noise = path[0];
    }
    // One denoising run of `rows` images per branch; pairs: the rows are an edit's [source, target].
    auto denoise = [&](at::Tensor latents, const at::Tensor& e, const at::Tensor& p, const at::Tensor& ne,
                       const at::Tensor& np, int64_t rows, bool pairs, int prepass_steps = 0) {
      const bool prepass = prepass_steps > 0;
      at::Tensor distilled;
      if (tc.guidance_embeds) distilled = at::full({rows}, r.guidance, at::TensorOptions().dtype(at::kFloat).device(device_));
      StepGraph graph(r.cuda_graphs && device_.is_cuda());  // --cuda-graphs: plain steps replayed (models/step_graph.h)
      for (int i = 0; i < (prepass ? prepass_steps : sched.num_steps()); ++i) {
        latents = on_path(path, latents, i);  // the source row follows a given image's path
        at::Tensor v;
        if (guidance.zero_step(i)) {
          v = at::zeros_like(latents);
        } else {
          ControlContext ctx = guidance.context(i, sched.num_steps(), sched.timesteps()[size_t(i)], rows);
          ctx.pairs = pairs;
          ctx.prepass = prepass;
          at::Tensor x = Guidance::by_branch(ctx, latents, latents);
          at::Tensor g = distilled.defined() ? Guidance::by_branch(ctx, distilled, distilled) : distilled;
          const bool regional = ctx.region_text;
          at::Tensor text = regional ? Guidance::by_branch(ctx, regional_embeds, padded(ne), padded(e))
                                     : Guidance::by_branch(ctx, e, ne);
          const BatchSplit split(ctx);  // CFG-parallel: this rank's rows (samplers/cfg_parallel.h)
          const ControlContext& part = split.context();
          const at::Tensor ids = regional ? flux_text_ids(text.size(1), opts) : txt_ids;
          at::Tensor pred = split.gather(graph(
              {split.take(x), split.take(text), split.take(Guidance::by_branch(ctx, p, np)),
               timesteps[i].expand({split.rows()}), split.take(g)},
              &part, [&](const std::vector<at::Tensor>& in) {
                return transformer_->forward(in[0], in[1], in[2], in[3], img_ids, ids, in[4], &part);
              }));
          v = guidance.combine(pred, ctx, r.cfg);
        }
        latents = sched.step(v, latents, i);
        if (step && !prepass) step(i + 1, r.steps);
      }
      return on_path(path, latents, sched.num_steps());
    };
    at::Tensor latents;
    if (edit) {
      // The first pass derives the edit mask: ConsistEdit's from the source alone over every step, or the first
      // --edit-mask-steps (when there are edit words), FreeFlux's from the source alone (background) or the pair
      // (add) to its derive step. Then source and target together.
      auto first = [](const at::Tensor& t) { return t.defined() ? t.narrow(0, 0, 1) : t; };
      const int n_steps = sched.num_steps();
      if (r.edit_method == "freeflux-add")
        denoise(noise.repeat({2, 1, 1}), embeds, pooled, neg_embeds, neg_pooled, 2, true, freeflux_derive_step(n_steps) + 1);
      else if (!info.edit_tokens.empty() && (path.empty() || is_freeflux(r.edit_method)))  // ConsistEdit: inversion
        denoise(noise, src.embeds, src.pooled, first(neg_embeds), first(neg_pooled), 1, false,
                is_freeflux(r.edit_method) ? freeflux_derive_step(n_steps) + 1 : consistedit_mask_steps(r, n_steps));
      latents = denoise(noise.repeat({2, 1, 1}), embeds, pooled, neg_embeds, neg_pooled, 2, true);
    } else {
      latents = denoise(noise, embeds, pooled, neg_embeds, neg_pooled, n, false);
    }
    auto images = to_images(vae_->decode_latents(flux_unpack_latents(latents, lh, lw)));
    guidance.end(images);
    return images;
  }

 private:
  void load_encoders() {
    if (clip_l_) return;
    clip_l_ = load_encoder<ClipTextModel>(src_.clip_l, ClipTextConfig::clip_l(), device_, dtype_);
    t5_ = load_encoder<T5EncoderModel>(src_.t5, T5Config::t5_xxl(), device_, dtype_);
  }
  void release_encoders() {
    clip_l_.reset();
    t5_.reset();
  }

  Encoding encode(const std::string& prompt, int max_sequence_length) {
    auto key = std::make_pair(prompt, max_sequence_length);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    load_encoders();
    torch::NoGradGuard no_grad;
    auto ids = [&](std::vector<int64_t> v) { return at::tensor(v, at::kLong).unsqueeze(0).to(device_); };
    // _get_clip_prompt_embeds: CLIPTextModel's pooler_output; _get_t5_prompt_embeds: last hidden state.
    at::Tensor pooled = clip_l_->forward(ids(tok_l_->encode(prompt, 77))).pooled.to(dtype_);
    at::Tensor embeds = t5_->forward(ids(tok_t5_->encode(prompt, max_sequence_length))).to(dtype_);
    const auto& tc = transformer_->config();
    if (embeds.size(-1) != tc.joint_attention_dim)
      throw ShapeError("flux: T5 width " + std::to_string(embeds.size(-1)) + " differs from the transformer's joint_attention_dim " +
                       std::to_string(tc.joint_attention_dim));
    if (pooled.size(-1) != tc.pooled_projection_dim)
      throw ShapeError("flux: CLIP width " + std::to_string(pooled.size(-1)) + " differs from the transformer's pooled_projection_dim " +
                       std::to_string(tc.pooled_projection_dim));
    Encoding e{embeds, pooled};
    cache_[key] = e;
    return e;
  }

  Sources src_;
  std::string name_;
  at::Device device_;
  at::ScalarType dtype_;
  std::optional<ClipTokenizer> tok_l_;
  std::optional<T5Tokenizer> tok_t5_;
  std::shared_ptr<ClipTextModel> clip_l_;
  std::shared_ptr<T5EncoderModel> t5_;
  std::shared_ptr<FluxTransformer> transformer_;
  std::shared_ptr<AutoencoderKL> vae_;
  std::map<std::pair<std::string, int>, Encoding> cache_;
};

}  // namespace

std::unique_ptr<Pipeline> load_flux_pipeline(const GenerateRequest& r, const ModelInfo& m) {
  return std::make_unique<FluxPipelineImpl>(r, m);
}

}  // namespace mmdit
