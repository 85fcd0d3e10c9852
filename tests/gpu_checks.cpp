// GPU checks (CTest label `gpu`; skipped, exit 77, without a CUDA device): the attention kernel that returns the
// log-sum-exp (core/attention.h attention_with_lse, which the attention maps and every LSE-based control use) on the
// CUDA backends PyTorch picks for bf16, f16 and f32, against float64 references: the output must be the plain
// kernel's, bit for bit, and the LSE the exact log-sum-exp. Then the fused kernels of the blocks' fast path
// (kernels/fused.cu through models/fused_ops.h) against their ATen references on the same device: norm +
// modulation (with the residual, the affine LayerNorm, CogVideoX's two modulation sets) and the Q/K/V
// preparation (each QK norm, RoPE on all or part of the tokens, the joint buffers' offsets). Then the step graph
// (models/step_graph.h): replayed calls give the eager call's numbers bit for bit, a new shape is warmed up and
// captured again, a step with a control runs eagerly; and so do small random SD3 (with SD3.5-medium's QK norm and
// dual attention) and FLUX transformers on the fast path; a call that cannot be captured stops with a message
// naming --cuda-graphs. Then --fp8 (models/fp8.h): the row-quantization kernel (strided rows, GELU, two segments)
// against its ATen reference, the row-wise _scaled_mm GEMM against the dequantized float32 product, and a random
// FLUX transformer with fp8 GEMMs (close to bf16, and replayed as a step graph); cuDNN's fp8 attention against
// its reference and bf16, and timed against bf16 SDPA at full-size shapes (printed only). Prints one line per case.
#include <chrono>
#include <cmath>
#include <functional>
#include <cstdio>

#include <torch/cuda.h>
#include <torch/torch.h>

#include "controls/control.h"
#include "core/errors.h"
#include "core/attention.h"
#include "core/attention_fp8.h"
#include "models/flux_transformer.h"
#include "models/fp8.h"
#include "models/fused_ops.h"
#include "models/sd3_transformer.h"
#include "models/step_graph.h"

namespace {

using mmdit::fused::Mode;
using mmdit::fused::ModeGuard;

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  return ((x - y).norm() / y.norm().clamp_min(1e-30)).item<double>();
}

// bf16/f16: the kernels round once where the reference rounds after each op.
double tolerance(at::ScalarType t) { return t == at::kFloat ? 2e-6 : t == at::kHalf ? 2e-3 : 1e-2; }

int check_ln_modulate(at::Generator& gen) {
  int failures = 0;
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t C : {192, 2432, 3072})
      for (int variant = 0; variant < 4; ++variant) {  // plain, residual, affine + two sets, residual + affine + two sets
        auto opts = at::TensorOptions().dtype(dtype).device(at::kCUDA);
        const int64_t B = 2, N = 333;
        at::Tensor x = at::randn({B, N, C}, gen).to(opts), y = at::randn({B, N, C}, gen).to(opts);
        at::Tensor mods = (at::randn({B, 6 * C}, gen) * 0.5).to(opts);
        auto ch = mods.chunk(6, 1);
        mmdit::fused::Modulation m{ch[0], ch[1], ch[2]};
        at::Tensor w, b;
        if (variant >= 2) {
          m.text_shift = ch[3], m.text_scale = ch[4], m.text_gate = ch[5], m.split = 17;
          w = (1 + 0.1 * at::randn({C}, gen)).to(opts), b = (0.1 * at::randn({C}, gen)).to(opts);
        }
        const at::Tensor yy = variant % 2 ? y : at::Tensor();
        auto [xk, ok_] = mmdit::fused::ln_modulate(x, yy, m, 1e-6, w, b);
        at::Tensor xr, outr;
        {
          ModeGuard g(Mode::Reference);
          std::tie(xr, outr) = mmdit::fused::ln_modulate(x, yy, m, 1e-6, w, b);
        }
        const double ex = rel_err(xk, xr), eo = rel_err(ok_, outr);
        const bool ok = ex <= tolerance(dtype) && eo <= tolerance(dtype);
        failures += !ok;
        std::printf("{\"check\": \"fused ln_modulate\", \"dtype\": \"%s\", \"cols\": %lld, \"variant\": %d, "
                    "\"residual_rel_err\": %.3g, \"out_rel_err\": %.3g, \"ok\": %s}\n",
                    c10::toString(dtype), (long long)C, variant, ex, eo, ok ? "true" : "false");
      }
  return failures;
}

