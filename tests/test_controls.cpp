// Attention controls (controls/, samplers/guidance.h) against their references (scripts/goldens/controls.py):
// PAG = diffusers' StableDiffusion3PAGPipeline, SoftPAG = HeadHunter's processor, SLG on FLUX and CogVideoX,
// APG / CFG-Zero* = diffusers' guiders, --text-scale, attention maps (explicit probabilities); STG against
// STGuidance's own pipeline (tests/data/stg, scripts/reference/stg_official.py). Images within 1 level, tensors
// within 1e-4 relative (float32 CPU).
#include <fstream>
#include <regex>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "controls/control.h"
#include "controls/regional.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/flux_transformer.h"
#include "models/fused_ops.h"
#include "models/sd3_transformer.h"
#include "samplers/guidance.h"
#include "tests/test_controls_util.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path golden() { return fs::path(MMDIT_GOLDEN_DIR) / "controls"; }

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

int max_pixel_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  if (a.pixels.size() != b.pixels.size()) return 256;
  int m = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

int spread(const Image& img) {
  int lo = 255, hi = 0;
  for (auto v : img.pixels) lo = std::min<int>(lo, v), hi = std::max<int>(hi, v);
  return hi - lo;
}

// Runs one golden case (cases.json entry) through `mmdit generate` and compares every image.
void expect_case(const json& c, const fs::path& dir, const fs::path& model_dir, const std::string& extra = "") {
  const std::string name = c["name"];
  const auto out = test::temp_dir("controls_" + name);
  std::string args = c["args"];
  args = std::regex_replace(args, std::regex("MAPS"), (out / "maps").string());
  const bool video = c.value("video", false);
  const fs::path target = out / (video ? "f_%03d.png" : "out.png");
  auto r = test::run_mmdit("generate -q --model " + (model_dir / c["model"].get<std::string>()).string() + " " + args +
                               extra + " -o '" + target.string() + "'",
                           name);
  ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
  const auto& images = c["images"];
  for (size_t i = 0; i < images.size(); ++i) {
    char frame[32];
    std::snprintf(frame, sizeof frame, "f_%03zu.png", i);
    Image expected = read_png(dir / images[i].get<std::string>());
    Image actual = read_png(video ? out / frame : target);
    EXPECT_GT(spread(expected), 40) << name << ": golden image too flat to be a useful check";
    EXPECT_LE(max_pixel_diff(actual, expected), 1) << name << " image " << i;
  }
}

// The cases an official implementation made (tests/data/NAME, scripts/reference/), on the goldens' tiny models.
void expect_official_cases(const std::string& name) {
  const fs::path dir = test::source_dir() / "tests" / "data" / name;
  const json cases = read_json(dir / "cases.json");
  ASSERT_GE(cases.size(), 2u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    expect_case(c, dir, golden());
  }
}

TEST(Controls, ImagesEqualTheReferenceImplementations) {
  const json cases = read_json(golden() / "cases.json");
  std::set<std::string> seen;
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    expect_case(c, golden(), golden());
    seen.insert(c["name"]);
  }
  for (const char* n : {"pag_sd3_cfg", "pag_sd3_nocfg", "pag_sd3_adaptive", "softpag_sd3_cfg", "softpag_sd3_nocfg",
                        "slg_flux", "slg_cogvideox", "attention_maps_sd3"})
    EXPECT_TRUE(seen.count(n)) << n;
}

// STG against STGuidance's CogVideoXSTGPipeline, run on the tiny CogVideoX of the goldens (the images were made
// by scripts/reference/stg_official.py with the official code, which cannot be fetched in CI).
TEST(Controls, StgEqualsTheOfficialPipeline) { expect_official_cases("stg"); }

// Regional prompts against InstantX's own RegionalFluxPipeline (its base stream, mask and blend), run on the tiny
// FLUX of the goldens (scripts/reference/regional_official.py; the official code cannot be fetched in CI).
TEST(Controls, RegionsEqualTheOfficialPipeline) { expect_official_cases("regional"); }

// The official transformer case (tests/data/regional): the tiny FLUX of the goldens, its inputs at the first step of
// the first case, and that case's two halves.
struct RegionalTransformerCase {
  test::GoldenFile g{test::source_dir() / "tests" / "data" / "regional" / "transformer_io.safetensors"};
  std::shared_ptr<FluxTransformer> flux = FluxTransformer::load(golden() / "tiny-flux-dev" / "transformer", at::kCPU,
                                                                at::kFloat);
  ModelShape shape;
  GenerateRequest r;
  at::Tensor regional = g["encoder_hidden_states"], base = g["encoder_hidden_states_base"];

