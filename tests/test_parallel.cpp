// One generation over several devices (core/parallel.h, core/comm.h, samplers/cfg_parallel.h), on the CPU:
//   - the collectives of the in-process communicator;
//   - CFG-parallel's row split;
//   - Ulysses: each family's transformer on 2 and 4 ranks (threads) against the same transformer on one, with
//     token counts the ranks do not divide (padding), f32: <= 1e-5 relative;
//   - whole pipelines on ranks played by threads, and by worker processes through the TCPStore rendezvous
//     (`generate --devices cpu,cpu`), against diffusers' goldens: <= 1 level;
//   - the bad inputs: one line, exit 2.
#include <chrono>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/comm.h"
#include "core/errors.h"
#include "core/image_io.h"
#include "core/parallel.h"
#include "models/cogvideox_transformer.h"
#include "models/flux_transformer.h"
#include "models/fused_ops.h"
#include "models/pipeline.h"
#include "models/sd3_transformer.h"
#include "samplers/cfg_parallel.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path goldens() { return fs::path(MMDIT_GOLDEN_DIR); }
const World& world_of_thread() { return world(); }  // (tests name their rank counts `world`)

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// Runs fn(rank) on `world` threads, each a rank of one world with this strategy; returns each rank's result.
template <class F>
std::vector<at::Tensor> on_ranks(int world, const std::string& strategy, F fn) {
  auto comms = make_thread_comms(world);
  std::vector<at::Tensor> out(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      torch::NoGradGuard no_grad;
      set_world({comms[size_t(r)], strategy});
      try {
        out[size_t(r)] = fn(r);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
      set_world({});
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
  return out;
}

// The plan of a transformer-only test: Ulysses over all ranks.
template <class F>
std::vector<at::Tensor> ulysses_ranks(int world, int heads, F forward) {
  return on_ranks(world, "ulysses", [&](int) {
    const ParallelPlan plan = plan_parallel(world_of_thread(), false, heads, "tiny", GenerateRequest{});
    const PlanScope scope(&plan);
    return forward();
  });
}

void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : m.parameters()) p.copy_(at::randn(p.sizes(), gen) * 0.05);
}

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen);
}

// --- the communicator --------------------------------------------------------------------------------------

TEST(Parallel, ThreadCollectivesMoveTheRightChunks) {
  for (int world : {2, 4}) {
    auto got = on_ranks(world, "auto", [&](int r) {
      Communicator& c = *world_of_thread().comm;
      at::Tensor g = c.all_gather(at::full({1, 2}, double(r)));
      EXPECT_EQ(g.size(0), world);
      for (int i = 0; i < world; ++i) EXPECT_EQ(g[i][1].item<double>(), i);
      // Chunk j of rank r holds 10 r + j; after the exchange chunk i holds 10 i + r.
      at::Tensor send = at::arange(world).to(at::kDouble).add(10.0 * r).unsqueeze(1);
      at::Tensor recv = c.all_to_all(send);
      for (int i = 0; i < world; ++i) EXPECT_EQ(recv[i][0].item<double>(), 10 * i + r);
      // Groups: even and odd ranks.
      std::vector<int> members;
      for (int i = r % 2; i < world; i += 2) members.push_back(i);
      auto sub = c.group(members, "parity" + std::to_string(r % 2));
      return sub->all_gather(at::full({1}, double(r)));
    });
    for (int r = 0; r < world; ++r) {
      std::vector<double> want;
      for (int i = r % 2; i < world; i += 2) want.push_back(i);
      EXPECT_TRUE(got[size_t(r)].equal(at::tensor(want, at::kDouble))) << got[size_t(r)];
    }
  }
}

TEST(Parallel, PlansFollowHeadsAndGuidance) {
  auto plan = [](int world, const std::string& strategy, bool cfg, int heads) {
    std::vector<std::pair<int, int>> out(static_cast<size_t>(world));
    on_ranks(world, strategy, [&](int r) {
      const ParallelPlan p = plan_parallel(world_of_thread(), cfg, heads, "m", GenerateRequest{});
      out[size_t(r)] = {p.cfg, p.ulysses};
      return at::Tensor();
    });
    return out[0];
  };
  EXPECT_EQ(plan(2, "auto", true, 38), std::make_pair(2, 1));   // SD3.5-large: CFG halves
  EXPECT_EQ(plan(4, "auto", true, 38), std::make_pair(2, 2));   // CFG x Ulysses 2
  EXPECT_EQ(plan(4, "auto", false, 24), std::make_pair(1, 4));  // FLUX: Ulysses 4
  EXPECT_EQ(plan(2, "ulysses", true, 24), std::make_pair(1, 2));
  World w;
  w.comm = make_thread_comms(1)[0];
  w.strategy = "cfg";
  EXPECT_EQ(plan_parallel(w, false, 24, "m", GenerateRequest{}).cfg, 1);  // one rank: nothing to split
}

