#include "samplers/prompt_schedule.h"

#include <algorithm>
#include <cmath>
#include <regex>

#include "core/errors.h"

namespace mmdit {

int64_t default_overlap(int64_t tile) {
  if (tile <= 1) return 0;
  const auto o = int64_t(std::llround(double(tile) * 9.0 / 13.0));
  return std::clamp<int64_t>(o, 1, tile - 1);
}

PromptSchedule make_prompt_schedule(const std::vector<int>& holds, int64_t tile, int64_t overlap, int transition_tiles) {
  if (overlap >= tile && !(tile == 1 && overlap == 0))
    throw UsageError("--overlap " + std::to_string(overlap) + ": must be smaller than a tile (" + std::to_string(tile) +
                     " latent frames)");
  PromptSchedule s;
  s.tile = tile, s.overlap = overlap;
  const int n = int(holds.size());
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < holds[size_t(i)]; ++h) s.tiles.push_back({i, i, 0.0});
    if (i + 1 < n)
      for (int j = 0; j < transition_tiles; ++j)
        s.tiles.push_back({i, i + 1, double(j + 1) / double(transition_tiles + 1)});
  }
  return s;
}

at::Tensor tile_weights(int64_t tile) {
  at::Tensor f = (at::arange(tile, at::TensorOptions().dtype(at::kDouble)) + 0.5) * (2.0 / double(tile));
  return at::minimum(f, 2.0 - f).to(at::kFloat);
}

KvShareWindow default_kv_share(int layers, int steps) {
  KvShareWindow w;
  const int n = std::max(1, int(std::lround(layers / 6.0)));
  for (int l = std::max(0, layers - n); l < layers; ++l) w.layers.push_back(l);
  w.first_step = int(std::lround(0.04 * steps));
  w.last_step = std::min(steps - 1, int(std::lround(0.48 * steps)));
  return w;
}

void parse_kv_share_steps(const std::string& s, int steps, KvShareWindow& w) {
  std::smatch m;
  static const std::regex re(R"(\s*(\d+)\s*-\s*(\d+)\s*)");
  if (!std::regex_match(s, m, re))
    throw UsageError("--kv-share-steps: expected FIRST-LAST like 2-24, got '" + s + "'");
  const int a = std::stoi(m[1]), b = std::stoi(m[2]);
  if (a > b || b >= steps)
    throw UsageError("--kv-share-steps " + s + ": must be FIRST-LAST with FIRST <= LAST < " + std::to_string(steps) +
                     " (the steps)");
  w.first_step = a, w.last_step = b;
}

}  // namespace mmdit