  RegionalTransformerCase() {
    const auto& c = flux->config();
    shape = {"flux", int(c.num_layers + c.num_single_layers), int(c.num_layers), int(c.num_attention_heads)};
    r.width = r.height = 128;
    r.max_sequence_length = 512;
    r.prompt = "a small red circle above a blue square";
    r.regions = {{0, 0, 64, 128, "", "a red circle"}, {64, 0, 128, 128, "", "a blue square"}};
  }
  // A regional step's context for `control` (begun on the 8x8 grid): the cond row, and the base row when asked.
  ControlContext context(Control& control, bool base_row) const {
    GenerationInfo info;
    info.grid_h = info.grid_w = 8;
    control.begin(info);
    ControlContext ctx;
    ctx.model = shape;
    ctx.step = 0;
    ctx.num_steps = 4;
    ctx.rows = {{Branch::Cond, 0, 0.0, 0, 1}};
    if (base_row) ctx.rows.push_back({Branch::Base, 0, 0.0, 1, 2});
    ctx.region_text = true;
    ctx.controls = {&control};
    return ctx;
  }
  // The transformer on ctx's rows: the regions' text for the cond row, the base prompt padded for the base row.
  at::Tensor forward(const ControlContext& ctx) const {
    const int64_t n = int64_t(ctx.rows.size());
    at::Tensor text = regional;
    if (n == 2) text = at::cat({regional, at::constant_pad_nd(base, {0, 0, 0, regional.size(1) - base.size(1)})});
    auto rows = [&](const at::Tensor& t) { return t.repeat_interleave(n, 0); };
    return flux->forward(rows(g["hidden_states"]), text, rows(g["pooled"]), rows(g["timestep"]), g["img_ids"],
                         flux_text_ids(text.size(1), text.options()), rows(g["guidance"]), &ctx);
  }
  // The plain transformer on the base prompt.
  at::Tensor plain() const {
    return flux->forward(g["hidden_states"], base, g["pooled"], g["timestep"], g["img_ids"],
                         flux_text_ids(base.size(1), base.options()), g["guidance"]);
  }
};

// The same at the transformer: the official FluxTransformer2DModel with its base stream, at the first step of
// the first case, against mmdit's transformer with the regions control on the rows [cond, base]; both attention
// paths (the regions split the image: dense calls per region by default, the official masked call for comparison).
TEST(Controls, RegionsEqualTheOfficialTransformer) {
  torch::NoGradGuard ng;
  RegionalTransformerCase k;
  auto controls = make_controls(k.r, k.shape);
  ASSERT_EQ(controls.size(), 1u);
  const ControlContext ctx = k.context(*controls[0], /*base_row=*/true);
  ASSERT_EQ(k.regional.size(1), 1024);
  std::vector<at::Tensor> outs;
  for (RegionKernel kernel : {RegionKernel::Dense, RegionKernel::Mask}) {
    set_region_kernel(kernel);
    outs.push_back(k.forward(ctx));
    const double e = test::rel_err(outs.back().narrow(0, 0, 1), k.g["out"]);
    std::printf("[controls] regional FLUX transformer (%s) rel err %.3g\n", kernel == RegionKernel::Dense ? "dense" : "mask", e);
    EXPECT_LE(e, 1e-4);
  }
  set_region_kernel(RegionKernel::Dense);
  // The fast path's structure (fused::Mode::Reference) computes the base row's image stream once in the double
  // blocks, where it is the cond row's (BlockPlan::image_copies), and both streams in the single blocks.
  const int double_layers = int(k.flux->config().num_layers);
  EXPECT_EQ(block_plan(&ctx, 0).image_copies, std::vector<int64_t>{0});
  EXPECT_TRUE(block_plan(&ctx, double_layers).image_copies.empty());
  {
    fused::ModeGuard fast(fused::Mode::Reference);
    const double e = test::rel_err(k.forward(ctx), outs[0]);
    std::printf("[controls] regional FLUX transformer, fast path against plain rel err %.3g\n", e);
    EXPECT_LE(e, 1e-5);
  }
  const double paths = test::rel_err(outs[0], outs[1]);
  std::printf("[controls] regional dense against mask rel err %.3g\n", paths);
  EXPECT_LE(paths, 1e-5);  // the same attention, two ways
  EXPECT_GT(paths, 0.0);   // and two different computations (the dense path ran)
  // The plain transformer on the base prompt is far from it: the test can tell.
  EXPECT_GT(test::rel_err(k.plain(), k.g["out"]), 0.01);  // measured 0.032, against the 1e-4 tolerance
}

// --region-base-ratio 0: the blend takes nothing of the base rows, so the batch leaves them out (one row per image)
// and the cond row is the one of a batch with them at a ratio of 1e-9; on the plain and on the fast path.
TEST(Controls, RegionsWithoutBaseRatioLeaveTheBaseRowsOut) {
  torch::NoGradGuard ng;
  RegionalTransformerCase k;
  auto output = [&](double ratio) {
    k.r.region_base_ratio = ratio;
    auto controls = make_controls(k.r, k.shape);
    EXPECT_EQ(controls[0]->wants_base_rows(0), ratio > 0);
    EXPECT_TRUE(controls[0]->wants_region_text(0));
    EXPECT_FALSE(controls[0]->wants_region_text(k.r.region_steps));
    return k.forward(k.context(*controls[0], /*base_row=*/ratio > 0)).narrow(0, 0, 1);
  };
  at::Tensor without = output(0.0), with = output(1e-9), plain = k.plain();
  const double e = test::rel_err(without, with);
  std::printf("[controls] regional, base ratio 0 without base rows against 1e-9 with them: rel err %.3g (plain %.3g)\n",
              e, test::rel_err(without, plain));
  EXPECT_LE(e, 1e-6);
  EXPECT_GT(test::rel_err(without, plain), 0.01);  // the regions did act
  fused::ModeGuard fast(fused::Mode::Reference);
  EXPECT_LE(test::rel_err(output(0.0), without), 1e-5);
}

