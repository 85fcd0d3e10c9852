#include "core/attention_fp8.h"

#include <cmath>

#include "controls/control.h"
#include "core/parallel.h"

#if MMDIT_HAVE_CUDNN_FRONTEND
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAStream.h>
#define CUDNN_FRONTEND_SKIP_JSON_LIB
#include <cudnn_frontend.h>

#include "core/log.h"
#endif
#include "kernels/quant.h"  // kOutMargin (plain declarations: the header builds without nvcc)

namespace mmdit {

namespace {

constexpr double kMax = 448.0;  // the largest finite e4m3 value

at::Tensor e4m3(const at::Tensor& x) { return x.to(at::kFloat8_e4m3fn).to(at::kFloat); }

#if MMDIT_HAVE_CUDNN_FRONTEND
namespace fe = cudnn_frontend;

// One cuDNN graph per shape, built on first use (a few ms) and kept: the steps of a run repeat the shapes.
struct Graph {
  fe::graph::Graph graph;
  std::shared_ptr<fe::graph::Tensor_attributes> q, k, v, o, scales[6], amax_s, amax_o;
  int64_t workspace = 0;
  bool ok = false;
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t>;  // device, B, H, N, D

// Q, K, V and O are [B, H, N, D] views of [B, N, H, D] memory (bshd() holds the inputs to that).
std::shared_ptr<Graph> build(cudnnHandle_t handle, int64_t b, int64_t h, int64_t n, int64_t d) {
  auto g = std::make_shared<Graph>();
  auto& G = g->graph;
  G.set_io_data_type(fe::DataType_t::FP8_E4M3)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const std::vector<int64_t> dims{b, h, n, d}, strides{n * h * d, d, h * d, 1};
  auto input = [&](const char* name) {
    return G.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(dims).set_stride(strides));
  };
  g->q = input("Q"), g->k = input("K"), g->v = input("V");
  const char* names[6] = {"Descale_Q", "Descale_K", "Descale_V", "Descale_S", "Scale_S", "Scale_O"};
  for (int i = 0; i < 6; ++i)
    g->scales[i] = G.tensor(fe::graph::Tensor_attributes()
                                .set_name(names[i])
                                .set_dim({1, 1, 1, 1})
                                .set_stride({1, 1, 1, 1})
                                .set_data_type(fe::DataType_t::FLOAT));
  auto options = fe::graph::SDPA_fp8_attributes()
                     .set_name("sdpa_fp8")
                     .set_generate_stats(false)
                     .set_causal_mask(false)
                     .set_attn_scale(float(1.0 / std::sqrt(double(d))));
  auto [o, stats, amax_s, amax_o] = G.sdpa_fp8(g->q, g->k, g->v, g->scales[0], g->scales[1], g->scales[2],
                                               g->scales[3], g->scales[4], g->scales[5], options);
  o->set_output(true).set_dim(dims).set_stride(strides);
  for (auto& a : {amax_s, amax_o})
    a->set_output(true).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(fe::DataType_t::FLOAT);
  g->o = o, g->amax_s = amax_s, g->amax_o = amax_o;
  auto fail = [&](const fe::error_t& e, const char* what) {
    log_warn(std::string("fp8 attention: cuDNN ") + what + " failed for this shape (" + e.err_msg +
              "); the call runs in bf16");
    return g;
  };
  if (auto e = G.validate(); e.is_bad()) return fail(e, "validate");
  if (auto e = G.build_operation_graph(handle); e.is_bad()) return fail(e, "build_operation_graph");
  if (auto e = G.create_execution_plans({fe::HeurMode_t::A}); e.is_bad()) return fail(e, "create_execution_plans");
  if (auto e = G.check_support(handle); e.is_bad()) return fail(e, "check_support");
  if (auto e = G.build_plans(handle); e.is_bad()) return fail(e, "build_plans");
  if (auto e = G.get_workspace_size(g->workspace); e.is_bad()) return fail(e, "get_workspace_size");
  g->ok = true;
  return g;
}

std::shared_ptr<Graph> graph_for(cudnnHandle_t handle, const at::Tensor& q) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<Graph>> cache;
  const Key key{q.get_device(), q.size(0), q.size(1), q.size(2), q.size(3)};
  std::lock_guard<std::mutex> lock(mu);
  auto& g = cache[key];
  if (!g) g = build(handle, q.size(0), q.size(1), q.size(2), q.size(3));
  return g;
}

// [B, H, N, D] views of contiguous [B, N, H, D] tensors, all three alike.
bool bshd(const at::Tensor& t, const at::Tensor& q) {
  const int64_t H = t.size(1), N = t.size(2), D = t.size(3);
  return t.sizes() == q.sizes() && t.stride(3) == 1 && t.stride(1) == D && t.stride(2) == H * D &&
         t.stride(0) == N * H * D;
}
#endif

}  // namespace

