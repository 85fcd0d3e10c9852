// What `generate` (and later `run` jobs) ask of a model family's pipeline. Torch-free, so the CLI
// and the job runner need not include LibTorch.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/image_io.h"

namespace mmdit {

struct GenerateRequest {
  // Model and its separate parts (single-file checkpoints).
  std::string model, clip_l, clip_g, t5, tokenizer_dir;
  std::string vae;  // a separate VAE (file or folder), e.g. FLUX's ae.safetensors
  std::string device = "cpu";
  std::string dtype;  // empty: f32 on cpu, bf16 on cuda
  bool no_fused = false;  // the plain path instead of the fused kernels (models/fused_ops.h)
  bool cuda_graphs = false;  // plain steps replayed as CUDA graphs (models/step_graph.h)
  bool fp8 = false;          // fp8 GEMMs in the transformer blocks (models/fp8.h): faster, lossy
  bool fp8_attention = false;  // with fp8: FLUX's and CogVideoX's attention in fp8 too (core/attention_fp8.h)
  // One generation over several devices (core/parallel.h, docs/SCALING.md): the same image as one device.
  int gpus = 0;                    // cuda:0..gpus-1; 0 or 1: one device
  std::string devices;             // or these, e.g. "cuda:0,cuda:2"
  std::string parallel = "auto";   // auto, cfg or ulysses
  // What to make. 0 / negative values mean "the pipeline's default".
  std::string prompt, negative_prompt, output;
  int width = 0, height = 0, steps = 0, batch = 1, max_sequence_length = 0;
  double cfg = -1.0, shift = 0.0;
  double guidance = -1.0;  // distilled guidance scale (FLUX.1-dev); negative = the pipeline's default
  uint64_t seed = 0;
  // Attention controls (controls/, docs/CONTROLS.md); a zero scale or an empty list is off.
  // Perturbed-attention guidance: whole layers (PAG) and single heads (HeadHunter's SoftPAG).
  double pag_scale = 0.0, pag_adaptive_scale = 0.0, pag_u = 1.0;
  std::vector<int> pag_layers;
  std::string pag_heads;          // "L:H,L:H,..."
  std::string pag_mode = "image";  // "image" (diffusers' PAG processors) or "full" (output = V everywhere)
  // Skip-layer guidance (every family): off when slg_scale == 0.
  double slg_scale = 0.0, slg_start = 0.01, slg_stop = 0.2;
  std::vector<int> slg_layers;
  // Spatiotemporal skip guidance (CogVideoX, STG-R).
  double stg_scale = 0.0;
  std::vector<int> stg_layers;
  bool stg_rescale = false;
  // CFG variants: adaptive projected guidance (on when any apg_* is given) and CFG-Zero*.
  bool apg = false;
  double apg_eta = 1.0, apg_norm_threshold = 15.0, apg_momentum = 0.0;
  bool cfg_zero_star = false;
  int cfg_zero_steps = 1;
  // Block-level controls: "L,L:lambda" scales the text stream entering those blocks; skipped blocks.
  std::string text_scale;
  std::vector<int> skip_blocks;
  // Attention maps: a folder for the image->text maps of the prompt's tokens, and the layers averaged.
  std::string attention_maps;
  std::vector<int> attention_maps_layers;
  // Regional prompts (Regional-Prompting-FLUX): boxes in output pixels (right and bottom exclusive) or mask
  // images (white = the region), each with its prompt; `prompt` is the base prompt.
  struct Region {
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // the box, unless `mask` is set
    std::string mask;                    // a mask image
    std::string prompt;
    bool operator==(const Region& o) const {
      return x0 == o.x0 && y0 == o.y0 && x1 == o.x1 && y1 == o.y1 && mask == o.mask && prompt == o.prompt;
    }
  };
  std::vector<Region> regions;
  double region_base_ratio = 0.3;  // the official defaults (infer_flux_regional.py)
  int region_steps = 10;
  std::string region_background;  // prompt of the area no region covers (default: the base prompt)
  // Consistent editing (`mmdit edit`): source and target (`prompt`) from the same noise in one batch.
  std::string source_prompt;          // set: this request is an edit
  std::string edit_method = "consistedit";
  double strength = 1.0;              // ConsistEdit's alpha: the fraction of early steps that lock the structure
  int edit_mask_steps = 0;            // ConsistEdit: the source steps the edit mask averages (0: all)
  std::string edit_words;             // comma-separated; default: the words of the source the target lacks
  std::string source_output, mask_output;  // where the source image and the derived edit mask go (optional)
  // Editing a given image: it is VAE-encoded and inverted along the flow (samplers/inversion.h); the source branch
  // follows the inverted path, so the source is the image and the target its edit.
  std::string image;
  bool resize = false;                // scale the image to a size the model takes instead of refusing it
  std::string inversion = "uniinv";  // uniinv or euler
  // Video models (CogVideoX). 0 / empty mean "the pipeline's default".
  int frames = 0, fps = 0, crf = 18;
  std::string sampler;  // "ddim" or "dpm" (default: the model's scheduler class)
  bool dynamic_cfg = false, vae_tiling = false;
  // Multi-prompt video (DiTCtrl; samplers/prompt_schedule.h): the prompts in order, each held for `tiles` tiles.
  // Empty: one prompt (`prompt`). `prompt` is the first entry's.
  struct PromptEntry {
    std::string prompt;
    int tiles = 1;
    bool operator==(const PromptEntry& o) const { return prompt == o.prompt && tiles == o.tiles; }
  };
  std::vector<PromptEntry> prompts;
  int overlap = -1;           // latent frames shared by adjacent tiles; -1: about 70% of a tile (DiTCtrl's 9 of 13)
  int transition_tiles = 2;   // tiles between two prompts, with linearly interpolated text conditions
  std::vector<int> kv_share_layers;  // layers where a tile attends to the previous tile's K/V; empty: the default
  std::string kv_share_steps;        // "FIRST-LAST" steps (0-based, inclusive); empty: the default
  bool no_kv_share = false;
  std::string kv_share_words;        // mask-guided sharing: one subject word per prompt, comma-separated; empty: off
};

// One generated video: its frames in order and the frame rate to play them at.
struct Video {
  int fps = 8;
  std::vector<Image> frames;
};

// Loads the model once; generate() may then be called for many requests (same device/dtype).
class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Fills the defaults in `r` (size, steps, cfg, ...) and validates it against the model; throws
  // UsageError for values the model cannot take (size not divisible by 16, ...).
  virtual void resolve(GenerateRequest& r) const = 0;
  // Runs a resolved request; one image per batch entry. `step` is called after each denoising step.
  virtual std::vector<Image> generate(const GenerateRequest& r, const std::function<void(int, int)>& step = {}) = 0;
  virtual std::string name() const = 0;  // "sd3.5-large", shown in logs and PNG metadata
  // Video pipelines return true and implement generate_video (one video per batch entry); generate()
  // of a video pipeline returns all frames of all videos.
  virtual bool is_video() const { return false; }
  virtual std::vector<Video> generate_video(const GenerateRequest& r, const std::function<void(int, int)>& step = {});
};