// SD3 with CFG: the rows that hold one prompt padded to the regions' text length (uncond, base) give what the
// unpadded prompt gives; the padding is masked out of every attention.
TEST(Controls, RegionalPaddingIsMaskedOut) {
  torch::NoGradGuard ng;
  auto sd3 = SD3Transformer::load(golden() / "tiny-sd3" / "transformer", at::kCPU, at::kFloat);
  const auto& c = sd3->config();
  const ModelShape shape{"sd3", int(c.num_layers), 0, int(c.num_attention_heads)};
  GenerateRequest r;
  r.width = r.height = 128;
  r.max_sequence_length = 20;  // 77 + 20 = 97 text tokens a prompt
  r.prompt = "a red star";
  r.regions = {{0, 0, 64, 128, "", "a blue cross"}, {64, 0, 128, 128, "", "a green moon"}};
  auto controls = make_controls(r, shape);
  GenerationInfo info;
  info.grid_h = info.grid_w = 8;
  controls[0]->begin(info);
  ControlContext ctx;
  ctx.model = shape;
  ctx.rows = {{Branch::Uncond, 0, 0.0, 0, 1}, {Branch::Cond, 0, 0.0, 1, 2}, {Branch::Base, 0, 0.0, 2, 3}};
  ctx.region_text = true;
  ctx.controls = {controls[0].get()};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  at::Tensor x = at::randn({1, 16, 16, 16}, gen), neg = at::randn({1, 97, c.joint_attention_dim}, gen);
  at::Tensor regional = at::randn({1, 194, c.joint_attention_dim}, gen), pooled = at::randn({1, c.pooled_projection_dim}, gen);
  at::Tensor t = at::tensor({500.0f});
  auto pad = [](const at::Tensor& e) { return at::constant_pad_nd(e, {0, 0, 0, 97}); };
  at::Tensor y = sd3->forward(at::cat({x, x, x}), at::cat({pad(neg), regional, pad(neg)}), at::cat({pooled, pooled, pooled}),
                              at::cat({t, t, t}), &ctx);
  at::Tensor plain = sd3->forward(x, neg, pooled, t);
  const double e = test::rel_err(y.narrow(0, 0, 1), plain);
  std::printf("[controls] padded uncond row rel err %.3g\n", e);
  EXPECT_LE(e, 1e-5);
  // The fast path's structure computes the base row's image stream once (BlockPlan::image_copies): the same rows.
  EXPECT_EQ(block_plan(&ctx, 1).image_copies, std::vector<int64_t>{1});
  {
    fused::ModeGuard fast(fused::Mode::Reference);
    at::Tensor y_fast = sd3->forward(at::cat({x, x, x}), at::cat({pad(neg), regional, pad(neg)}),
                                     at::cat({pooled, pooled, pooled}), at::cat({t, t, t}), &ctx);
    const double f = test::rel_err(y_fast, y);
    std::printf("[controls] regional SD3, fast path against plain rel err %.3g\n", f);
    EXPECT_LE(f, 1e-5);
  }
  EXPECT_GT(test::rel_err(y.narrow(0, 1, 1), plain), 1e-2);  // the regional row is another prediction
}

// One region over the whole image with the base prompt is plain attention: the image of the run without regions
// (SD3 with CFG, FLUX without), within a level. And the job key "regions" gives the --region image.
TEST(Controls, OneRegionOverTheWholeImageIsThePlainRun) {
  const auto dir = test::temp_dir("controls_one_region");
  for (const std::string model : {"tiny-sd3", "tiny-flux-dev"}) {
    const std::string base = "generate -q --model " + (golden() / model).string() +
                             " --prompt 'a red star' --negative-prompt blurry --steps 3 --cfg " +
                             (model == "tiny-sd3" ? "4" : "1") + " --width 128 --height 128 --seed 6 ";
    auto a = test::run_mmdit(base + "-o " + (dir / (model + "-a.png")).string(), "region_a");
    auto b = test::run_mmdit(base + "--region '0,0,128,128:a red star' --region-steps 3 -o " +
                                 (dir / (model + "-b.png")).string(), "region_b");
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    EXPECT_LE(max_pixel_diff(read_png(dir / (model + "-a.png")), read_png(dir / (model + "-b.png"))), 1) << model;
  }
  // Two regions change the image; the same regions as a job give it again.
  const std::string args = "--prompt 'a red star' --steps 3 --cfg 4 --width 128 --height 128 --seed 6 "
                           "--region '0,0,64,128:a blue cross' --region '64,0,128,128:a green moon'";
  auto c = test::run_mmdit("generate -q --model " + (golden() / "tiny-sd3").string() + " " + args + " -o " +
                               (dir / "c.png").string(), "region_c");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_GT(max_pixel_diff(read_png(dir / "tiny-sd3-a.png"), read_png(dir / "c.png")), 10);
  json meta = json::parse(read_png_text(dir / "c.png").at("mmdit"));
  EXPECT_EQ(meta["regions"], json::parse(R"([{"box": [0, 0, 64, 128], "prompt": "a blue cross"},
                                              {"box": [64, 0, 128, 128], "prompt": "a green moon"}])"));
  meta.erase("batch_index");
  meta["output"] = (dir / "d.png").string();
  std::ofstream(dir / "job.json") << json({{"jobs", {meta}}}).dump();
  auto d = test::run_mmdit("run " + (dir / "job.json").string(), "region_job");
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(read_png(dir / "c.png").pixels, read_png(dir / "d.png").pixels);
}