bool fp8_attention_built() { return MMDIT_HAVE_CUDNN_FRONTEND != 0; }

std::optional<Fp8Attention> attention_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const AttentionDesc& desc) {
  if (ulysses_applies(desc) || (desc.controls && touched(desc))) return std::nullopt;
#if MMDIT_HAVE_CUDNN_FRONTEND
  if (!q.is_cuda() || q.scalar_type() != at::kBFloat16 || q.dim() != 4 || !bshd(q, q) || !bshd(k, q) || !bshd(v, q))
    return std::nullopt;
  cudnnHandle_t handle = at::native::getCudnnHandle();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  cudnnSetStream(handle, stream);
  auto g = graph_for(handle, q);
  if (!g->ok) return std::nullopt;

  const auto fp8 = q.options().dtype(at::kFloat8_e4m3fn);
  at::Tensor q8 = at::empty_like(q, fp8), k8 = at::empty_like(k, fp8), v8 = at::empty_like(v, fp8);
  // scratch: amax of Q, K, V [3], then the graph's scales [7] (descale q, k, v, descale s, scale s, scale o,
  // descale o), then its two amax outputs [2], which nothing reads.
  at::Tensor scratch = at::empty({12}, q.options().dtype(at::kFloat));
  float* s = scratch.data_ptr<float>();
  kernels::QkvQuantArgs a;
  a.dtype = kernels::DType::BF16;
  a.x[0] = q.data_ptr(), a.x[1] = k.data_ptr(), a.x[2] = v.data_ptr();
  a.out[0] = q8.data_ptr(), a.out[1] = k8.data_ptr(), a.out[2] = v8.data_ptr();
  a.numel = q.numel();
  a.amax = s;
  a.params = s + 3;
  if (!kernels::quantize_qkv(a, stream)) return std::nullopt;

  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  Fp8Attention out{at::empty({B, N, H * D}, fp8), scratch.narrow(0, 9, 1)};
  std::unordered_map<std::shared_ptr<fe::graph::Tensor_attributes>, void*> pack{
      {g->q, q8.data_ptr()}, {g->k, k8.data_ptr()}, {g->v, v8.data_ptr()}, {g->o, out.values.data_ptr()},
      {g->amax_s, s + 10},   {g->amax_o, s + 11}};
  for (int i = 0; i < 6; ++i) pack[g->scales[i]] = s + 3 + i;
  at::Tensor workspace = at::empty({std::max<int64_t>(g->workspace, 1)}, q.options().dtype(at::kByte));
  if (auto e = g->graph.execute(handle, pack, workspace.data_ptr()); e.is_bad())
    throw std::runtime_error("fp8 attention: cuDNN execute failed: " + e.err_msg);
  return out;
#else
  return std::nullopt;
#endif
}

Fp8Attention attention_fp8_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  auto per_tensor = [](const at::Tensor& x) {
    at::Tensor f = x.to(at::kFloat);
    at::Tensor scale = f.abs().amax().clamp_min(1e-12) * (1.0 / kMax);
    return std::make_pair(e4m3(f / scale), scale);
  };
  auto [q8, sq] = per_tensor(q);
  auto [k8, sk] = per_tensor(k);
  auto [v8, sv] = per_tensor(v);
  at::Tensor scores = at::matmul(q8, k8.transpose(-2, -1)) * (sq * sk / std::sqrt(double(q.size(-1))));
  at::Tensor p = at::exp(scores - std::get<0>(scores.max(-1, true)));
  at::Tensor sum = p.sum(-1, true);
  at::Tensor o = at::matmul(e4m3(p * kMax) * (1.0 / kMax), v8) * sv / sum;  // [B, H, N, D]
  at::Tensor descale = (v.to(at::kFloat).abs().amax().clamp_min(1e-12) * (kernels::kOutMargin / kMax)).reshape({1});
  at::Tensor values = (o / descale).to(at::kFloat8_e4m3fn);
  return {values.transpose(1, 2).reshape({q.size(0), q.size(2), -1}), descale};
}

}  // namespace mmdit
