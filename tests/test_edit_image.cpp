// Editing a given image (`mmdit edit --image`, models/edit_image.h, samplers/inversion.h): the VAE latent and the
// UniInv inversion against ConsistEdit's own code (run_real_sd3.py's pipe.invert with UniInvEulerScheduler, on the
// tiny SD3: tests/data/consistedit/inversion.safetensors, scripts/reference/consistedit_official.py), how well each
// inverter lets the Euler sampler retrace the path, reconstruction through the CLI, and bad input.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/image_io.h"
#include "models/edit_image.h"
#include "models/sd3_transformer.h"
#include "models/vae.h"
#include "samplers/flow_match.h"
#include "samplers/inversion.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path tiny(const std::string& name) { return fs::path(MMDIT_GOLDEN_DIR) / "controls" / name; }
fs::path data() { return test::source_dir() / "tests" / "data" / "consistedit"; }

double psnr(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  double se = 0;
  for (size_t i = 0; i < a.pixels.size() && i < b.pixels.size(); ++i) se += std::pow(double(a.pixels[i]) - b.pixels[i], 2);
  const double mse = se / double(a.pixels.size());
  return mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
}

// The tiny SD3 with the golden's prompt embeddings; `sched` set to the golden's steps.
struct TinySd3 {
  test::GoldenFile g{data() / "inversion.safetensors"};
  std::shared_ptr<SD3Transformer> transformer = SD3Transformer::load(tiny("tiny-sd3") / "transformer", at::kCPU, at::kFloat);
  std::shared_ptr<AutoencoderKL> vae = AutoencoderKL::load(tiny("tiny-sd3") / "vae", at::kCPU, at::kFloat);
  FlowMatchEulerScheduler sched;
  TinySd3() {
    std::ifstream in(tiny("tiny-sd3") / "scheduler" / "scheduler_config.json");
    sched = FlowMatchEulerScheduler(FlowMatchConfig::from_json(nlohmann::json::parse(in)));
    sched.set_timesteps(4);
  }
  at::Tensor velocity(const at::Tensor& x, int i) {
    const float t = i < sched.num_steps() ? sched.timesteps()[size_t(i)] : 0.0f;
    return transformer->forward(x, g["prompt_embeds"], g["pooled"], at::full({1}, t));
  }
  at::Tensor sample(at::Tensor x) {  // the plain Euler sampler, unguided
    for (int i = 0; i < sched.num_steps(); ++i) x = sched.step(velocity(x, i), x, i);
    return x;
  }
};

TEST(EditImage, UniInvEqualsConsistEditsInverter) {
  torch::NoGradGuard ng;
  TinySd3 m;
  GenerateRequest r;
  r.image = (data() / "consistedit_colour-source.png").string();
  r.width = r.height = 128;
  at::Tensor x0 = m.vae->encode_latents(load_edit_image(r, at::kCPU, at::kFloat));
  const double e_latent = test::rel_err(x0, m.g["image_latent"]);
  auto path = invert_flow(x0, m.sched.sigmas(), InversionMethod::UniInv,
                          [&](const at::Tensor& x, int i) { return m.velocity(x, i); });
  ASSERT_EQ(path.size(), 5u);
  const double e_start = test::rel_err(path[0], m.g["start_latent"]);
  std::printf("[edit] image latent rel err %.3g, UniInv start latent rel err %.3g\n", e_latent, e_start);
  EXPECT_LE(e_latent, 1e-4);
  EXPECT_LE(e_start, 1e-4);
  EXPECT_TRUE(path[4].equal(x0));
  // Plain Euler inversion lands elsewhere: the comparison can tell the two apart.
  auto euler = invert_flow(x0, m.sched.sigmas(), InversionMethod::Euler,
                           [&](const at::Tensor& x, int i) { return m.velocity(x, i); });
  EXPECT_GT(test::rel_err(euler[0], m.g["start_latent"]), 1e-3);
}

// The point of inverting: the sampler, started from the inverted noise, comes back to the image's latent. UniInv
// retraces it more closely than plain Euler inversion does (so it is the default).
TEST(EditImage, TheSamplerRetracesTheInvertedPath) {
  torch::NoGradGuard ng;
  TinySd3 m;
  at::Tensor x0 = m.g["image_latent"];
  double err[2];
  for (auto method : {InversionMethod::UniInv, InversionMethod::Euler}) {
    auto path = invert_flow(x0, m.sched.sigmas(), method, [&](const at::Tensor& x, int i) { return m.velocity(x, i); });
    err[int(method == InversionMethod::Euler)] = test::rel_err(m.sample(path[0]), x0);
  }
  std::printf("[edit] tiny SD3, 4 steps: the sampler back from UniInv's noise: rel err %.3g; from Euler's: %.3g\n",
              err[0], err[1]);
  EXPECT_LT(err[0], 0.5 * err[1]);
}

