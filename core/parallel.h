// One generation over several devices (docs/SCALING.md). Two strategies, and their product:
//   - CFG-parallel: the ranks of a CFG group each run part of a step's batch rows (uncond on one, cond on the
//     other) and all-gather the predictions (samplers/cfg_parallel.h);
//   - Ulysses: a transformer's token streams are split over the ranks of a Ulysses group; around each joint
//     attention, one all-to-all turns "my tokens, all heads" into "all tokens, my heads" and one turns it back.
//     Everything else in a block works per token. The hook is mmdit::attention, as for the controls.
// Every rank runs the same program on the same noise (CPU generator), so all ranks hold the same latents after
// each step and rank 0 writes the output.
#pragma once
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "core/attention.h"
#include "core/comm.h"

namespace mmdit {

struct GenerateRequest;

// The ranks of this process's generation and the strategy asked for ("auto", "cfg", "ulysses"). Set once by the
// launcher (apps/), per thread: tests play several ranks as threads of one process.
struct World {
  std::shared_ptr<Communicator> comm;  // null: one device
  std::string strategy = "auto";
};
void set_world(World w);
const World& world();

// How one generation is spread: world = cfg x ulysses ranks; rank = cfg_index * ulysses + ulysses_index.
struct ParallelPlan {
  int cfg = 1, ulysses = 1;
  std::shared_ptr<Communicator> cfg_comm, ulysses_comm;  // null when that degree is 1
};

// The plan of a generation with these properties, or why the model or request cannot take one (UsageError naming
// --parallel/--gpus and the reason: heads the degree does not divide, no CFG to split, a control that needs the
// whole batch or every head). `cfg`: the step's batch has uncond and cond rows. Every rank must call it.
ParallelPlan plan_parallel(const World& w, bool cfg, int heads, const std::string& model_name,
                           const GenerateRequest& r);

// The plan active on this thread while a pipeline generates (null: one device).
const ParallelPlan* current_plan();
class PlanScope {
 public:
  explicit PlanScope(const ParallelPlan* plan);
  ~PlanScope();
  PlanScope(const PlanScope&) = delete;
  PlanScope& operator=(const PlanScope&) = delete;

 private:
  const ParallelPlan* previous_;
};

// A transformer forward's token streams split over the Ulysses ranks of the current plan (inactive without one).
// Each stream is padded with zero tokens to a multiple of the degree; the padding is dropped around attention,
// so it never reaches a real token. While it lives, mmdit::attention runs the Ulysses exchange.
class SequenceShards {
 public:
  SequenceShards(int64_t image_tokens, int64_t text_tokens);
  ~SequenceShards();
  SequenceShards(const SequenceShards&) = delete;
  SequenceShards& operator=(const SequenceShards&) = delete;
  bool active() const { return comm_ != nullptr; }
  // This rank's image or text tokens along `dim` (unchanged when inactive).
  at::Tensor image(const at::Tensor& x, int64_t dim = 1) const { return shard(x, dim, image_); }
  at::Tensor text(const at::Tensor& x, int64_t dim = 1) const { return shard(x, dim, text_); }
  // Every rank's image tokens along `dim`, padding dropped.
  at::Tensor gather_image(const at::Tensor& x, int64_t dim = 1) const;

  // The parts of the helpers (exposed for tests).
  static int64_t local_size(int64_t tokens, int ranks) { return (tokens + ranks - 1) / ranks; }

  // The Ulysses exchange of the forward pass running on a thread.
  struct Exchange {
    Communicator* comm = nullptr;
    int64_t image = 0, text = 0;  // the streams' whole token counts
    bool inside = false;          // in the full-sequence attention call (no second exchange)
  };

 private:
  at::Tensor shard(const at::Tensor& x, int64_t dim, int64_t tokens) const;
  Communicator* comm_ = nullptr;
  int64_t image_ = 0, text_ = 0;
  Exchange previous_;  // the thread's exchange before this one, put back at the end
};

// Whether this attention call runs the Ulysses exchange (a transformer's attention inside a SequenceShards).
bool ulysses_applies(const AttentionDesc& desc);
// q, k, v: [B, H, S_local, D] with desc's ranges local; returns [B, H, S_local, D].
at::Tensor ulysses_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                             double scale);

}  // namespace mmdit
