#include "samplers/cfg_parallel.h"

#include <algorithm>

#include "core/parallel.h"

namespace mmdit {

namespace {

// Rank r's rows: [r * per, min(total, (r + 1) * per)).
int64_t slice_begin(int64_t total, int64_t per, int rank) { return std::min(total, per * rank); }
int64_t slice_count(int64_t total, int64_t per, int rank) {
  return std::min(total, per * (rank + 1)) - slice_begin(total, per, rank);
}

}  // namespace

BatchSplit::BatchSplit(const ControlContext& ctx) : local_(ctx) {
  total_ = per_ = ctx.batch();
  count_ = total_;
  const ParallelPlan* plan = current_plan();
  if (!plan || !plan->cfg_comm) return;
  comm_ = plan->cfg_comm.get();
  const int P = comm_->size(), rank = comm_->rank();
  per_ = (total_ + P - 1) / P;
  begin_ = slice_begin(total_, per_, rank);
  count_ = slice_count(total_, per_, rank);
  // The branches' rows cut to this slice and renumbered; padding rows repeat the last real row's branch.
  local_.rows.clear();
  for (const BranchRows& b : ctx.rows) {
    const int64_t lo = std::max(b.begin, begin_), hi = std::min(b.end, begin_ + count_);
    if (lo >= hi) continue;
    BranchRows part = b;
    part.begin = lo - begin_;
    part.end = hi - begin_;
    local_.rows.push_back(part);
  }
  if (local_.rows.empty()) {  // more ranks than rows: run a copy of the last row
    BranchRows last = ctx.rows.back();
    last.begin = 0;
    local_.rows.push_back(last);
  }
  local_.rows.back().end = per_;
}

at::Tensor BatchSplit::take(const at::Tensor& x) const {
  if (!comm_ || !x.defined()) return x;
  if (count_ == per_) return x.narrow(0, begin_, count_);
  const int64_t last = count_ > 0 ? begin_ + count_ - 1 : total_ - 1;
  std::vector<at::Tensor> parts;
  if (count_ > 0) parts.push_back(x.narrow(0, begin_, count_));
  std::vector<int64_t> reps(size_t(x.dim()), 1);
  reps[0] = per_ - count_;
  parts.push_back(x.narrow(0, last, 1).repeat(reps));
  return at::cat(parts, 0);
}

at::Tensor BatchSplit::gather(const at::Tensor& local) const {
  if (!comm_) return local;
  at::Tensor all = comm_->all_gather(local.contiguous());
  std::vector<at::Tensor> parts;
  for (int r = 0; r < comm_->size(); ++r) {
    const int64_t n = slice_count(total_, per_, r);
    if (n > 0) parts.push_back(all.narrow(0, r * per_, n));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

}  // namespace mmdit
