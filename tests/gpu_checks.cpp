// GPU checks (CTest label `gpu`; skipped, exit 77, without a CUDA device): the attention kernel that returns the
// log-sum-exp (core/attention.h attention_with_lse, which the attention maps and every LSE-based control use) on the
// CUDA backends PyTorch picks for bf16, f16 and f32, against float64 references: the output must be the plain
// kernel's, bit for bit, and the LSE the exact log-sum-exp. Prints one line per case.
#include <cmath>
#include <cstdio>

#include <torch/cuda.h>
#include <torch/torch.h>

#include "core/attention.h"

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
  return failures ? 1 : 0;
}
