// DiTCtrl's mask-guided K/V sharing (controls/kv_share.h) against DiTCtrl's formulas written out with explicit
// softmax matrices (KVSharingMaskGuidedAdaLNMixin and AttentionMapController, sat/dit_video_concat.py @ f1348b5,
// ported here because the official code runs only on SAT's CogVideoX-2B): the maps averaged over heads and
// accumulated over the pass's layers, per-frame min-max normalisation, threshold 0.3, then
// O_t = M_t O_fg + (1 - M_t) O_bg with additive finfo.min key masks. f32 on the CPU: <= 1e-5 relative. Plus the
// bad inputs of --kv-share-words.
#include <limits>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "controls/kv_share.h"
#include "core/attention.h"
#include "tests/test_tensors.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {

constexpr int64_t kText = 4, kFrames = 2, kGrid = 2, kVideo = kFrames * kGrid * kGrid, kS = kText + kVideo;
constexpr int64_t kHeads = 2, kDim = 8;

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen);
}

// DiTCtrl: softmax(QK^T / sqrt(d)) of one row, explicit; [H, S, S].
at::Tensor probs(const at::Tensor& q, const at::Tensor& k) {
  return at::softmax(at::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(kDim)), -1);
}

// DiTCtrl's mask: the video->text block averaged over heads, summed over the word's columns, accumulated over layers;
// then per frame (x - min) / (max - min) >= thres.
at::Tensor reference_mask(const std::vector<at::Tensor>& maps, int64_t word) {
  at::Tensor acc = at::zeros({kVideo});
  for (const auto& p : maps) acc += p.mean(0).narrow(0, kText, kVideo).select(1, word);
  acc = (acc / double(maps.size())).view({kFrames, -1});
  const at::Tensor lo = std::get<0>(acc.min(1, true)), hi = std::get<0>(acc.max(1, true));
  return ((acc - lo) / (hi - lo) >= 0.3).view(-1);
}

TEST(KvShareWords, MaskedSharingEqualsDiTCtrlsFormulas) {
  torch::NoGradGuard no_grad;
  // A pass of two layers: layer 0 only gives its maps, layer 1 is shared. Rows [source, target], text first.
  auto control = make_masked_kv_share({1}, 0, 0, kFrames, kGrid, kGrid);
  const int64_t word_s = 1, word_t = 2;
  control->set_words({word_s}, {word_t});
  ControlContext ctx;
  ctx.model = {"cogvideox", 2, 0, int(kHeads)};
  ctx.step = 0, ctx.num_steps = 1;
  ctx.pairs = true;
  ctx.rows = {{Branch::Cond, 0, 0.0, 0, 2}};
  ctx.controls = {control.get()};
  AttentionDesc desc;
  desc.model = "cogvideox";
  desc.heads = kHeads;
  desc.text = {0, kText};
  desc.image = {kText, kS};
  desc.controls = &ctx;
  std::vector<at::Tensor> q, k, v, out;
  for (int layer = 0; layer < 2; ++layer) {
    q.push_back(randn({2, kHeads, kS, kDim}, 10 + layer));
    k.push_back(randn({2, kHeads, kS, kDim}, 20 + layer));
    v.push_back(randn({2, kHeads, kS, kDim}, 30 + layer));
    desc.layer = layer;
    out.push_back(attention(q.back(), k.back(), v.back(), desc));
  }
  // Layer 0 and the source row of layer 1 attend as usual.
  const at::Tensor plain0 = at::matmul(probs(q[0], k[0]), v[0]);
  EXPECT_LE(test::rel_err(out[0], plain0), 1e-5);
  const at::Tensor p1 = probs(q[1], k[1]);
  EXPECT_LE(test::rel_err(out[1][0], at::matmul(p1[0], v[1][0])), 1e-5);
  // The target row of layer 1.
  const at::Tensor p0 = probs(q[0], k[0]);
  const at::Tensor ms = reference_mask({p0[0], p1[0]}, word_s), mt = reference_mask({p0[1], p1[1]}, word_t);
  ASSERT_GT(ms.sum().item<int64_t>(), 0);
  ASSERT_LT(ms.sum().item<int64_t>(), kVideo);  // a real split into foreground and background
  const double neg = std::numeric_limits<float>::lowest();
  at::Tensor fg = at::zeros({kS}), bg = at::zeros({kS});
  fg.narrow(0, kText, kVideo).masked_fill_(ms.logical_not(), neg);
  bg.narrow(0, kText, kVideo).masked_fill_(ms, neg);
  auto masked = [&](const at::Tensor& additive) {
    const at::Tensor s = at::matmul(q[1][1], k[1][0].transpose(-2, -1)) / std::sqrt(double(kDim)) + additive;
    return at::matmul(at::softmax(s, -1), v[1][0]);
  };
  at::Tensor w = at::zeros({kS});
  w.narrow(0, kText, kVideo).copy_(mt);
  w[word_t] = 1.0;
  const at::Tensor o_fg = masked(fg), o_bg = masked(bg);
  const at::Tensor expected = w.view({1, kS, 1}) * o_fg + (1 - w.view({1, kS, 1})) * o_bg;
  EXPECT_LE(test::rel_err(out[1][1], expected), 1e-5);
  // And it is not the plain swap: the masks changed the target.
  EXPECT_GT(test::rel_err(out[1][1], at::matmul(probs(q[1][1], k[1][0]), v[1][0])), 1e-3);
}

TEST(KvShareWords, MaskIsPerFrameMinMaxAtTheThreshold) {
  // Frame 0: 0, 1, 2, 10 -> 0, 0.1, 0.2, 1; frame 1 constant (no foreground).
  const at::Tensor m = kv_share_mask(at::tensor({0.f, 1.f, 2.f, 10.f, 5.f, 5.f, 5.f, 5.f}), 2, 0.15);
  EXPECT_TRUE(m.equal(at::tensor({0, 0, 1, 1, 0, 0, 0, 0}).to(at::kBool))) << m;
}

TEST(KvShareWords, BadWordsExitTwoWithOneLine) {
  const std::string base = "generate -q --model " + (test::source_dir() / "demo" / "shapes-video").string() +
                           " --prompt 'a large red circle' --prompt 'a large blue square' --steps 1 -o " +
                           (test::temp_dir("kv_words") / "x.mp4").string();
  for (const auto& [flags, words] : std::vector<std::pair<std::string, std::string>>{
           {" --kv-share-words circle", "one subject word per prompt, got 1 for 2 prompts"},
           {" --kv-share-words circle,triangle", "'triangle' is not a word of prompt 2"},
           {" --kv-share-words circle,square --no-kv-share", "give one of them"}}) {
    auto r = test::run_mmdit(base + flags, "kv_words");
    EXPECT_EQ(r.exit_code, 2) << flags;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace mmdit
