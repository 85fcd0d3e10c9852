// Renaming original single-file checkpoints (Stability/BFL/LDM layouts) to diffusers names by a table of
// regex rules, with the few tensor transforms those layouts need (fused qkv split, swapped halves,
// 1x1 convs as linears). The result is a name -> tensor map of views over the mapped file wherever the
// transform allows, which load_module() copies into a module like a WeightStore.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/weights.h"

namespace at {
class Tensor;
}

namespace mmdit {

enum class Transform {
  Copy,         // as stored; with several targets: chunked evenly along dim 0 (fused qkv -> q, k, v)
  SwapHalves,   // [a; b] -> [b; a] along dim 0 (shift/scale order of adaLN projections)
  SqueezeConv,  // [out, in, 1, 1] or [out, in, 1] -> [out, in] (1x1 conv stored for a linear)
};

struct RenameRule {
  std::string pattern;               // ECMAScript regex matched against the whole source name
  std::vector<std::string> targets;  // std::regex_replace formats ($1, $2, ...); empty = drop the tensor
  Transform transform = Transform::Copy;
  // With several targets: the sizes along dim 0 of the parts, in target order (uneven splits such as
  // FLUX's linear1 -> q, k, v, mlp); empty = equal parts.
  std::vector<int64_t> split_sizes = {};
};

using TensorMap = std::map<std::string, at::Tensor>;

// Applies the first matching rule to every tensor of `store`. A name no rule matches is a FormatError
// (naming up to five of them); two sources mapping to one target too.
TensorMap convert_weights(const WeightStore& store, const std::vector<RenameRule>& rules);

// Same contract as load_module(Module, WeightStore, LoadOptions), reading from a converted map.
void load_module(torch::nn::Module& module, const TensorMap& tensors, const LoadOptions& options = {});

}  // namespace mmdit
