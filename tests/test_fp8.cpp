// --fp8 (models/fp8.h) on the CPU: the row-wise quantization's numbers, the GEMM's dequantized reference, and the
// wiring in each family's transformer (every block linear quantized except the adaLN ones, bf16 copies freed,
// the plain and the fast path running the same fp8 numbers, the output close to f32 but not equal to it).
// The CUDA kernel and _scaled_mm are checked against these references by mmdit_gpu_checks on the GPU box.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/attention_fp8.h"
#include "core/errors.h"
#include "models/cogvideox_transformer.h"
#include "models/flux_transformer.h"
#include "models/fp8.h"
#include "models/layers.h"
#include "models/fused_ops.h"
#include "models/sd3_transformer.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;
using test::rel_err;

const fs::path kGoldens = fs::path(MMDIT_GOLDEN_DIR);

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, g, at::TensorOptions().dtype(at::kFloat));
}

TEST(Fp8, WeightRowsKeepTheirMaximumAndE4m3Precision) {
  at::Tensor w = randn({32, 48}, 1) * at::linspace(0.01, 3.0, 32).unsqueeze(1);
  fp8::Weight q = fp8::quantize_weight(w);
  EXPECT_EQ(q.values.scalar_type(), at::kFloat8_e4m3fn);
  at::Tensor back = q.values.to(at::kFloat) * q.scale.unsqueeze(1);
  // Each row's largest value maps to 448 exactly, so it comes back to float rounding.
  EXPECT_LE(rel_err(back.abs().amax(1), w.abs().amax(1)), 1e-6);
  // e4m3 keeps 3 mantissa bits: at most half a step (1/16 relative) off, plus the subnormal floor near zero.
  at::Tensor bound = w.abs() / 16 + (q.scale * 448 / 512 / 64).unsqueeze(1);
  EXPECT_TRUE((back - w).abs().le(bound).all().item<bool>());
  EXPECT_GT((back - w).abs().max().item<float>(), 0.f);  // it did round
}

TEST(Fp8, ConcatenatedRowsShareOneScale) {
  at::Tensor a = randn({2, 5, 32}, 2), c = randn({2, 5, 48}, 3) * 4;
  fp8::Rows q = fp8::quantize(a, c, /*gelu_c=*/true);
  fp8::Rows want = fp8::quantize(at::cat({a, at::gelu(c, "tanh")}, -1));
  EXPECT_EQ(q.lead, (std::vector<int64_t>{2, 5}));
  EXPECT_TRUE(at::equal(q.scale, want.scale));
  EXPECT_TRUE(at::equal(q.values.to(at::kFloat), want.values.to(at::kFloat)));
  // gelu applies to c only: quantizing [a | c] without it differs.
  EXPECT_FALSE(at::equal(fp8::quantize(a, c, false).values.to(at::kFloat), q.values.to(at::kFloat)));
}

TEST(Fp8, LinearIsCloseToFloat) {
  at::Tensor x = randn({3, 7, 64}, 4), w = randn({80, 64}, 5) / 8, b = randn({80}, 6);
  at::Tensor y = fp8::linear(x, fp8::quantize_weight(w), b);
  const double e = rel_err(y, at::linear(x, w, b));
  std::printf("[fp8] linear 64->80: rel err %.3g against f32\n", e);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 7, 80}));
  EXPECT_GT(e, 1e-3);  // fp8, not the float weights
  EXPECT_LT(e, 5e-2);
}

TEST(Fp8, CpuIsRefused) {
  EXPECT_THROW(fp8::require(at::Device("cpu"), at::kBFloat16), UsageError);
  test::expect_input_error("generate -p x --fp8 -o " + (test::temp_dir("fp8_cpu") / "x.png").string(),
                           "--fp8 needs a CUDA GPU", test::temp_dir("fp8_cpu") / "x.png");
}