TEST(Controls, BadRegionsExitTwoWithOneLineAndNoOutput) {
  const auto dir = test::temp_dir("controls_bad_regions");
  const std::string out = dir / "x.png";
  std::ofstream(dir / "not-an-image.png") << "hello";
  std::string nine;
  for (int i = 0; i < 9; ++i) nine += " --region '" + std::to_string(i * 8) + ",0," + std::to_string(i * 8 + 8) + ",8:x'";
  const std::vector<std::tuple<std::string, std::string, std::string>> bad = {
      {"tiny-sd3", "--region '0,0,200,64:a'", "--region 0,0,200,64: outside the 128x128 image"},
      {"tiny-sd3", "--region '5,5,5,9:a'", "an empty box"},
      {"tiny-sd3", "--region '1,2,3:a'", "--region: expected X0,Y0,X1,Y1:PROMPT"},
      {"tiny-sd3", "--region-mask '" + (dir / "none.png").string() + ":a'", "cannot read"},
      {"tiny-sd3", "--region-mask '" + (dir / "not-an-image.png").string() + ":a'", "not a PNG or JPEG image"},
      {"tiny-sd3", "--region '0,0,64,64:a' --pag-scale 2", "cannot be combined with perturbation guidance"},
      {"tiny-flux-dev", nine, "exceed the text budget of 8 prompts"},
      {"tiny-cogvideox-2b", "--region '0,0,16,16:a' --frames 9 --max-sequence-length 16",
       "regional prompts are for SD3/SD3.5 and FLUX"},
  };
  for (const auto& [model, args, message] : bad) {
    test::expect_input_error("generate --model " + (golden() / model).string() + " --prompt a --steps 2 --width 128 "
                             "--height 128 " + args + " -o " + out, message, out, "bad_region");
  }
}

// ConsistEdit against its own code (zxYin/ConsistEdit_Code, scripts/reference/consistedit_official.py) on the tiny
// SD3 of the goldens: source, target and the derived mask.
TEST(Controls, ConsistEditEqualsTheOfficialCode) {
  const fs::path dir = test::source_dir() / "tests" / "data" / "consistedit";
  const json cases = read_json(dir / "cases.json");
  ASSERT_GE(cases.size(), 2u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const auto out = test::temp_dir("controls_" + name);
    auto r = test::run_mmdit("edit -q --model " + (golden() / c["model"].get<std::string>()).string() + " " +
                                 c["args"].get<std::string>() + " -o " + (out / "t.png").string() + " --source-output " +
                                 (out / "s.png").string() + " --mask-output " + (out / "m.png").string(),
                             name);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (auto [ours, theirs] : {std::pair{"s.png", "source"}, {"t.png", "target"}}) {
      Image expected = read_png(dir / c[theirs].get<std::string>());
      EXPECT_GT(spread(expected), 40);
      EXPECT_LE(max_pixel_diff(read_png(out / ours), expected), 1) << theirs;
    }
    // Their mask: the token grid, white = kept; ours: the output size, white = edited.
    Image kept = read_png(dir / c["mask"].get<std::string>()), edited = read_png(out / "m.png");
    const int cell = edited.width / kept.width;
    int cells = 0, agree = 0, edited_cells = 0;
    for (int y = 0; y < kept.height; ++y)
      for (int x = 0; x < kept.width; ++x) {
        const bool k = kept.pixels[size_t(y * kept.width + x) * kept.channels] > 127;
        const bool e = edited.pixels[size_t((y * cell + cell / 2) * edited.width + x * cell + cell / 2) * edited.channels] > 127;
        ++cells, agree += k != e, edited_cells += e;
      }
    EXPECT_EQ(agree, cells);
    EXPECT_GT(edited_cells, 0);
    EXPECT_LT(edited_cells, cells);
  }
  // The edit differs from generating the target alone from the same seed: the source's structure holds.
  const json& c = cases[0];
  const auto out = test::temp_dir("controls_consistedit_plain");
  std::string args = c["args"];
  args = std::regex_replace(args, std::regex("--source-prompt '[^']*' "), "");
  args = std::regex_replace(args, std::regex("--edit-words \\S+ --strength \\S+ "), "");
  auto p = test::run_mmdit("generate -q --model " + (golden() / c["model"].get<std::string>()).string() + " " + args +
                               " -o " + (out / "plain.png").string(), "consistedit_plain");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_GT(max_pixel_diff(read_png(out / "plain.png"), read_png(dir / c["target"].get<std::string>())), 1);  // 4 measured
}