TEST(Parallel, BadPlansNameTheReason) {
  auto error = [](int world, const std::string& strategy, bool cfg, int heads, GenerateRequest r = {}) {
    std::string message;
    auto comms = make_thread_comms(world);
    try {
      plan_parallel({comms[0], strategy}, cfg, heads, "sd3.5-large", r);
    } catch (const UsageError& e) {
      message = e.what();
    }
    return message;
  };
  EXPECT_NE(error(4, "ulysses", true, 38).find("must divide sd3.5-large's 38 attention heads"), std::string::npos);
  EXPECT_NE(error(2, "cfg", false, 24).find("no classifier-free guidance"), std::string::npos);
  EXPECT_NE(error(4, "cfg", true, 24).find("exactly 2 GPUs"), std::string::npos);
  GenerateRequest regional;
  regional.regions.push_back({});
  EXPECT_NE(error(2, "auto", true, 24, regional).find("--region"), std::string::npos);
  GenerateRequest pag;
  pag.pag_scale = 3;
  EXPECT_NE(error(2, "ulysses", false, 24, pag).find("--pag-scale"), std::string::npos);
  EXPECT_EQ(error(2, "cfg", true, 24, pag), "");  // PAG's branch rows split like any other
}

// --- CFG-parallel's rows -----------------------------------------------------------------------------------

TEST(Parallel, BatchSplitCutsBranchesAndGathersInOrder) {
  // [uncond, cond, perturbed] x 2 images = 6 rows over 4 ranks: 2, 2, 2, 0 (+2 padding) rows.
  ControlContext ctx;
  ctx.rows = {{Branch::Uncond, 0, 0, 0, 2}, {Branch::Cond, 0, 0, 2, 4}, {Branch::Perturbed, 7, 2.5, 4, 6}};
  const at::Tensor batch = at::arange(6).to(at::kFloat).view({6, 1});
  auto gathered = on_ranks(4, "cfg", [&](int r) {
    ParallelPlan plan;
    plan.cfg = 4;
    plan.cfg_comm = world_of_thread().comm;
    const PlanScope scope(&plan);
    const BatchSplit split(ctx);
    EXPECT_EQ(split.rows(), 2);
    const at::Tensor mine = split.take(batch);
    EXPECT_EQ(mine.size(0), 2);
    const auto& rows = split.context().rows;
    if (r == 1) {
      EXPECT_EQ(rows.size(), 1u);
      EXPECT_EQ(rows[0].branch, Branch::Cond);
    }
    if (r == 2) {
      EXPECT_EQ(rows[0].branch, Branch::Perturbed);
      EXPECT_EQ(rows[0].id, 7);
      EXPECT_EQ(rows[0].scale, 2.5);
    }
    if (r == 3) EXPECT_EQ(rows.back().end, 2);  // padding rows keep the context whole
    return split.gather(mine * 10);
  });
  for (const auto& g : gathered) EXPECT_TRUE(g.equal(batch * 10)) << g;
}

// --- Ulysses on each family's transformer ------------------------------------------------------------------

nlohmann::json four_heads(nlohmann::json j, int64_t head_dim) {
  j["num_attention_heads"] = 4;
  j["attention_head_dim"] = head_dim;
  return j;
}

TEST(Parallel, UlyssesSd3TransformerEqualsOneDevice) {
  // SD3.5-medium's layout (QK RMS norm, a second image-only attention), 15 image and 7 text tokens.
  auto j = four_heads(read_json(goldens() / "sd3_pipeline" / "tiny-sd35m" / "transformer" / "config.json"), 32);
  const auto config = SD3TransformerConfig::from_json(j);
  auto model = std::make_shared<SD3Transformer>(config);
  randomize(*model, 1);
  const at::Tensor x = randn({2, config.in_channels, 6, 10}, 2), e = randn({2, 7, config.joint_attention_dim}, 3);
  const at::Tensor pooled = randn({2, config.pooled_projection_dim}, 4), t = at::tensor({500.0f, 20.0f});
  for (bool fused_path : {false, true}) {
    fused::set_mode(fused_path ? fused::Mode::Reference : fused::Mode::Off);
    torch::NoGradGuard no_grad;
    const at::Tensor one = model->forward(x, e, pooled, t);
    for (int world : {2, 4}) {
      auto outs = ulysses_ranks(world, 4, [&] {
        fused::set_mode(fused_path ? fused::Mode::Reference : fused::Mode::Off);
        return model->forward(x, e, pooled, t);
      });
      for (const auto& o : outs) EXPECT_LE(test::rel_err(o, one), 1e-5) << "world " << world << " fused " << fused_path;
    }
  }
  fused::set_mode(fused::Mode::Auto);
}