int check_residual(at::Generator& gen) {
  int failures = 0;
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t split : {0, 17}) {
      auto opts = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const int64_t B = 2, N = 333, C = 2432;
      at::Tensor x = at::randn({B, N, C}, gen).to(opts), y = at::randn({B, N, C}, gen).to(opts);
      auto ch = at::randn({B, 6 * C}, gen).to(opts).chunk(6, 1);
      mmdit::fused::Modulation m;
      m.gate = ch[2], m.text_gate = ch[5], m.split = split;
      at::Tensor got = x.clone(), ref = x.clone();
      mmdit::fused::add_residual_(got, m, y);
      {
        ModeGuard g(Mode::Reference);
        mmdit::fused::add_residual_(ref, m, y);
      }
      double e = rel_err(got, ref);
      if (split == 0) e = std::max(e, rel_err(mmdit::fused::residual(x, ch[2], y), ref));
      const bool ok = e <= tolerance(dtype);
      failures += !ok;
      std::printf("{\"check\": \"fused residual\", \"dtype\": \"%s\", \"split\": %lld, \"rel_err\": %.3g, \"ok\": %s}\n",
                  c10::toString(dtype), (long long)split, e, ok ? "true" : "false");
    }
  return failures;
}

int check_qkv_prepare(at::Generator& gen) {
  using mmdit::kernels::QkNorm;
  int failures = 0;
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t D : {64, 128})
      for (QkNorm kind : {QkNorm::None, QkNorm::Rms, QkNorm::Layer})
        for (int rope = 0; rope < 3; ++rope) {  // none, all tokens, tokens from 40 on (CogVideoX's video)
          auto opts = at::TensorOptions().dtype(dtype).device(at::kCUDA);
          const int64_t B = 2, H = 3, n0 = 40, n1 = 300, N = n0 + n1;
          at::Tensor a0 = at::randn({B, n0, 3 * H * D + 16}, gen).to(opts), a1 = at::randn({B, n1, 3 * H * D}, gen).to(opts);
          mmdit::fused::QkNormSpec spec;
          spec.kind = kind;
          spec.rms_round = D == 64;  // both RMS forms
          spec.q_w = (1 + 0.1 * at::randn({D}, gen)).to(opts), spec.k_w = (1 + 0.1 * at::randn({D}, gen)).to(opts);
          if (kind == QkNorm::Layer) spec.q_b = (0.1 * at::randn({D}, gen)).to(opts), spec.k_b = (0.1 * at::randn({D}, gen)).to(opts);
          at::Tensor cos, sin;
          const int64_t first = rope == 2 ? n0 : 0;
          if (rope) {
            at::Tensor ang = at::rand({N - first, D / 2}, gen).repeat_interleave(2, 1) * 6.28;
            cos = ang.cos().to(at::kCUDA), sin = ang.sin().to(at::kCUDA);
          }
          auto make = [&]() {
            auto buf = mmdit::fused::qkv_buffers(B, N, H, D, opts);
            mmdit::fused::qkv_prepare(a0, spec, cos, sin, first, buf, 0);
            mmdit::fused::qkv_prepare(a1, spec, cos, sin, first, buf, n0);
            return at::stack({buf.q, buf.k, buf.v});
          };
          at::Tensor got = make(), ref;
          {
            ModeGuard g(Mode::Reference);
            ref = make();
          }
          const double e = rel_err(got, ref);
          const bool ok = e <= tolerance(dtype);
          failures += !ok;
          std::printf("{\"check\": \"fused qkv_prepare\", \"dtype\": \"%s\", \"head_dim\": %lld, \"norm\": %d, "
                      "\"rope\": %d, \"rel_err\": %.3g, \"ok\": %s}\n",
                      c10::toString(dtype), (long long)D, int(kind), rope, e, ok ? "true" : "false");
        }
  return failures;
}