// ConsistEdit on FLUX (its single blocks; the official FLUX editor patches diffusers' old `Attention` class, which
// diffusers 0.42's FLUX no longer uses, so there is no reference run): the edit writes its three outputs and the
// mask marks some cells and keeps others. The tiny FLUX's images hardly depend on the prompt (a level between
// prompts), so the target cannot be told from the plain target here; the fusion itself is the SD3 test's code.
TEST(Controls, ConsistEditOnFluxEditsTheSingleBlocks) {
  const auto out = test::temp_dir("controls_flux_edit");
  const std::string base = "--model " + (golden() / "tiny-flux-dev").string() +
                           " --steps 4 --guidance 7.5 --width 128 --height 128 --seed 93 ";
  auto e = test::run_mmdit("edit -q " + base + "--source-prompt 'a small red circle above a blue square' --prompt 'a small "
                           "green circle above a blue square' --edit-words circle -o " + (out / "t.png").string() +
                           " --source-output " + (out / "s.png").string() + " --mask-output " + (out / "m.png").string(),
                           "flux_edit");
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_TRUE(fs::exists(out / "t.png") && fs::exists(out / "s.png"));
  Image m = read_png(out / "m.png");
  int white = 0;
  for (auto v : m.pixels) white += v > 127;
  EXPECT_GT(white, 0);
  EXPECT_LT(size_t(white), m.pixels.size());
}

// --edit-mask-steps N: the source pass stops after N steps and the mask averages those. At N = every step it is
// the official edit (the same three images); at N = 1 the source stays the same image (the pair's source row is
// never edited) while the mask is another: refined from the pair's source row, each step's mask averages the steps
// before it, so the last one lacks the last step.
TEST(Controls, ConsistEditMaskFromTheFirstSteps) {
  const fs::path dir = test::source_dir() / "tests" / "data" / "consistedit";
  const json c = read_json(dir / "cases.json")[0];
  auto edit = [&](const std::string& extra, const std::string& name) {
    const auto out = test::temp_dir("controls_mask_steps_" + name);
    auto r = test::run_mmdit("edit -q --model " + (golden() / c["model"].get<std::string>()).string() + " " +
                                 c["args"].get<std::string>() + " " + extra + " -o " + (out / "t.png").string() +
                                 " --source-output " + (out / "s.png").string() + " --mask-output " +
                                 (out / "m.png").string(),
                             name);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return out;
  };
  const auto plain = edit("", "default"), all = edit("--edit-mask-steps 4", "all"), one = edit("--edit-mask-steps 1", "one");
  for (const char* f : {"t.png", "s.png", "m.png"}) EXPECT_EQ(max_pixel_diff(read_png(all / f), read_png(plain / f)), 0) << f;
  EXPECT_EQ(max_pixel_diff(read_png(one / "s.png"), read_png(plain / "s.png")), 0);
  Image m1 = read_png(one / "m.png"), m4 = read_png(all / "m.png");
  int edited = 0, differ = 0;
  for (size_t i = 0; i < m1.pixels.size(); ++i) edited += m1.pixels[i] > 127, differ += m1.pixels[i] != m4.pixels[i];
  EXPECT_GT(edited, 0);
  EXPECT_LT(size_t(edited), m1.pixels.size());
  EXPECT_GT(differ, 0) << "three steps of attention gave the four steps' mask";
  // The refined mask of the last step averages steps 0-2: the source pass's step 0 and the pair's steps 1 and 2 give
  // the mask of a source pass over steps 0-2.
  const auto three = edit("--edit-mask-steps 3", "three");
  EXPECT_EQ(max_pixel_diff(read_png(one / "m.png"), read_png(three / "m.png")), 0);
}