TEST(Parallel, UlyssesFluxTransformerEqualsOneDevice) {
  auto j = four_heads(read_json(goldens() / "flux" / "tiny-flux-dev" / "transformer" / "config.json"), 16);
  j["axes_dims_rope"] = {4, 6, 6};
  const auto config = FluxTransformerConfig::from_json(j);
  auto model = std::make_shared<FluxTransformer>(config);
  randomize(*model, 5);
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  const int64_t n_img = 3 * 5, n_txt = 9;  // 15 and 9 tokens: padded on 2 and 4 ranks
  const at::Tensor x = randn({1, n_img, config.in_channels}, 6), e = randn({1, n_txt, config.joint_attention_dim}, 7);
  const at::Tensor pooled = randn({1, config.pooled_projection_dim}, 8), t = at::tensor({0.7f}), g = at::tensor({3.5f});
  const at::Tensor img_ids = flux_image_ids(3, 5, f32), txt_ids = flux_text_ids(n_txt, f32);
  torch::NoGradGuard no_grad;
  fused::set_mode(fused::Mode::Off);
  const at::Tensor one = model->forward(x, e, pooled, t, img_ids, txt_ids, g);
  for (int world : {2, 4}) {
    auto outs = ulysses_ranks(world, 4, [&] {
      fused::set_mode(fused::Mode::Off);
      return model->forward(x, e, pooled, t, img_ids, txt_ids, g);
    });
    for (const auto& o : outs) EXPECT_LE(test::rel_err(o, one), 1e-5) << "world " << world;
  }
  fused::set_mode(fused::Mode::Auto);
}

TEST(Parallel, UlyssesCogVideoXTransformerEqualsOneDevice) {
  auto j = four_heads(read_json(goldens() / "cogvideox" / "tiny-cogvideox-5b" / "transformer" / "config.json"), 16);
  const auto config = CogVideoXTransformerConfig::from_json(j);
  auto model = std::make_shared<CogVideoXTransformer>(config);
  randomize(*model, 9);
  // 3 latent frames of 6 x 10 latents: 45 video tokens; 16 text tokens.
  const at::Tensor x = randn({2, 3, config.in_channels, 6, 10}, 10), e = randn({2, 16, config.text_embed_dim}, 11);
  const at::Tensor t = at::tensor({900, 17}, at::kLong);
  const auto rope = cogvideox_rotary_embeddings(config, 6 * 8, 10 * 8, 3, 8);
  torch::NoGradGuard no_grad;
  fused::set_mode(fused::Mode::Off);
  const at::Tensor one = model->forward(x, e, t, rope);
  for (int world : {2, 4}) {
    auto outs = ulysses_ranks(world, 4, [&] {
      fused::set_mode(fused::Mode::Off);
      return model->forward(x, e, t, rope);
    });
    for (const auto& o : outs) EXPECT_LE(test::rel_err(o, one), 1e-5) << "world " << world;
  }
  fused::set_mode(fused::Mode::Auto);
}

// --- whole pipelines ---------------------------------------------------------------------------------------

int max_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int m = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i)
    m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