// A stand-in for a transformer call: GEMMs, a norm, attention, on inputs that change every step.
int check_step_graph(at::Generator& gen) {
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor w = at::randn({256, 256}, gen).to(opts) * 0.05;
  auto call = [&](const std::vector<at::Tensor>& in) {
    at::Tensor h = at::layer_norm(at::matmul(in[0], w), {256}) * (1 + in[1].view({-1, 1, 1}));
    at::Tensor q = h.view({h.size(0), h.size(1), 4, 64}).transpose(1, 2);
    return at::scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(h.sizes()) + in[0];
  };
  mmdit::StepGraph graph(true);
  mmdit::ControlContext with_control;
  with_control.controls.push_back(nullptr);  // only its presence matters here
  int failures = 0;
  struct Step {
    int64_t rows;
    bool control;
  };
  const std::vector<Step> steps = {{2, false}, {2, false}, {2, false}, {2, true}, {2, false}, {1, false}, {1, false}, {1, false}};
  for (size_t i = 0; i < steps.size(); ++i) {
    std::vector<at::Tensor> in = {at::randn({steps[i].rows, 77, 256}, gen).to(opts),
                                  at::rand({steps[i].rows}, gen).to(opts)};
    at::Tensor got = graph(in, steps[i].control ? &with_control : nullptr, call);
    const bool ok = at::equal(got, call(in));
    failures += !ok;
    std::printf("{\"check\": \"step graph\", \"call\": %zu, \"rows\": %lld, \"control\": %s, \"same_as_eager\": %s}\n", i,
                (long long)steps[i].rows, steps[i].control ? "true" : "false", ok ? "true" : "false");
  }
  // rows 2: warm-up, capture, replay, (control: eager), replay; rows 1: warm-up, capture, replay.
  const bool counts = graph.eager == 3 && graph.captured == 2 && graph.replayed == 3;
  std::printf("{\"check\": \"step graph counts\", \"eager\": %d, \"captured\": %d, \"replayed\": %d, \"ok\": %s}\n",
              graph.eager, graph.captured, graph.replayed, counts ? "true" : "false");
  return failures + !counts;
}

// Four steps of a transformer through a step graph, each against the eager forward on the same inputs.
int check_model_graph(const char* name, const std::function<std::vector<at::Tensor>()>& inputs,
                      const mmdit::StepGraph::Call& call) {
  mmdit::StepGraph graph(true);
  bool same = true;
  double worst = 0;
  for (int i = 0; i < 4; ++i) {
    const auto in = inputs();
    at::Tensor got = graph(in, nullptr, call), ref = call(in);
    same = same && at::isfinite(ref).all().item<bool>() && at::equal(got, ref);  // (NaN != NaN)
    worst = std::max(worst, (got.to(at::kFloat) - ref.to(at::kFloat)).abs().max().item<double>());
  }
  const bool ok = same && graph.eager == 1 && graph.captured == 1 && graph.replayed == 2;
  std::printf("{\"check\": \"step graph %s\", \"same_as_eager\": %s, \"max_abs_diff\": %.3g, \"eager\": %d, "
              "\"captured\": %d, \"replayed\": %d, \"ok\": %s}\n",
              name, same ? "true" : "false", worst, graph.eager, graph.captured, graph.replayed, ok ? "true" : "false");
  return !ok;
}

// Parameters and buffers (SD3's position table) random: the models are built without weights.
template <class Model>
void randomize(Model& m) {
  for (auto& p : m.parameters()) p.normal_(0.0, 0.05, std::nullopt);
  for (auto& b : m.buffers())
    if (b.is_floating_point()) b.normal_(0.0, 0.5, std::nullopt);
}