// Through the CLI: the image edited with its own prompt comes back (source and target), on the tiny SD3 and FLUX;
// a real edit changes the target.
TEST(EditImage, TheImageWithItsOwnPromptComesBack) {
  const auto out = test::temp_dir("edit_image_cli");
  const std::string in = (data() / "consistedit_colour-source.png").string();
  const std::string prompt = "a small red circle above a blue square";
  const Image input = read_png(in);
  for (const std::string model : {"tiny-sd3", "tiny-flux-dev"}) {
    SCOPED_TRACE(model);
    const std::string base = "edit -q --model " + tiny(model).string() + " --steps 4 --image " + in +
                             " --source-prompt '" + prompt + "' --source-output " + (out / "s.png").string();
    auto r = test::run_mmdit(base + " --prompt '" + prompt + "' -o " + (out / "t.png").string(), "edit_image");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const double ps = psnr(read_png(out / "s.png"), input), pt = psnr(read_png(out / "t.png"), input);
    std::printf("[edit] %s --image with its own prompt: source %.1f dB, target %.1f dB\n", model.c_str(), ps, pt);
    // The tiny VAEs are random: their round trip alone costs what the source loses.
    EXPECT_GE(pt, ps - 1.0);
    auto e = test::run_mmdit(base + " --prompt 'a small green circle above a blue square' -o " + (out / "e.png").string(),
                             "edit_image_green");
    ASSERT_EQ(e.exit_code, 0) << e.err;
    EXPECT_LT(psnr(read_png(out / "e.png"), read_png(out / "t.png")), 60.0);
  }
}

// A job file's "image" key (relative to the file's folder) gives what `mmdit edit --image` gives.
TEST(EditImage, JobFilesTakeTheImageKey) {
  const auto out = test::temp_dir("edit_image_job");
  fs::copy_file(data() / "consistedit_colour-source.png", out / "in.png", fs::copy_options::overwrite_existing);
  const std::string sd3 = tiny("tiny-sd3").string();
  const std::string src = "a small red circle above a blue square", tgt = "a small green circle above a blue square";
  nlohmann::json jobs = {{"defaults", {{"model", sd3}, {"steps", 4}}},
                         {"jobs", {{{"source_prompt", src}, {"prompt", tgt}, {"image", "in.png"}, {"output", "job.png"}}}}};
  std::ofstream(out / "jobs.json") << jobs.dump();
  auto r = test::run_mmdit("run -q " + (out / "jobs.json").string(), "edit_image_job");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_mmdit("edit -q --model " + sd3 + " --steps 4 --image " + (out / "in.png").string() + " --source-prompt '" +
                          src + "' --prompt '" + tgt + "' -o " + (out / "cli.png").string(), "edit_image_cli_job");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_png(out / "job.png").pixels == read_png(out / "cli.png").pixels);
  EXPECT_NE(read_png_text(out / "job.png")["mmdit"].find("\"image\""), std::string::npos);
}

TEST(EditImage, JpegAndResize) {
  const auto out = test::temp_dir("edit_image_jpeg");
  const std::string sd3 = tiny("tiny-sd3").string();
  // A 100x90 image: refused with the nearest size, or scaled to it with --resize.
  Image img{100, 90, 3, std::vector<uint8_t>(100 * 90 * 3, 200)};
  write_png(out / "odd.png", img);
  const std::string base = "edit -q --model " + sd3 + " --steps 2 --source-prompt 'a red star' --prompt 'a blue star' ";
  auto r = test::run_mmdit(base + "--image " + (out / "odd.png").string() + " -o " + (out / "x.png").string(), "odd");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("the nearest is 96x96"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "x.png"));
  r = test::run_mmdit(base + "--resize --image " + (out / "odd.png").string() + " -o " + (out / "x.png").string(), "resize");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Image o = read_png(out / "x.png");
  EXPECT_EQ(o.width, 96);
  EXPECT_EQ(o.height, 96);
  r = test::run_mmdit(base + "--resize --width 64 --image " + (out / "odd.png").string() + " -o " + (out / "y.png").string(),
                      "resize_w");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  o = read_png(out / "y.png");
  EXPECT_EQ(o.width, 64);
  EXPECT_EQ(o.height, 64);  // 90 * 64 / 100 = 57.6, to the nearest multiple of 16
  const fs::path jpeg = test::source_dir() / "tests" / "data" / "images" / "flat.jpg";
  if (fs::exists(jpeg)) {
    r = test::run_mmdit(base + "--resize --image " + jpeg.string() + " -o " + (out / "j.png").string(), "jpeg");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
}

TEST(EditImage, BadInputExitsTwoWithOneLineAndNoOutput) {
  const auto dir = test::temp_dir("edit_image_bad");
  const std::string out = (dir / "x.png").string();
  const std::string sd3 = tiny("tiny-sd3").string();
  std::ofstream(dir / "text.png") << "not an image";
  write_png(dir / "ok.png", Image{128, 128, 3, std::vector<uint8_t>(128 * 128 * 3, 100)});
  const std::string edit = "edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' ";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {edit + "--image " + (dir / "text.png").string(), "text.png"},
      {edit + "--image " + (dir / "missing.png").string(), "missing.png"},
      {edit + "--image " + (dir / "ok.png").string() + " --width 64", "add --resize"},
      {edit + "--image " + (dir / "ok.png").string() + " --inversion heun", "--inversion"},
      {"generate --model " + sd3 + " --prompt 'a red star' --image " + (dir / "ok.png").string(), "only for edits"},
      {"generate --model " + sd3 + " --prompt 'a red star' --resize", "--resize"},
  };
  for (const auto& [args, message] : bad) {
    test::expect_input_error(args + " --steps 2 -o " + out, message, out, "bad_edit_image");
  }
}

}  // namespace
}  // namespace mmdit