TEST(Controls, BadEditsExitTwoWithOneLineAndNoOutput) {
  const auto dir = test::temp_dir("controls_bad_edits");
  const std::string out = dir / "x.png";
  const std::string sd3 = (golden() / "tiny-sd3").string();
  const std::vector<std::tuple<std::string, std::string, std::string>> bad = {
      {"edit --model " + sd3 + " --prompt 'a red star'", "", "--source-prompt: mmdit edit needs"},
      {"edit --model " + sd3 + " --source-prompt 'a red star'", "", "--prompt"},
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a red star'", "", "has no word the target lacks"},
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' --edit-words moon", "",
       "--edit-words: 'moon' is not in the source prompt"},
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' --mask-output " + (dir / "m.jpg").string(), "",
       "--mask-output"},
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' --batch 2", "", "--batch"},
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' --edit-method freeflux", "", "--edit-method"},
      {"edit --model " + (golden() / "tiny-cogvideox-2b").string() + " --source-prompt 'a red star' --prompt 'a blue star' "
       "--frames 9 --max-sequence-length 16", "", "consistent editing is for SD3/SD3.5 and FLUX"},
      {"generate --model " + sd3 + " --prompt 'a red star' --mask-output " + (dir / "m.png").string(), "", "only for edits"},
      {"generate --model " + sd3 + " --prompt 'a red star' --edit-mask-steps 2", "", "--edit-mask-steps: only for edits"},
      {"edit --model " + (golden() / "tiny-flux-dev").string() + " --source-prompt 'a red star' --prompt 'a red star and "
       "a moon' --edit-method freeflux-add --edit-mask-steps 2", "", "--edit-mask-steps: only for ConsistEdit edits"},
  };
  for (const auto& [args, unused, message] : bad) {
    test::expect_input_error(args + " --steps 2 -o " + out, message, out, "bad_edit");
  }
}

TEST(Controls, AttentionMapsAreTheExactProbabilities) {
  const json cases = read_json(golden() / "cases.json");
  for (const auto& c : cases) {
    if (!c.contains("maps")) continue;
    const auto out = test::temp_dir("controls_" + c["name"].get<std::string>());
    std::string args = std::regex_replace(c["args"].get<std::string>(), std::regex("MAPS"), (out / "maps").string());
    auto r = test::run_mmdit("generate -q --model " + (golden() / c["model"].get<std::string>()).string() + " " + args +
                                 " -o " + (out / "out.png").string(),
                             "maps");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto got = SafetensorsFile::open(out / "maps" / "maps.safetensors");
    auto want = SafetensorsFile::open(golden() / c["maps"].get<std::string>());
    const double e = test::rel_err(got->tensor("maps"), want->tensor("maps"));
    std::printf("[controls] attention maps rel err %.3g\n", e);
    EXPECT_LE(e, 1e-4);
    const json tokens = json::parse(got->header().metadata.at("tokens"));
    EXPECT_EQ(tokens, json::parse(want->header().metadata.at("tokens")));
    // One PNG per token, named NN-word, at the output size; the contact sheet.
    for (const auto& t : tokens) {
      char stem[16];
      std::snprintf(stem, sizeof stem, "%02d-", t[0].get<int>());
      const fs::path png = out / "maps" / (stem + t[1].get<std::string>() + ".png");
      ASSERT_TRUE(fs::exists(png)) << png;
      Image m = read_png(png);
      EXPECT_EQ(m.width, 128);
      EXPECT_EQ(m.height, 128);
      EXPECT_EQ(*std::max_element(m.pixels.begin(), m.pixels.end()), 255);
    }
    EXPECT_TRUE(fs::exists(out / "maps" / "overlay.png"));
  }
}

TEST(Controls, GuidersEqualDiffusers) {
  test::GoldenFile g(golden() / "guiders.safetensors");
  at::Tensor running;
  Guidance zero({true, false, 1.0, 15.0, 0.0, true, 1}, {}, {"sd3", 1, 0, 1});
  for (int i = 0; i < 3; ++i) {
    const std::string s = std::to_string(i);
    at::Tensor cond = g["cond_" + s], uncond = g["uncond_" + s];
    const double e = test::rel_err(apg_guidance(cond, uncond, 5.0, 0.3, 2.0, -0.5, running), g["apg_" + s]);
    std::printf("[controls] APG step %d rel err %.3g\n", i, e);
    EXPECT_LE(e, 1e-6);
    // CFG-Zero* through the guidance stage: step 0 predicts zero without running the model.
    ControlContext ctx = zero.context(i, 3, 999 - 300 * i, 2);
    EXPECT_EQ(zero.zero_step(i), i == 0);
    if (zero.zero_step(i)) {
      EXPECT_EQ(g["zero_" + s].abs().max().item<float>(), 0.f);
      continue;
    }
    const double z = test::rel_err(zero.combine(at::cat({uncond, cond}), ctx, 4.0), g["zero_" + s]);
    std::printf("[controls] CFG-Zero* step %d rel err %.3g\n", i, z);
    EXPECT_LE(z, 1e-6);
  }
}