// A small random FLUX transformer (bf16, CUDA, guidance-distilled) and fresh inputs for one step of it; head dim
// 64, or FLUX.1's 128.
struct SmallFlux {
  at::TensorOptions opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  std::shared_ptr<mmdit::FluxTransformer> m;
  at::Tensor img_ids = mmdit::flux_image_ids(16, 16, opts), txt_ids = mmdit::flux_text_ids(40, opts);
  explicit SmallFlux(int64_t head_dim = 64) {
    mmdit::FluxTransformerConfig c;
    c.num_layers = 2, c.num_single_layers = 2, c.attention_head_dim = head_dim, c.num_attention_heads = 2;
    c.joint_attention_dim = 96, c.pooled_projection_dim = 48, c.guidance_embeds = true;
    c.axes_dims_rope = head_dim == 128 ? std::vector<int64_t>{16, 56, 56} : std::vector<int64_t>{8, 28, 28};
    m = std::make_shared<mmdit::FluxTransformer>(c);
    m->to(at::kCUDA, at::kBFloat16);
    randomize(*m);
  }
  std::vector<at::Tensor> inputs(at::Generator& gen) const {
    auto rand = [&](at::IntArrayRef shape) { return at::randn(shape, gen).to(opts); };
    return {rand({1, 256, 64}), rand({1, 40, 96}), rand({1, 48}), at::rand({1}, gen).to(opts), at::full({1}, 3.5, opts)};
  }
  mmdit::StepGraph::Call call() const {
    return [this](const std::vector<at::Tensor>& in) {
      return m->forward(in[0], in[1], in[2], in[3], img_ids, txt_ids, in[4]);
    };
  }
};

int check_model_graphs(at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto rand = [&](at::IntArrayRef shape) { return at::randn(shape, gen).to(opts); };
  int failures = 0;
  {
    mmdit::SD3TransformerConfig c;
    c.num_layers = 2, c.num_attention_heads = 2, c.attention_head_dim = 64, c.joint_attention_dim = 96;
    c.caption_projection_dim = 128, c.pooled_projection_dim = 48, c.sample_size = 32, c.pos_embed_max_size = 32;
    c.qk_norm = "rms_norm", c.dual_attention_layers = {0};
    auto m = std::make_shared<mmdit::SD3Transformer>(c);
    m->to(at::kCUDA, at::kBFloat16);
    randomize(*m);
    failures += check_model_graph(
        "sd3", [&] { return std::vector<at::Tensor>{rand({2, 16, 32, 32}), rand({2, 40, 96}), rand({2, 48}),
                                                    (at::rand({2}, gen) * 1000).to(opts)}; },
        [&](const std::vector<at::Tensor>& in) { return m->forward(in[0], in[1], in[2], in[3]); });
  }
  {
    SmallFlux flux;
    failures += check_model_graph("flux", [&] { return flux.inputs(gen); }, flux.call());
  }
  return failures;
}

// The quantization kernel against fp8::quantize_reference: the same scales, and e4m3 values equal (GELU: at most one
// step apart on a few values, where the kernel's tanhf and ATen's differ in the last bit).
int check_fp8_quantize(at::Generator& gen) {
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  int failures = 0;
  at::Tensor x = at::randn({2, 333, 3072}, gen).to(opts), c = (at::randn({2, 333, 12288}, gen) * 3).to(opts);
  struct Case {
    const char* name;
    at::Tensor a, c;
    bool gelu;
  };
  const Case cases[] = {{"rows", x, {}, false},
                        {"token range", x.narrow(1, 17, 300), {}, false},
                        {"gelu", c, {}, true},
                        {"two segments + gelu", x.narrow(1, 33, 300), c.narrow(1, 0, 300), true}};
  for (const Case& k : cases) {
    mmdit::fp8::Rows got = k.c.defined() ? mmdit::fp8::quantize(k.a, k.c, k.gelu) : mmdit::fp8::quantize(k.a, k.gelu);
    mmdit::fp8::Rows ref = k.c.defined() ? mmdit::fp8::quantize_reference(k.a, k.c, k.gelu)
                                         : mmdit::fp8::quantize_reference(k.a, {}, false, k.gelu);
    at::Tensor vg = got.values.to(at::kFloat), vr = ref.values.to(at::kFloat);
    const double scale_err = ((got.scale - ref.scale).abs() / ref.scale).max().item<double>();
    const double differ = vg.ne(vr).to(at::kFloat).mean().item<double>();
    const bool one_step = (vg - vr).abs().le(vr.abs() / 8 + 1.0 / 512).all().item<bool>();
    const bool ok = got.lead == ref.lead && (k.gelu ? scale_err <= 1e-6 && differ <= 1e-3 && one_step
                                                    : scale_err == 0 && differ == 0);
    failures += !ok;
    std::printf("{\"check\": \"fp8 quantize %s\", \"scale_max_rel_err\": %.3g, \"values_differing\": %.3g, "
                "\"ok\": %s}\n", k.name, scale_err, differ, ok ? "true" : "false");
  }
  // An e4m3 first segment with one scale (the fp8 attention's output) beside a GELU segment.
  at::Tensor a8 = (at::randn({2, 333, 3072}, gen) * 40).to(opts).to(at::kFloat8_e4m3fn);
  at::Tensor a_scale = at::full({1}, 0.0123, opts.dtype(at::kFloat));
  mmdit::fp8::Rows got = mmdit::fp8::quantize(a8, a_scale, c, true);
  mmdit::fp8::Rows ref = mmdit::fp8::quantize_reference(a8, c, true, false, a_scale);
  at::Tensor vg = got.values.to(at::kFloat), vr = ref.values.to(at::kFloat);
  const double scale_err = ((got.scale - ref.scale).abs() / ref.scale).max().item<double>();
  const double differ = vg.ne(vr).to(at::kFloat).mean().item<double>();
  const bool ok = got.lead == ref.lead && scale_err <= 1e-6 && differ <= 1e-3;
  failures += !ok;
  std::printf("{\"check\": \"fp8 quantize e4m3 segment + gelu\", \"scale_max_rel_err\": %.3g, "
              "\"values_differing\": %.3g, \"ok\": %s}\n", scale_err, differ, ok ? "true" : "false");
  return failures;
}

