#include "core/parallel.h"

#include <vector>

#include "core/errors.h"
#include "models/pipeline.h"

namespace mmdit {

namespace {

thread_local World t_world;
thread_local const ParallelPlan* t_plan = nullptr;

thread_local SequenceShards::Exchange t_ulysses;

std::string gpus_text(int n) { return std::to_string(n) + " GPU" + (n == 1 ? "" : "s"); }

// Controls that need the whole batch of a step, or every head of a layer, cannot see a split one.
void check_controls(const GenerateRequest& r, const ParallelPlan& p) {
  std::string whole;
  if (!r.regions.empty()) whole = "--region (regional prompts)";
  else if (!r.source_prompt.empty()) whole = "mmdit edit";
  else if (!r.attention_maps.empty()) whole = "--attention-maps";
  else if (r.prompts.size() > 1) whole = "several --prompt (multi-prompt video)";
  if (!whole.empty())
    throw UsageError(whole + ": not available on several GPUs yet (it needs every batch row and head of a step on "
                     "one device); run it on one GPU");
  if (p.ulysses > 1 && r.pag_scale > 0)
    throw UsageError("--pag-scale: perturbed attention needs every head of a layer, which --parallel ulysses splits "
                     "over the GPUs; use --parallel cfg or one GPU");
}

}  // namespace

void set_world(World w) { t_world = std::move(w); }
const World& world() { return t_world; }

ParallelPlan plan_parallel(const World& w, bool cfg, int heads, const std::string& model_name,
                           const GenerateRequest& r) {
  ParallelPlan p;
  if (!w.comm || w.comm->size() == 1) return p;
  const int n = w.comm->size();
  const std::string& s = w.strategy;
  if (s == "cfg") {
    if (!cfg) throw UsageError("--parallel cfg: this run has no classifier-free guidance to split (CFG is off); use --parallel ulysses");
    if (n != 2) throw UsageError("--parallel cfg: splits CFG's two halves over exactly 2 GPUs, got " + gpus_text(n) + "; use --parallel auto for CFG x Ulysses");
    p.cfg = 2;
  } else if (s == "ulysses") {
    p.ulysses = n;
  } else if (s == "auto") {
    if (cfg && n % 2 == 0) p.cfg = 2;
    p.ulysses = n / p.cfg;
  } else {
    throw UsageError("--parallel: expected auto, cfg or ulysses, got '" + s + "'");
  }
  if (p.ulysses > 1 && heads % p.ulysses != 0)
    throw UsageError("--parallel " + s + " on " + gpus_text(n) + ": Ulysses over " + std::to_string(p.ulysses) +
                     " GPUs must divide " + model_name + "'s " + std::to_string(heads) + " attention heads" +
                     (cfg && s != "auto" ? "; try --parallel auto (CFG x Ulysses)" : "; use fewer GPUs"));
  check_controls(r, p);
  // rank = cfg_index * ulysses + ulysses_index. Every rank makes every group, in the same order.
  const int rank = w.comm->rank();
  if (p.cfg > 1) {
    for (int u = 0; u < p.ulysses; ++u) {
      std::vector<int> members;
      for (int c = 0; c < p.cfg; ++c) members.push_back(c * p.ulysses + u);
      if (rank % p.ulysses == u) p.cfg_comm = w.comm->group(members, "cfg" + std::to_string(u));
    }
  }
  if (p.ulysses > 1) {
    if (p.cfg == 1) {
      p.ulysses_comm = w.comm;
    } else {
      for (int c = 0; c < p.cfg; ++c) {
        std::vector<int> members;
        for (int u = 0; u < p.ulysses; ++u) members.push_back(c * p.ulysses + u);
        if (rank / p.ulysses == c) p.ulysses_comm = w.comm->group(members, "ulysses" + std::to_string(c));
      }
    }
  }
  return p;
}

const ParallelPlan* current_plan() { return t_plan; }
PlanScope::PlanScope(const ParallelPlan* plan) : previous_(t_plan) { t_plan = plan; }
PlanScope::~PlanScope() { t_plan = previous_; }

// --- Ulysses ------------------------------------------------------------------------------------------------

SequenceShards::SequenceShards(int64_t image_tokens, int64_t text_tokens) : image_(image_tokens), text_(text_tokens) {
  const ParallelPlan* p = current_plan();
  if (!p || !p->ulysses_comm) return;
  comm_ = p->ulysses_comm.get();
  previous_ = t_ulysses;
  t_ulysses = Exchange{comm_, image_tokens, text_tokens, false};
}

SequenceShards::~SequenceShards() {
  if (comm_) t_ulysses = previous_;
}

at::Tensor SequenceShards::shard(const at::Tensor& x, int64_t dim, int64_t tokens) const {
  if (!comm_ || !x.defined()) return x;
  const int64_t n = local_size(tokens, comm_->size()), begin = n * comm_->rank();
  const int64_t have = std::max<int64_t>(0, std::min(n, tokens - begin));
  at::Tensor mine = x.narrow(dim, std::min(begin, tokens), have);
  if (have == n) return mine.contiguous();
  std::vector<int64_t> pad_shape = x.sizes().vec();
  pad_shape[size_t(dim < 0 ? dim + x.dim() : dim)] = n - have;
  return at::cat({mine, at::zeros(pad_shape, x.options())}, dim);
}

at::Tensor SequenceShards::gather_image(const at::Tensor& x, int64_t dim) const {
  if (!comm_) return x;
  // all_gather concatenates along dim 0: move the token dim there and back.
  at::Tensor all = comm_->all_gather(x.movedim(dim, 0).contiguous());
  return all.narrow(0, 0, image_).movedim(0, dim);
}

bool ulysses_applies(const AttentionDesc& desc) {
  return t_ulysses.comm && !t_ulysses.inside && (desc.image.size() > 0 || desc.text.size() > 0);
}

at::Tensor ulysses_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionDesc& desc,
                             double scale) {
  Communicator& comm = *t_ulysses.comm;
  const int64_t P = comm.size(), B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3), Hl = H / P;
  // The streams in joint order: where each sits in the local sequence, its local (padded) and whole length.
  struct Segment {
    TokenRange local;
    int64_t whole;
    TokenRange* full;
  };
  AttentionDesc full = desc;
  full.heads = Hl;
  std::vector<Segment> segments;
  if (desc.image.size() > 0) segments.push_back({desc.image, t_ulysses.image, &full.image});
  if (desc.text.size() > 0) segments.push_back({desc.text, t_ulysses.text, &full.text});
  if (segments.size() == 2 && segments[1].local.begin < segments[0].local.begin) std::swap(segments[0], segments[1]);
  int64_t covered = 0, offset = 0;
  for (auto& s : segments) {
    covered += s.local.size();
    if (s.local.size() != SequenceShards::local_size(s.whole, int(P)))
      throw std::logic_error("ulysses: a token stream of " + std::to_string(s.local.size()) +
                             " local tokens does not match its whole length " + std::to_string(s.whole));
    *s.full = {offset, offset + s.whole};
    offset += s.whole;
  }
  if (covered != S) throw std::logic_error("ulysses: the attention's tokens are not the sharded streams");

  // Out: q, k, v as [P (head group), 3, B, H/P, S_local, D] in one buffer, so one all-to-all moves all three.
  at::Tensor send = at::empty({P, 3, B, Hl, S, D}, q.options());
  const at::Tensor* qkv[3] = {&q, &k, &v};
  for (int i = 0; i < 3; ++i) send.select(1, i).copy_(qkv[i]->unflatten(1, {P, Hl}).permute({1, 0, 2, 3, 4}));
  const at::Tensor got = comm.all_to_all(send);  // [P (source rank), 3, B, H/P, S_local, D]
  // In: every rank's tokens of each stream in order, padding dropped: [3, B, H/P, S_whole, D].
  at::Tensor all = at::empty({3, B, Hl, offset, D}, q.options());
  for (const auto& s : segments)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = std::min(s.local.size(), s.whole - p * s.local.size());
      if (n <= 0) break;
      all.narrow(3, s.full->begin + p * s.local.size(), n).copy_(got[p].narrow(3, s.local.begin, n));
    }
  struct Inside {  // the full-sequence call below runs the plain attention, not a second exchange
    Inside() { t_ulysses.inside = true; }
    ~Inside() { t_ulysses.inside = false; }
  };
  at::Tensor o;
  {
    const Inside inside;
    o = attention(all[0], all[1], all[2], full, std::nullopt, scale);
  }
  // Back: each rank's token shards of my heads ([P (destination), B, H/P, S_local, D], zero padding), one
  // all-to-all, and the head groups side by side.
  at::Tensor back = covered * P == offset ? at::empty({P, B, Hl, S, D}, o.options()) : at::zeros({P, B, Hl, S, D}, o.options());
  for (const auto& s : segments)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = std::min(s.local.size(), s.whole - p * s.local.size());
      if (n <= 0) break;
      back[p].narrow(2, s.local.begin, n).copy_(o.narrow(2, s.full->begin + p * s.local.size(), n));
    }
  const at::Tensor mine = comm.all_to_all(back);  // [P (head group), B, H/P, S_local, D]
  // [B, S_local, H, D] in memory, returned as the [B, H, S, D] view the models transpose back for free.
  return mine.permute({1, 3, 0, 2, 4}).reshape({B, S, H, D}).transpose(1, 2);
}

}  // namespace mmdit