TEST(Controls, TextScaleEqualsScaledTextStream) {
  test::GoldenFile g(golden() / "text_scale.safetensors");
  torch::NoGradGuard ng;
  GenerateRequest r;
  auto sd3 = SD3Transformer::load(golden() / "tiny-sd3" / "transformer", at::kCPU, at::kFloat);
  const auto& c = sd3->config();
  r.text_scale = "0,2:1.7";
  test::PassControls a(r, {"sd3", int(c.num_layers), 0, int(c.num_attention_heads)}, 2);
  at::Tensor y = sd3->forward(g["sd3_hidden_states"], g["sd3_encoder_hidden_states"], g["sd3_pooled"], g["sd3_timestep"], &a.ctx);
  const double e = test::rel_err(y, g["sd3_out"]);
  std::printf("[controls] sd3 --text-scale rel err %.3g\n", e);
  EXPECT_LE(e, 1e-4);
  auto flux = FluxTransformer::load(golden() / "tiny-flux-dev" / "transformer", at::kCPU, at::kFloat);
  const auto& fc = flux->config();
  r.text_scale = "0,3:0.5";
  test::PassControls b(r, {"flux", int(fc.num_layers + fc.num_single_layers), int(fc.num_layers), int(fc.num_attention_heads)}, 1);
  at::Tensor yf = flux->forward(g["flux_hidden_states"], g["flux_encoder_hidden_states"], g["flux_pooled"],
                                at::tensor({0.7f}), g["flux_img_ids"], g["flux_txt_ids"], at::tensor({3.5f}), &b.ctx);
  const double ef = test::rel_err(yf, g["flux_out"]);
  std::printf("[controls] flux --text-scale rel err %.3g\n", ef);
  EXPECT_LE(ef, 1e-4);
  // Without the control the output differs: the test can fail.
  EXPECT_GT(test::rel_err(flux->forward(g["flux_hidden_states"], g["flux_encoder_hidden_states"], g["flux_pooled"],
                                        at::tensor({0.7f}), g["flux_img_ids"], g["flux_txt_ids"], at::tensor({3.5f})),
                          g["flux_out"]),
            1e-3);
}

// The kernel that returns the log-sum-exp gives the plain kernel's output bit for bit, and the exact LSE.
TEST(Controls, AttentionWithLseIsThePlainKernel) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (int64_t s : {37, 300}) {
    at::Tensor q = at::randn({2, 3, s, 64}, gen), k = at::randn({2, 3, s, 64}, gen), v = at::randn({2, 3, s, 64}, gen);
    auto [out, lse] = attention_with_lse(q, k, v);
    EXPECT_TRUE(at::equal(out, at::scaled_dot_product_attention(q, k, v)));
    at::Tensor ref = at::logsumexp(at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) / 8.0, -1);
    EXPECT_LE(test::rel_err(lse, ref), 1e-6);
  }
}

// u = 0: the perturbed heads are the unperturbed attention, so the perturbed branch equals cond and the image
// is the plain run's, bit for bit.
TEST(Controls, SoftPagWithUZeroIsThePlainImage) {
  const fs::path model = golden() / "tiny-sd3";
  const auto dir = test::temp_dir("controls_u0");
  const std::string base = "generate -q --model " + model.string() + " --prompt 'a red star' --steps 3 --cfg 4 --seed 5 ";
  auto a = test::run_mmdit(base + "-o " + (dir / "a.png").string(), "u0a");
  auto b = test::run_mmdit(base + "--pag-scale 3 --pag-heads 0:0,1:1,2:0 --pag-u 0 -o " + (dir / "b.png").string(), "u0b");
  auto c = test::run_mmdit(base + "--pag-scale 3 --pag-heads 0:0,1:1,2:0 --pag-u 0.5 -o " + (dir / "c.png").string(), "u0c");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(read_png(dir / "a.png").pixels, read_png(dir / "b.png").pixels);
  EXPECT_GT(max_pixel_diff(read_png(dir / "a.png"), read_png(dir / "c.png")), 1);  // u = 0.5 does perturb
}

TEST(Controls, BadControlsExitTwoWithOneLineAndNoOutput) {
  const fs::path sd3 = golden() / "tiny-sd3";  // 3 blocks, 2 heads
  const auto dir = test::temp_dir("controls_bad");
  const std::string out = dir / "x.png";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--pag-scale 2 --pag-layers 3", "--pag-layers: layer 3 does not exist"},
      {"--pag-scale 2 --pag-heads 1:2", "--pag-heads: head 2 does not exist"},
      {"--pag-scale 2 --pag-heads 1-2", "--pag-heads: expected layer:head pairs"},
      {"--pag-scale 2 --pag-layers 1,x", "--pag-layers: expected comma-separated layer numbers"},
      {"--pag-scale 2 --pag-u 1.5", "--pag-u"},
      {"--pag-scale -1", "--pag-scale"},
      {"--pag-layers 1", "needs --pag-scale"},
      {"--pag-scale 1 --pag-mode half", "--pag-mode: expected image or full"},
      {"--slg-scale 2", "--slg-scale: skip-layer guidance needs --slg-layers"},
      {"--slg-scale 2 --slg-layers 5", "--slg-layers: layer 5 does not exist"},
      {"--stg-scale 1", "--stg-scale: STG is for CogVideoX"},
      {"--text-scale 0,1", "--text-scale: expected layers and a factor"},
      {"--text-scale 7:2", "--text-scale: layer 7 does not exist"},
      {"--skip-blocks 0,1,2", "--skip-blocks: leaves out every block"},
      {"--attention-maps-layers 1", "attention maps need --attention-maps"},
      {"--apg-momentum 3", "--apg-momentum"},
  };
  for (const auto& [args, message] : bad) {
    test::expect_input_error("generate --model " + sd3.string() + " --prompt a --steps 2 " + args + " -o " + out, message,
                             out, "bad");
  }
}