// _scaled_mm row-wise against the same fp8 numbers multiplied in float32; and how far fp8 is from the bf16 GEMM.
int check_fp8_linear(at::Generator& gen) {
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor x = at::randn({2, 300, 3072}, gen).to(opts), w = (at::randn({9216, 3072}, gen) / 55).to(opts);
  at::Tensor b = at::randn({9216}, gen).to(opts);
  const mmdit::fp8::Weight q = mmdit::fp8::quantize_weight(w);
  const mmdit::fp8::Rows xq = mmdit::fp8::quantize(x);
  at::Tensor got = mmdit::fp8::linear(xq, q, b, at::kBFloat16);
  at::Tensor ref = at::linear(xq.values.to(at::kFloat) * xq.scale.unsqueeze(1), q.values.to(at::kFloat) *
                              q.scale.unsqueeze(1), b.to(at::kFloat)).view({2, 300, 9216});
  const double e = rel_err(got, ref), vs_bf16 = rel_err(got, at::linear(x, w, b));
  const bool ok = e <= 1e-2 && vs_bf16 <= 6e-2;
  std::printf("{\"check\": \"fp8 linear 3072->9216\", \"rel_err_vs_dequantized\": %.3g, \"rel_err_vs_bf16\": %.3g, "
              "\"ok\": %s}\n", e, vs_bf16, ok ? "true" : "false");
  return !ok;
}

// A random FLUX transformer with --fp8: close to its bf16 output, different from it, and capturable as a step graph.
int check_fp8_model(at::Generator& gen) {
  torch::NoGradGuard no_grad;
  SmallFlux flux;
  const auto in = flux.inputs(gen);
  at::Tensor bf16 = flux.call()(in);
  flux.m->to_fp8();
  at::Tensor fp8 = flux.call()(in);
  const double e = rel_err(fp8, bf16);
  const bool ok = at::isfinite(fp8).all().item<bool>() && e > 1e-3 && e < 0.15;
  std::printf("{\"check\": \"fp8 flux transformer\", \"rel_err_vs_bf16\": %.3g, \"ok\": %s}\n", e,
              ok ? "true" : "false");
  return !ok + check_model_graph("flux fp8", [&] { return flux.inputs(gen); }, flux.call());
}