// What cuDNN's fp8 attention computes (attention_fp8_reference): close to float attention, but not equal to it;
// its e4m3 output uses the format's range without saturating.
TEST(Fp8, AttentionReferenceIsCloseToFloat) {
  at::Tensor q = randn({1, 2, 40, 64}, 7), k = randn({1, 2, 40, 64}, 8), v = randn({1, 2, 40, 64}, 9) * 3;
  Fp8Attention o = attention_fp8_reference(q, k, v);
  EXPECT_EQ(o.values.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(o.values.sizes(), (std::vector<int64_t>{1, 40, 128}));
  at::Tensor back = (o.values.to(at::kFloat) * o.descale).view({1, 40, 2, 64}).transpose(1, 2);
  const double e = rel_err(back, at::scaled_dot_product_attention(q, k, v));
  std::printf("[fp8] attention reference: rel err %.3g against f32\n", e);
  EXPECT_GT(e, 1e-3);
  EXPECT_LT(e, 0.1);
  const float top = o.values.to(at::kFloat).abs().max().item<float>();
  EXPECT_LT(top, 448.f);  // |o| <= amax(V) < 1.125 amax(V)
  EXPECT_GT(top, 16.f);   // and not squeezed into the subnormals
}

// The fp8 attention's output goes on as it is: rows_of keeps its values with the one scale per row, and
// quantize(a, a_scale, c) equals the quantization of the dequantized [a | gelu(c)].
TEST(Fp8, AttentionOutputFeedsTheProjections) {
  Fp8Attention o = attention_fp8_reference(randn({1, 2, 6, 32}, 10), randn({1, 2, 6, 32}, 11), randn({1, 2, 6, 32}, 12));
  fp8::Rows rows = fp8::rows_of(o.values, o.descale);
  EXPECT_EQ(rows.lead, (std::vector<int64_t>{1, 6}));
  EXPECT_TRUE(at::equal(rows.values.to(at::kFloat), o.values.view({6, 64}).to(at::kFloat)));
  EXPECT_TRUE(at::equal(rows.scale, o.descale.expand({6})));
  at::Tensor c = randn({1, 6, 48}, 13);
  fp8::Rows got = fp8::quantize(o.values, o.descale, c, /*gelu_c=*/true);
  fp8::Rows want = fp8::quantize(o.values.to(at::kFloat) * o.descale, c, true);
  EXPECT_TRUE(at::equal(got.scale, want.scale));
  EXPECT_TRUE(at::equal(got.values.to(at::kFloat), want.values.to(at::kFloat)));
}

// --fp8-attention is refused where it cannot run: without --fp8, and on SD3 (the built-in demo).
TEST(Fp8, AttentionFlagIsRefusedWhereItCannotRun) {
  const fs::path out = test::temp_dir("fp8_attention") / "x.png";
  test::expect_input_error("generate -p x --fp8-attention -o " + out.string(), "--fp8-attention: FLUX and CogVideoX only", out);
  test::expect_input_error("generate -p x --fp8-attention --model " + (kGoldens / "flux" / "tiny-flux-dev").string() +
                               " -o " + out.string(),
                           "--fp8-attention needs --fp8", out);
}

// Checks one transformer after to_fp8(): out_plain/out_fast are its outputs on the plain and the fast path
// (Reference mode), f32 the output before.
void check_family(const char* name, const at::Tensor& f32, const at::Tensor& out_plain, const at::Tensor& out_fast,
                  torch::nn::Module& m) {
  const double e = rel_err(out_plain, f32), paths = rel_err(out_fast, out_plain);
  std::printf("[fp8] %s: rel err %.3g against f32; fast path vs plain path %.3g\n", name, e, paths);
  EXPECT_GT(e, 1e-4) << "the GEMMs did not run in fp8";
  EXPECT_LT(e, 0.1);
  EXPECT_LE(paths, 1e-3);
  int quantized = 0, kept = 0;
  for (const auto& item : m.named_modules("", false)) {
    const auto* l = item.value()->as<nn::LinearImpl>();
    if (!l || item.key().find("blocks.") == std::string::npos) continue;
    const bool adaln = item.key().find(".norm") != std::string::npos;
    if (adaln) {
      EXPECT_FALSE(l->q.defined()) << item.key();
      ++kept;
    } else {
      EXPECT_TRUE(l->q.defined()) << item.key();
      EXPECT_EQ(l->weight.numel(), 0) << item.key() << ": the bf16 copy stays";
      ++quantized;
    }
  }
  EXPECT_GT(quantized, 0);
  EXPECT_GT(kept, 0);
}

TEST(Fp8, FluxTransformer) {
  torch::NoGradGuard ng;
  const fs::path dir = kGoldens / "flux";
  test::GoldenFile io(dir / "dev_tiny_io.safetensors");
  auto m = FluxTransformer::load(dir / "dev_tiny", at::kCPU, at::kFloat);
  auto run = [&] {
    return m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"], io["img_ids"],
                      io["txt_ids"], io["guidance"]);
  };
  at::Tensor f32 = run();
  m->to_fp8();
  at::Tensor plain = run();
  fused::ModeGuard fast(fused::Mode::Reference);
  check_family("flux dev_tiny", f32, plain, run(), *m);
}

TEST(Fp8, SD3Transformer) {
  torch::NoGradGuard ng;
  const fs::path dir = kGoldens / "sd3";
  for (const char* name : {"sd3_tiny", "sd35m_tiny"}) {
    test::GoldenFile io(dir / (std::string(name) + "_io.safetensors"));
    auto m = SD3Transformer::load(dir / name, at::kCPU, at::kFloat);
    auto run = [&] { return m->forward(io["hidden_states"], io["encoder_hidden_states"], io["pooled"], io["timestep"]); };
    at::Tensor f32 = run();
    m->to_fp8();
    at::Tensor plain = run();
    fused::ModeGuard fast(fused::Mode::Reference);
    check_family(name, f32, plain, run(), *m);
  }
}

TEST(Fp8, CogVideoXTransformer) {
  torch::NoGradGuard ng;
  const fs::path dir = kGoldens / "cogvideox";
  test::GoldenFile io(dir / "transformer_5b_io.safetensors");
  auto m = CogVideoXTransformer::load(dir / "transformer_5b", at::kCPU, at::kFloat);
  at::Tensor x = io["hidden_states"];
  auto rope = cogvideox_rotary_embeddings(m->config(), x.size(3) * 8, x.size(4) * 8, x.size(1));
  auto run = [&] { return m->forward(x, io["encoder_hidden_states"], io["timestep"].to(at::kLong), rope); };
  at::Tensor f32 = run();
  m->to_fp8();
  at::Tensor plain = run();
  fused::ModeGuard fast(fused::Mode::Reference);
  check_family("cogvideox 5b", f32, plain, run(), *m);
}

}  // namespace
}  // namespace mmdit
