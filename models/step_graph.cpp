#include "models/step_graph.h"

#include <optional>
#include <sstream>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "controls/control.h"
#include "core/errors.h"
#include "core/parallel.h"

namespace mmdit {

struct StepGraph::State {
  bool on = false;
  std::string key;                  // the input shapes of the warm-up and of the graph
  std::optional<c10::cuda::CUDAStream> stream;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  std::vector<at::Tensor> inputs;   // the graph's input buffers
  at::Tensor output;                // the graph's output (overwritten by each replay)
};

namespace {

std::string shape_key(const std::vector<at::Tensor>& inputs) {
  std::ostringstream s;
  for (const auto& t : inputs) {
    if (!t.defined()) {
      s << "-;";
      continue;
    }
    s << t.device() << t.scalar_type() << t.sizes() << t.strides() << ';';
  }
  return s.str();
}

bool graphable(const std::vector<at::Tensor>& inputs, const ControlContext* ctx) {
  if (ctx && !ctx->controls.empty()) return false;  // controls keep their hooks, eagerly
  const ParallelPlan* plan = current_plan();
  if (plan && plan->ulysses > 1) return false;  // collectives inside the call
  for (const auto& t : inputs)
    if (t.defined()) return t.is_cuda();
  return false;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Runs fn on `stream`, ordered after the work already queued on the caller's stream and before what follows.
at::Tensor on_stream(const c10::cuda::CUDAStream& stream, const std::function<at::Tensor()>& fn) {
  c10::cuda::device_synchronize();
  at::Tensor out;
  {
    c10::cuda::CUDAStreamGuard guard(stream);
    out = fn();
  }
  c10::cuda::device_synchronize();
  return out;
}

}  // namespace

StepGraph::StepGraph(bool on) : s_(std::make_unique<State>()) { s_->on = on; }

StepGraph::~StepGraph() = default;

at::Tensor StepGraph::operator()(const std::vector<at::Tensor>& inputs, const ControlContext* ctx, const Call& call) {
  State& s = *s_;
  if (!s.on || !graphable(inputs, ctx)) {
    ++eager;
    return call(inputs);
  }
  const std::string key = shape_key(inputs);
  if (s.graph && key == s.key) {
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].defined()) s.inputs[i].copy_(inputs[i]);
    s.graph->replay();
    ++replayed;
    return s.output.clone();
  }
  if (!s.stream) s.stream = c10::cuda::getStreamFromPool(false, inputs[0].device().index());
  if (key != s.key) {
    // The warm-up, eager, on the capture stream: its one-off work (cuBLAS's workspace for this stream above all)
    // must not happen inside the capture. Its cached blocks are tied to that stream, so they go back to the card.
    s.graph.reset();
    s.key = key;
    at::Tensor out = on_stream(*s.stream, [&] { return call(inputs); });
    c10::cuda::CUDACachingAllocator::emptyCache();
    ++eager;
    return out;
  }
  // Capture: the inputs copied into buffers of their own, then the call recorded, then replayed.
  s.inputs.clear();
  for (const auto& t : inputs) s.inputs.push_back(t.defined() ? t.clone() : t);
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  try {
    s.output = on_stream(*s.stream, [&] {
      graph->capture_begin();
      at::Tensor out = call(s.inputs);
      graph->capture_end();
      return out;
    });
  } catch (const std::exception& e) {
    // Something in the call cannot be captured (a host copy, a sync): a bug of the model's forward. PyTorch's
    // generators stay in capture mode after a failed capture, so nothing safe can follow: the graph is left
    // alive (its destructor would throw) and the run stops.
    (void)graph.release();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s.stream->stream(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
      cudaGraph_t partial = nullptr;
      if (cudaStreamEndCapture(s.stream->stream(), &partial) == cudaSuccess && partial) cudaGraphDestroy(partial);
    }
    (void)cudaGetLastError();
    throw RuntimeFailure(std::string("--cuda-graphs: this step cannot be captured as a CUDA graph (run without "
                                     "--cuda-graphs): ") + first_line(e.what()));
  }
  s.graph = std::move(graph);
  s.graph->replay();
  ++captured;
  return s.output.clone();
}

}  // namespace mmdit