// cuDNN's fp8 attention (--fp8-attention) against its ATen reference (the same quantization, float32 products) and
// against bf16 attention, at FLUX's head dim 128 and SD3's 64, on [B, N, H, D] buffers as the fast path has them.
int check_fp8_attention(at::Generator& gen) {
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  int failures = 0;
  for (int64_t d : {128, 64}) {
    auto rand = [&](double s) { return (at::randn({1, 4429, 4, d}, gen) * s).to(opts).transpose(1, 2); };
    at::Tensor q = rand(1), k = rand(1), v = rand(3);
    mmdit::AttentionDesc desc;
    auto got = mmdit::attention_fp8(q, k, v, desc);
    if (!got) {
      std::printf("{\"check\": \"fp8 attention d%lld\", \"ran\": false, \"ok\": false}\n", (long long)d);
      ++failures;
      continue;
    }
    mmdit::Fp8Attention ref = mmdit::attention_fp8_reference(q, k, v);
    at::Tensor o = got->values.to(at::kFloat) * got->descale, r = ref.values.to(at::kFloat) * ref.descale;
    at::Tensor bf16 = at::scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape({1, 4429, 4 * d});
    const double e = rel_err(o, r), vs_bf16 = rel_err(o, bf16), ref_vs_bf16 = rel_err(r, bf16);
    const double scale_err = ((got->descale - ref.descale).abs() / ref.descale).item<double>();
    // The reference models the quantization points, not cuDNN's order of operations (its online softmax quantizes
    // the probabilities against running maxima): on an H200, cuDNN was 3.8% from the reference and 5.9% from bf16,
    // as the reference is. So cuDNN must be as close to bf16 as the reference (10% slack), and near it.
    const bool ok = e <= 5e-2 && vs_bf16 <= 1.1 * ref_vs_bf16 && scale_err <= 1e-6;
    failures += !ok;
    std::printf("{\"check\": \"fp8 attention d%lld\", \"rel_err_vs_reference\": %.3g, \"rel_err_vs_bf16\": %.3g, "
                "\"reference_vs_bf16\": %.3g, \"descale_rel_err\": %.3g, \"ok\": %s}\n", (long long)d, e, vs_bf16,
                ref_vs_bf16, scale_err, ok ? "true" : "false");
  }
  return failures;
}

// Not a check: cuDNN's fp8 attention (quantization included) against bf16 SDPA at the families' full-size shapes,
// for docs/BENCHMARKS.md (FLUX.1 1024², SD3.5-large 1024² with CFG, CogVideoX-5B 49x480x720 with CFG).
void time_fp8_attention(at::Generator& gen) {
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  struct Shape { const char* name; int64_t b, h, n, d; };
  for (const Shape& s : {Shape{"flux", 1, 24, 4608, 128}, Shape{"sd3.5-large", 2, 38, 4429, 64},
                         Shape{"cogvideox-5b", 2, 48, 17776, 64}}) {
    auto rand = [&] { return at::randn({s.b, s.n, s.h, s.d}, gen).to(opts).transpose(1, 2); };
    at::Tensor q = rand(), k = rand(), v = rand();
    mmdit::AttentionDesc desc;
    if (!mmdit::attention_fp8(q, k, v, desc)) {
      std::printf("{\"timing\": \"fp8 attention %s\", \"ran\": false}\n", s.name);
      continue;
    }
    auto time = [&](const std::function<void()>& f) {
      for (int i = 0; i < 3; ++i) f();
      torch::cuda::synchronize();
      const int reps = 20;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) f();
      torch::cuda::synchronize();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    };
    const double fp8 = time([&] { mmdit::attention_fp8(q, k, v, desc); });
    const double bf16 = time([&] { at::scaled_dot_product_attention(q, k, v); });
    std::printf("{\"timing\": \"fp8 attention %s\", \"shape\": [%lld, %lld, %lld, %lld], \"fp8_ms\": %.3f, "
                "\"bf16_sdpa_ms\": %.3f, \"speedup\": %.3f}\n", s.name, (long long)s.b, (long long)s.h,
                (long long)s.n, (long long)s.d, fp8, bf16, bf16 / fp8);
  }
}

// A random FLUX.1-shaped transformer (head dim 128) with --fp8 --fp8-attention: close to bf16, further from it than
// fp8 GEMMs alone, and capturable as a step graph.
int check_fp8_attention_model(at::Generator& gen) {
  torch::NoGradGuard no_grad;
  auto make = [] {
    at::manual_seed(7);  // the same random weights twice
    return std::make_unique<SmallFlux>(128);
  };
  auto gemms = make(), both = make();
  const auto in = gemms->inputs(gen);
  at::Tensor bf16 = gemms->call()(in);
  gemms->m->to_fp8(false);
  both->m->to_fp8(true);
  at::Tensor fp8_gemms = gemms->call()(in), fp8_both = both->call()(in);
  const double e = rel_err(fp8_both, bf16), gemms_only = rel_err(fp8_gemms, bf16), apart = rel_err(fp8_both, fp8_gemms);
  const bool ok = at::isfinite(fp8_both).all().item<bool>() && e < 0.2 && apart > 1e-3;
  std::printf("{\"check\": \"fp8 attention flux transformer\", \"rel_err_vs_bf16\": %.3g, "
              "\"fp8_gemms_only_vs_bf16\": %.3g, \"vs_fp8_gemms_only\": %.3g, \"ok\": %s}\n", e, gemms_only, apart,
              ok ? "true" : "false");
  return !ok + check_model_graph("flux fp8 attention", [&] { return both->inputs(gen); }, both->call());
}

