// CFG-parallel (core/parallel.h): the ranks of a CFG group each run a slice of a step's batch rows through the
// transformer ([uncond | cond | perturbed ...] split in order), then all-gather the predictions, so every rank
// combines the whole batch. Without a CFG group it passes everything through.
//
//   BatchSplit split(ctx);
//   pred = split.gather(model(split.take(x), split.take(text), ..., &split.context()));
#pragma once
#include <ATen/ATen.h>

#include "controls/control.h"

namespace mmdit {

class Communicator;

class BatchSplit {
 public:
  explicit BatchSplit(const ControlContext& ctx);
  // The context of this rank's rows (rows renumbered from 0; a short last slice is padded with its last row).
  const ControlContext& context() const { return local_; }
  int64_t rows() const { return per_; }
  // This rank's rows of a batch-major tensor of the whole batch.
  at::Tensor take(const at::Tensor& x) const;
  // Every rank's prediction rows, in batch order: the whole batch's prediction.
  at::Tensor gather(const at::Tensor& local) const;

 private:
  Communicator* comm_ = nullptr;
  int64_t total_ = 0, per_ = 0, begin_ = 0, count_ = 0;
  ControlContext local_;
};

}  // namespace mmdit
