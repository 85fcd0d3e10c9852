// Multi-prompt video as DiTCtrl does it (TencentARC/DiTCtrl sat/sample_video.py and the sampler's latent
// blending, ../shared/research/controls.md §1), in diffusers CogVideoX terms: the video is a row of tiles of the
// model's native length that overlap by `overlap` latent frames; each prompt holds one tile or more, and
// `transition_tiles` tiles between two prompts mix their text conditions linearly. At every step each adjacent
// tile pair runs as one batch [source, target], the predictions of overlapping tiles are blended with
// triangular per-frame weights, and one scheduler step moves the whole long latent. Torch-light: tensors only.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace mmdit {

struct PromptTile {
  int first = 0, second = 0;  // the prompts whose text conditions mix in this tile
  double weight = 0.0;        // condition = (1 - weight) * first + weight * second
};

struct PromptSchedule {
  int64_t tile = 0, overlap = 0;  // latent frames
  std::vector<PromptTile> tiles;
  int64_t stride() const { return tile - overlap; }
  int64_t begin(size_t k) const { return int64_t(k) * stride(); }  // the tile's first latent frame
  int64_t latent_frames() const { return tile + (int64_t(tiles.size()) - 1) * stride(); }
};

// DiTCtrl's 9 of 13 latent frames, scaled to the tile: round(tile * 9 / 13), at least 1 and below the tile
// (0 for a one-frame tile).
int64_t default_overlap(int64_t tile);

// holds[i]: tiles that prompt i holds (>= 1); `transition_tiles` between each two consecutive prompts, with
// weights (j + 1) / (K + 1). Throws UsageError when overlap is not below the tile.
PromptSchedule make_prompt_schedule(const std::vector<int>& holds, int64_t tile, int64_t overlap, int transition_tiles);

// The per-frame blending weight of a tile: min(2(f + 1/2)/T, 2 - 2(f + 1/2)/T), float32 [T].
at::Tensor tile_weights(int64_t tile);

// Where a target tile attends to its source tile's keys and values: DiTCtrl's last 5 of 30 layers and steps 2-24
// of 50 (0-based, inclusive), scaled by depth and step count: the last max(1, round(L / 6)) layers and steps
// round(0.04 N) to round(0.48 N).
struct KvShareWindow {
  std::vector<int> layers;
  int first_step = 0, last_step = -1;
};
KvShareWindow default_kv_share(int layers, int steps);
// "FIRST-LAST" (0-based, inclusive) into the window's steps; throws UsageError naming --kv-share-steps.
void parse_kv_share_steps(const std::string& s, int steps, KvShareWindow& w);

}  // namespace mmdit