// The golden case `name` of `family`, generated on `world` thread ranks; every rank's image against diffusers'.
void expect_pipeline_on_ranks(const std::string& family, const std::string& name, int world, const std::string& strategy) {
  const auto cases = read_json(goldens() / family / "cases.json");
  nlohmann::json c;
  for (const auto& k : cases)
    if (k["name"] == name) c = k;
  ASSERT_FALSE(c.is_null()) << name;
  const auto& p = c["params"];
  GenerateRequest r;
  r.model = (goldens() / family / c["model"].get<std::string>()).string();
  r.prompt = p["prompt"];
  r.negative_prompt = p.value("negative_prompt", "");
  r.seed = p["seed"];
  r.steps = p["steps"];
  r.cfg = p.value("cfg", -1.0);
  r.guidance = p.value("guidance", -1.0);
  r.width = p["width"];
  r.height = p["height"];
  r.frames = p.value("frames", 0);
  r.dynamic_cfg = p.value("dynamic_cfg", false);
  r.max_sequence_length = p.value("max_sequence_length", 0);
  r.shift = p.value("shift", 0.0);
  if (p.contains("slg_scale")) {  // skip-layer guidance: a third branch, so the rows split unevenly over 2 ranks
    r.slg_scale = p["slg_scale"];
    r.slg_layers = p["slg_layers"].get<std::vector<int>>();
    r.slg_start = p["slg_start"];
    r.slg_stop = p["slg_stop"];
  }
  const bool video = c.contains("frames");
  const std::string golden = video ? c["frames"][4].get<std::string>() : c["images"][0].get<std::string>();
  const Image expected = read_png(goldens() / family / golden);
  std::vector<Image> images(static_cast<size_t>(world));
  on_ranks(world, strategy, [&](int rank) {
    GenerateRequest req = r;
    auto pipe = load_pipeline(req);
    pipe->resolve(req);
    images[size_t(rank)] = video ? pipe->generate_video(req)[0].frames[4] : pipe->generate(req)[0];
    return at::Tensor();
  });
  for (int rank = 0; rank < world; ++rank)
    EXPECT_LE(max_diff(images[size_t(rank)], expected), 1) << name << " world " << world << " rank " << rank;
}

TEST(Parallel, Sd3PipelineOnRanksEqualsDiffusers) {
  expect_pipeline_on_ranks("sd3_pipeline", "sd3_square_cfg", 2, "cfg");
  expect_pipeline_on_ranks("sd3_pipeline", "sd3_square_cfg", 2, "ulysses");
  expect_pipeline_on_ranks("sd3_pipeline", "sd3_square_cfg", 4, "auto");  // CFG 2 x Ulysses 2
  expect_pipeline_on_ranks("sd3_pipeline", "sd35m_slg_tall", 2, "cfg");   // [uncond, cond, skip-layer] on 2 ranks
}

TEST(Parallel, FluxPipelineOnRanksEqualsDiffusers) {
  expect_pipeline_on_ranks("flux", "dev_square", 2, "ulysses");
  expect_pipeline_on_ranks("flux", "dev_true_cfg", 4, "auto");
}

TEST(Parallel, CogVideoXPipelineOnRanksEqualsDiffusers) {
  expect_pipeline_on_ranks("cogvideox", "cog5b_dpm_dyncfg", 2, "cfg");
  expect_pipeline_on_ranks("cogvideox", "cog2b_ddim", 4, "auto");
}

// --- worker processes, the rendezvous, bad input -----------------------------------------------------------

TEST(Parallel, WorkerProcessesMeetAndWriteOneImage) {
  // Two CPU workers through the TCPStore rendezvous on loopback, CFG halves exchanged through the store.
  const auto dir = test::temp_dir("parallel_workers");
  const auto model = goldens() / "sd3_pipeline" / "tiny-sd3";
  const std::string args = "generate -q --model " + model.string() +
                           " --prompt 'a small red circle above a blue square' --seed 42 --steps 4 --cfg 7 --width "
                           "128 --height 128 --devices cpu,cpu --output " + (dir / "two.png").string();
  auto r = test::run_mmdit(args, "parallel_workers");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, (dir / "two.png").string() + "\n");  // rank 0 alone writes and prints
  EXPECT_LE(max_diff(read_png(dir / "two.png"), read_png(goldens() / "sd3_pipeline" / "sd3_square_cfg.png")), 1);
}

TEST(Parallel, JobRunOverSeveralDevicesEqualsOneDevice) {
  // A job with "devices": its own world of workers makes that run; the other runs stay in the one process.
  const auto dir = test::temp_dir("parallel_job");
  const nlohmann::json d = {{"model", (goldens() / "sd3_pipeline" / "tiny-sd3").string()}, {"steps", 3}, {"width", 64},
                            {"height", 64}, {"cfg", 4.0}, {"seed", 5}, {"prompt", "a red circle"}};
  const nlohmann::json jobs = {{"defaults", d},
                               {"jobs", {{{"output", "one.png"}},
                                         {{"output", "two.png"}, {"devices", "cpu,cpu"}},
                                         {{"output", "ulysses.png"}, {"devices", "cpu,cpu"}, {"parallel", "ulysses"}}}}};
  std::ofstream(dir / "jobs.json") << jobs.dump();
  auto r = test::run_mmdit("run -q " + (dir / "jobs.json").string() + " --report " + (dir / "report.jsonl").string(),
                           "parallel_job");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Image one = read_png(dir / "one.png");
  // f32 on the CPU: within 1 level (a half batch per rank may round a GEMM differently).
  EXPECT_LE(max_diff(read_png(dir / "two.png"), one), 1);
  EXPECT_LE(max_diff(read_png(dir / "ulysses.png"), one), 1);
  EXPECT_NE(read_png_text(dir / "two.png")["mmdit"].find("\"devices\":\"cpu,cpu\""), std::string::npos);
}