// A call that syncs with the host cannot be captured: the warm-up runs, the capture throws RuntimeFailure naming
// --cuda-graphs. PyTorch's generators stay in capture mode after that, so this check runs last.
int check_capture_failure(at::Generator& gen) {
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto call = [](const std::vector<at::Tensor>& in) { return in[0] * in[0].sum().item<float>(); };
  mmdit::StepGraph graph(true);
  std::vector<at::Tensor> in = {at::randn({2, 64}, gen).to(opts)};
  const bool warm = at::equal(graph(in, nullptr, call), call(in));
  std::string what;
  try {
    graph(in, nullptr, call);
  } catch (const mmdit::RuntimeFailure& e) {
    what = e.what();
  }
  const bool ok = warm && what.find("--cuda-graphs") != std::string::npos;
  std::printf("{\"check\": \"step graph capture failure\", \"warm_up_same\": %s, \"message\": \"%s\", \"ok\": %s}\n",
              warm ? "true" : "false", what.substr(0, 100).c_str(), ok ? "true" : "false");
  return !ok;
}

}  // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::puts("gpu_checks: no CUDA device: skipped");
    return 77;
  }
  int failures = 0;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t d : {64, 128})
      for (int64_t s : {333, 4429}) {
        auto opts = at::TensorOptions().dtype(dtype).device(at::kCUDA);
        at::Tensor q = at::randn({2, 4, s, d}, gen).to(opts), k = at::randn({2, 4, s, d}, gen).to(opts),
                   v = at::randn({2, 4, s, d}, gen).to(opts);
        auto [out, lse] = mmdit::attention_with_lse(q, k, v);
        const bool same = at::equal(out, at::scaled_dot_product_attention(q, k, v));
        at::Tensor qd = q.to(at::kDouble), kd = k.to(at::kDouble), vd = v.to(at::kDouble);
        at::Tensor scores = at::matmul(qd, kd.transpose(-2, -1)) / std::sqrt(double(d));
        at::Tensor ref_lse = at::logsumexp(scores, -1);
        at::Tensor ref_out = at::matmul(at::softmax(scores, -1), vd);
        const double lse_err = (lse.to(at::kDouble) - ref_lse).abs().max().item<double>();
        const double out_err = ((out.to(at::kDouble) - ref_out).norm() / ref_out.norm()).item<double>();
        const double tol = dtype == at::kFloat ? 1e-4 : 2e-2;
        const bool ok = same && lse_err <= tol && out_err <= tol;
        failures += !ok;
        std::printf("{\"check\": \"attention_with_lse\", \"dtype\": \"%s\", \"head_dim\": %lld, \"tokens\": %lld, "
                    "\"same_as_plain\": %s, \"lse_max_abs_err\": %.3g, \"out_rel_err\": %.3g, \"ok\": %s}\n",
                    c10::toString(dtype), (long long)d, (long long)s, same ? "true" : "false", lse_err, out_err,
                    ok ? "true" : "false");
      }
  if (!mmdit::fused::kernels_built()) {
    std::puts("{\"check\": \"fused kernels\", \"ok\": false, \"why\": \"not built\"}");
    return 1;
  }
  at::Generator g = gen;
  failures += check_ln_modulate(g);
  failures += check_residual(g);
  failures += check_qkv_prepare(g);
  failures += check_step_graph(g);
  failures += check_model_graphs(g);
  failures += check_fp8_quantize(g);
  failures += check_fp8_linear(g);
  failures += check_fp8_model(g);
  failures += check_fp8_attention(g);
  failures += check_fp8_attention_model(g);
  time_fp8_attention(g);
  failures += check_capture_failure(g);  // last: it leaves PyTorch's generators in capture mode
  return failures ? 1 : 0;
}