// Every control is a job key and goes into the PNG: the image's own metadata, run as a job, gives it again.
TEST(Controls, MetadataReproducesTheRun) {
  const fs::path model = golden() / "tiny-sd3";
  const auto dir = test::temp_dir("controls_meta");
  auto r = test::run_mmdit("generate -q --model " + model.string() +
                               " --prompt 'a blue cross' --steps 3 --cfg 4 --seed 9 --pag-scale 2 --pag-heads 1:0 "
                               "--pag-u 0.7 --pag-mode full --slg-scale 1 --slg-layers 2 --slg-start 0 --slg-stop 1 "
                               "--text-scale 0:1.2 --apg-eta 0.5 -o " + (dir / "a.png").string(),
                           "meta");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json meta = json::parse(read_png_text(dir / "a.png").at("mmdit"));
  for (const char* k : {"pag_scale", "pag_heads", "pag_u", "pag_mode", "slg_scale", "slg_layers", "slg_start", "slg_stop",
                        "text_scale", "apg_eta", "apg_norm_threshold", "apg_momentum"})
    EXPECT_TRUE(meta.contains(k)) << k << " in " << meta.dump();
  EXPECT_EQ(meta["pag_heads"], "1:0");
  EXPECT_FALSE(meta.contains("stg_scale"));
  json job = meta;
  job.erase("batch_index");
  job["output"] = (dir / "b.png").string();
  std::ofstream(dir / "job.json") << json({{"jobs", {job}}}).dump();
  auto j = test::run_mmdit("run " + (dir / "job.json").string(), "meta_job");
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(read_png(dir / "a.png").pixels, read_png(dir / "b.png").pixels);
}

// Video models: one map per latent frame, an MP4 per token (FFmpeg) and the raw maps on the frames x h x w grid.
TEST(Controls, VideoAttentionMapsHaveOneMapPerLatentFrame) {
  const auto dir = test::temp_dir("controls_video_maps");
  auto r = test::run_mmdit("generate -q --model " + (golden() / "tiny-cogvideox-2b").string() +
                               " --prompt 'a red circle' --steps 2 --frames 9 --width 48 --height 64 --seed 3 "
                               "--max-sequence-length 16 --attention-maps " + (dir / "maps").string() +
                               " -o '" + (dir / "f_%03d.png").string() + "'",
                           "video_maps");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto f = SafetensorsFile::open(dir / "maps" / "maps.safetensors");
  at::Tensor maps = f->tensor("maps");
  const json tokens = json::parse(f->header().metadata.at("tokens"));
  ASSERT_GE(tokens.size(), 3u);
  // 9 frames -> 3 latent frames; 64x48 pixels -> 8x6 latents -> 4x3 tokens at patch size 2.
  EXPECT_EQ(maps.sizes(), at::IntArrayRef({int64_t(tokens.size()), 3, 4, 3}));
  char stem[16];
  std::snprintf(stem, sizeof stem, "%02d-", tokens[0][0].get<int>());
  EXPECT_TRUE(fs::exists(dir / "maps" / (stem + tokens[0][1].get<std::string>() + ".mp4")));
  EXPECT_TRUE(fs::exists(dir / "maps" / "overlay.png"));
}

// The before() hook: a control may replace Q, K or V before the kernel (here V doubled: the output doubles).
TEST(Controls, BeforeHookReplacesTheKernelInputs) {
  struct DoubleV : Control {
    std::string name() const override { return "double-v"; }
    bool touches(const AttentionDesc& d, const ControlContext&) const override { return d.layer == 1; }
    void before(AttentionCall& call) override { call.v = call.v * 2; }
  } control;
  ControlContext ctx;
  ctx.controls = {&control};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  at::Tensor q = at::randn({1, 2, 10, 16}, gen), k = at::randn({1, 2, 10, 16}, gen), v = at::randn({1, 2, 10, 16}, gen);
  AttentionDesc d;
  d.controls = &ctx;
  d.layer = 0;
  EXPECT_TRUE(at::equal(attention(q, k, v, d), at::scaled_dot_product_attention(q, k, v)));  // untouched layer
  d.layer = 1;
  EXPECT_TRUE(at::allclose(attention(q, k, v, d), 2 * at::scaled_dot_product_attention(q, k, v)));
}

TEST(Controls, HelpGroupsTheFlagsByTopic) {
  auto r = test::run_mmdit("generate --help", "help");
  ASSERT_EQ(r.exit_code, 0);
  size_t last = 0;
  for (const char* g : {"Model:", "Image:", "Guidance:", "Controls:", "Video:", "Encoders:"}) {
    const size_t at = r.out.find(g);
    ASSERT_NE(at, std::string::npos) << g << "\n" << r.out;
    EXPECT_GT(at, last) << g;
    last = at;
  }
  EXPECT_NE(r.out.find("--pag-heads"), std::string::npos);
}

}  // namespace
}  // namespace mmdit
