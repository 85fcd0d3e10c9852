// What an edit's pipeline needs from the ConsistEdit control's side (controls/consistedit.cpp): which words mark
// the edited region, and where their tokens are. Torch-free.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/pipeline.h"

namespace at {
class Tensor;
}

namespace mmdit {

// --edit-words, or the words of the source prompt that the target lacks (lower case, punctuation trimmed).
std::vector<std::string> edit_words(const GenerateRequest& r);
// --edit-words, or the words of the target prompt that the source lacks (FreeFlux's added object).
std::vector<std::string> added_words(const GenerateRequest& r);
// Writes an edit mask (1 = edited, one value per image token) as a PNG at the output size, white = edited, each
// token cell a block of pixels; `grid_h` x `grid_w` tokens, `height` x `width` pixels.
void write_edit_mask(const std::string& path, const at::Tensor& edited, int64_t grid_h, int64_t grid_w, int height,
                     int width);
// How many steps of the source a generated ConsistEdit edit runs first for its mask: --edit-mask-steps, at most
// `steps`, or all of them.
int consistedit_mask_steps(const GenerateRequest& r, int steps);
// Where the token sequence `word` first occurs in `ids`; empty when it does not.
std::vector<int64_t> token_positions(const std::vector<int64_t>& ids, const std::vector<int64_t>& word);

}  // namespace mmdit