TEST(Parallel, TorchrunStyleRanksMeetAtRankZerosStore) {
  // What torchrun or a Slurm script sets up: RANK, WORLD_SIZE, MASTER_ADDR/PORT; rank 0 serves the TCPStore.
  const auto dir = test::temp_dir("parallel_torchrun");
  const std::string port = std::to_string(29000 + ::getpid() % 1000);
  const std::string args = " generate -q --model " + (goldens() / "sd3_pipeline" / "tiny-sd3").string() +
                           " --prompt 'a small red circle above a blue square' --seed 42 --steps 4 --cfg 7 --width 128"
                           " --height 128 --output " + (dir / "out.png").string();
  std::vector<std::thread> ranks;
  std::vector<int> codes(2, -1);
  for (int rank = 0; rank < 2; ++rank)
    ranks.emplace_back([&, rank] {
      const std::string env = "RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
                              " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port + " ";
      const int status = std::system((env + MMDIT_BINARY + args + " >" + (dir / ("out" + std::to_string(rank))).string() +
                                      " 2>" + (dir / ("err" + std::to_string(rank))).string()).c_str());
      codes[size_t(rank)] = WEXITSTATUS(status);
    });
  for (auto& t : ranks) t.join();
  std::ifstream err0(dir / "err0"), out1(dir / "out1");
  EXPECT_EQ(codes[0], 0) << std::string((std::istreambuf_iterator<char>(err0)), std::istreambuf_iterator<char>());
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(out1)), std::istreambuf_iterator<char>()), "");  // rank 1 writes nothing
  EXPECT_LE(max_diff(read_png(dir / "out.png"), read_png(goldens() / "sd3_pipeline" / "sd3_square_cfg.png")), 1);
}

void expect_one_line_exit_2(const test::RunResult& r, const std::string& words) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
}

TEST(Parallel, BadLayoutsExitTwoWithOneLine) {
  const auto dir = test::temp_dir("parallel_bad");
  const std::string base = "generate -q --model " + (goldens() / "sd3_pipeline" / "tiny-sd3").string() +
                           " --prompt 'a red circle' --seed 1 --steps 2 --width 64 --height 64 --output " +
                           (dir / "x.png").string();
  // This CPU machine has no CUDA device.
  expect_one_line_exit_2(test::run_mmdit(base + " --gpus 2"), "--gpus 2: this machine has 0 CUDA devices");
  expect_one_line_exit_2(test::run_mmdit(base + " --devices cpu,gpu7"), "'gpu7' is not cpu or cuda:N");
  // The tiny model has 2 heads: Ulysses over 4 ranks cannot split them.
  expect_one_line_exit_2(test::run_mmdit(base + " --devices cpu,cpu,cpu,cpu --parallel ulysses"),
                         "must divide sd3-like (3 layers)'s 2 attention heads");
  expect_one_line_exit_2(test::run_mmdit(base + " --cfg 1 --devices cpu,cpu --parallel cfg"), "no classifier-free guidance");
  EXPECT_FALSE(fs::exists(dir / "x.png"));
}

TEST(Parallel, UnreachableRendezvousTimesOutWithOneLine) {
  // Rank 1 of 2 waits for a rank 0 that never comes: after MMDIT_RENDEZVOUS_TIMEOUT seconds, one line, exit 2.
  const auto dir = test::temp_dir("parallel_rendezvous");
  const std::string env = "RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=9 MMDIT_RENDEZVOUS_TIMEOUT=2 ";
  const auto t0 = std::chrono::steady_clock::now();
  const std::string cmd = env + std::string(MMDIT_BINARY) + " generate -q --model " +
                          (goldens() / "sd3_pipeline" / "tiny-sd3").string() + " --prompt x --steps 1 --output " +
                          (dir / "y.png").string() + " 2>" + (dir / "err").string();
  const int status = std::system(cmd.c_str());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ifstream in(dir / "err");
  const std::string err((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(WEXITSTATUS(status), 2) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("rendezvous at 127.0.0.1:9 (rank 1 of 2): the ranks did not meet within 2 s"), std::string::npos) << err;
  EXPECT_LT(secs, 60);
  EXPECT_FALSE(fs::exists(dir / "y.png"));
}

}  // namespace
}  // namespace mmdit