// Opens `r.model` (plus the separate encoder paths) on r.device / r.dtype.
std::unique_ptr<Pipeline> load_pipeline(const GenerateRequest& r);

// The PNG text chunks that make an image reproducible: "parameters" in the common
// "prompt\nNegative prompt: ...\nSteps: ..., Seed: ..." form, and "mmdit" as JSON of the request.
std::map<std::string, std::string> png_metadata(const GenerateRequest& r, const std::string& model_name, int index);

// The file of batch entry `index`: r.output (default mmdit-SEED.png), with "-INDEX" before the
// extension when r.batch > 1.
std::string output_path(const GenerateRequest& r, int index);

// Writes the images of an image request (atomically): one per batch entry at output_path(); for an edit (source
// and target) the target at r.output and the source at r.source_output when set. Returns the written paths.
std::vector<std::string> write_images(const GenerateRequest& r, const std::vector<Image>& images,
                                      const std::string& model_name);

// Runs a video pipeline and writes r.output (an .mp4, or PNG frames for a pattern like f_%03d.png);
// returns the written paths.
std::vector<std::string> write_videos(const GenerateRequest& r, Pipeline& pipe, const std::function<void(int, int)>& step);

// Loads, generates and writes r.output (atomically); prints the written paths.
void generate(GenerateRequest r);

}  // namespace mmdit
