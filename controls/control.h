// The attention-control layer. A control is one file in controls/ (registered by name in controls/registry.cpp)
// that acts at two hook points only:
//   - mmdit::attention (core/attention.h): replace or blend Q, K, V before the kernel; replace or blend the output
//     per head after it; read exact image->text probabilities (log-sum-exp trick, O(N*T) memory);
//   - the block hook (block_plan): skip a block for some batch rows, scale the text stream entering it.
// The networks know these hook points, never a particular control. A layer no control touches takes the plain
// kernel. Guidance controls (PAG, SLG, STG) add a perturbed branch to the batch; samplers/guidance.h owns the
// batch layout and combines the predictions.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "core/attention.h"
#include "core/image_io.h"

namespace mmdit {

struct GenerateRequest;

// What a batch row is for: the negative prompt, the prompt, the prompt through a perturbed network, or a helper
// row whose prediction is not used (regional prompting's base prompt, whose image stream the cond rows blend in).
enum class Branch { Uncond, Cond, Perturbed, Base };

// Rows [begin, end) of the batch that run one branch (one row per image of the batch).
struct BranchRows {
  Branch branch = Branch::Cond;
  int id = 0;          // for Perturbed: the control that owns the branch
  double scale = 0.0;  // for Perturbed: its guidance weight at this step
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// The network being controlled, for validating what a control asks of it.
struct ModelShape {
  std::string family;     // "sd3", "flux", "cogvideox"
  int layers = 0;         // attention layers (blocks) in call order; FLUX: double blocks then single blocks
  int double_layers = 0;  // FLUX: the first double_layers are double-stream blocks
  int heads = 0;
};

class Control;

// One forward pass of the transformer, as controls see it.
struct ControlContext {
  ModelShape model;
  int step = -1, num_steps = 0;  // denoising iteration (0 = first, noisiest) and their number
  double timestep = 0;           // the scheduler's timestep value at this step
  std::vector<BranchRows> rows;  // the batch, branch by branch
  bool pairs = false;            // an edit: each branch's rows are [source, target]
  bool prepass = false;          // an edit's first pass, whose images are not kept (it derives the edit mask)
  bool region_text = false;      // the cond rows take the regions' text this step (controls/regional.h)
  std::vector<Control*> controls;
  const BranchRows* find(Branch b, int id = 0) const;
  int64_t batch() const { return rows.empty() ? 0 : rows.back().end; }
};

// How the model runs one block in this pass (the block-level hook).
struct BlockPlan {
  bool skip = false;                                // every row: the block is left out
  std::vector<std::pair<int64_t, int64_t>> keep_input;  // these rows leave the block with their input (skipped)
  double text_scale = 1.0;                          // the text stream entering the block is multiplied by this
  // The last rows of the batch hold the image stream of these rows, at the block's entry and exit (regional
  // prompts' base rows in the double-stream blocks, where they take the blend): the fast path computes their
  // image side once. The plain path ignores it (it computes every row, with the same result).
  std::vector<int64_t> image_copies;
};

// Asks every control of the pass; an empty plan without controls.
BlockPlan block_plan(const ControlContext* ctx, int layer);
// The rows of plan.keep_input in `out` replaced by the same rows of `in` (a block skipped for those rows).
at::Tensor keep_input_rows(const at::Tensor& out, const at::Tensor& in, const BlockPlan& plan);

// One attention call that some control touches.
struct AttentionCall {
  const AttentionDesc& desc;
  const ControlContext& ctx;
  at::Tensor q, k, v;  // [B, H, S, D], after QK-norm and RoPE
  double scale;        // softmax scale
  at::Tensor mask;     // set by a control's before(): bool [B or 1, 1, S, S], true = attend (undefined: none)
  at::Tensor out;      // [B, H, S, D], after the kernel
  at::Tensor lse;      // [B, H, S] float32 log-sum-exp of each query row, when a control asked for it

  // Exact image->text attention probabilities of batch rows [b, e) and text positions `cols` (indices into
  // desc.text): exp(q_img . k_col * scale - lse), [e - b, H, N_img, cols] float32. Needs lse.
  at::Tensor image_text_probs(int64_t b, int64_t e, const at::Tensor& cols) const;
  // The other direction: text positions `rows` (indices into desc.text) attending to the image tokens,
  // [e - b, H, rows, N_img] float32. Needs lse.
  at::Tensor text_image_probs(int64_t b, int64_t e, const at::Tensor& rows) const;
};

// What a generation is about, for controls that need more than one pass (attention maps).
struct GenerationInfo {
  std::vector<std::pair<int64_t, std::string>> words;  // text positions in the joint text range, and their tokens
  std::vector<int64_t> edit_tokens;                    // an edit: text positions of the edit words in the source
  int64_t frames = 1, grid_h = 0, grid_w = 0;           // image tokens: frames x grid_h x grid_w
  int width = 0, height = 0, batch = 1, fps = 8;
};

class Control {
 public:
  virtual ~Control() = default;
  virtual std::string name() const = 0;

  // Guidance controls: the scale of this control's perturbed branch at this step; 0 = no branch this step.
  virtual double guidance_scale(int step, int num_steps, double timestep) const { return 0.0; }
  // Whether the guided prediction is rescaled to the cond prediction's spread (STG's do_rescaling).
  virtual bool rescales() const { return false; }
  // Whether this step's batch needs the Branch::Base helper rows (regional prompting).
  virtual bool wants_base_rows(int step) const { return false; }
  // Whether the cond rows take the regions' side-by-side text at this step (regional prompting).
  virtual bool wants_region_text(int step) const { return false; }
  int branch_id = -1;  // the id of this control's Perturbed branch (set by the guidance stage)

  // The block-level hook.
  virtual void plan_block(const ControlContext& ctx, int layer, BlockPlan& plan) const {}

  // The attention hooks: touches() decides whether the call leaves the plain kernel.
  virtual bool touches(const AttentionDesc& desc, const ControlContext& ctx) const { return false; }
  virtual bool needs_lse(const AttentionDesc& desc, const ControlContext& ctx) const { return false; }
  // May replace q, k, v, set a mask, or set out: the control computed the attention itself (the regions' dense
  // calls per region), and no kernel runs.
  virtual void before(AttentionCall& call) {}
  virtual void after(AttentionCall& call) {}   // may replace out

  // Around a generation (attention maps accumulate over steps and write at the end).
  virtual void begin(const GenerationInfo& info) {}
  virtual void end(const std::vector<Image>& images) {}
};

// The attention kernel with the controls of desc.controls (core/attention.cpp calls it when one touches desc).
at::Tensor controlled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                                double scale);
// Whether any control of desc.controls touches this call.
bool touched(const AttentionDesc& desc);

// The controls a request asks for (controls/registry.cpp), validated against the model: throws UsageError naming
// the flag for a layer or head the model lacks, a family that cannot take the control, or a malformed value.
std::vector<std::unique_ptr<Control>> make_controls(const GenerateRequest& r, const ModelShape& model);

// Layer lists from the request checked against the model ("--pag-layers: layer 40 does not exist (the model has 24)").
void check_layers(const std::vector<int>& layers, const ModelShape& model, const std::string& flag);

}  // namespace mmdit
