// The transformer call of a denoising step replayed as one CUDA graph (issue 14, research/perf-2026.md): a step
// of SD3/FLUX is ~400-500 kernels, and launching them one by one leaves the GPU idle between some of them. The
// first call with a set of input shapes runs eagerly (the one-off work: fused weights, cuDNN plans, cuBLAS
// workspaces); the second is captured into a graph and replayed; later calls copy their inputs into the graph's
// input buffers and replay it. Replay runs the very kernels the eager call runs, so the result is the same.
// A step some attention control takes part in, or one split by Ulysses, runs eagerly: controls keep their hook
// points and may differ from step to step. The graph and its memory are freed with the object (a denoising run).
// Opt-in (--cuda-graphs): on an H200 at 1024² SD3.5-large and FLUX steps are GPU-bound, replay saved 0.2-0.8% a
// step and the warm-up and capture cost ~50 ms a run (docs/BENCHMARKS.md); small models and sizes gain more.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

namespace mmdit {

struct ControlContext;

class StepGraph {
 public:
  using Call = std::function<at::Tensor(const std::vector<at::Tensor>&)>;
  // on: the pipeline may use graphs (a CUDA device and --cuda-graphs).
  explicit StepGraph(bool on);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // call(inputs): the transformer on these inputs (every tensor that changes from step to step must be one of
  // them: the graph keeps the addresses of everything else). ctx: the step's controls (null: none). A call that
  // cannot be captured (it syncs with the host) throws RuntimeFailure; the process should end then.
  at::Tensor operator()(const std::vector<at::Tensor>& inputs, const ControlContext* ctx, const Call& call);

  // How the calls ran (for tests and logs): eager, captured, replayed.
  int eager = 0, captured = 0, replayed = 0;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace mmdit
