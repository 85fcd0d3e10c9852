#include "models/fused_ops.h"

#include <atomic>

#include <c10/util/Exception.h>

#if MMDIT_HAVE_FUSED_KERNELS
#include <c10/cuda/CUDAStream.h>
#endif

namespace mmdit::fused {
namespace {

std::atomic<Mode> g_mode{Mode::Auto};

bool use_kernels(const at::Tensor& x) {
#if MMDIT_HAVE_FUSED_KERNELS
  return g_mode.load() == Mode::Auto && x.is_cuda();
#else
  (void)x;
  return false;
#endif
}

#if MMDIT_HAVE_FUSED_KERNELS
void* stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

// Whether the kernels take these modulation rows for x [B, N, C]: [B, C] each, unit column stride, one batch
// stride for all (chunks of one adaLN output), x's dtype.
bool modulation_rows_ok(const std::vector<at::Tensor>& mods, const at::Tensor& x) {
  for (const at::Tensor& t : mods)
    if (t.dim() != 2 || t.stride(1) != 1 || t.stride(0) != mods[0].stride(0) || t.size(1) != x.size(2) ||
        t.scalar_type() != x.scalar_type() || t.size(0) != x.size(0))
      return false;
  return true;
}

bool kernel_dtype(at::ScalarType t, kernels::DType& out) {
  switch (t) {
    case at::kFloat: out = kernels::DType::F32; return true;
    case at::kHalf: out = kernels::DType::F16; return true;
    case at::kBFloat16: out = kernels::DType::BF16; return true;
    default: return false;
  }
}
#endif

at::Tensor rows_of(const at::Tensor& t, int64_t begin, int64_t n) { return t.narrow(1, begin, n); }

// The reference: what the models' plain path computes, segment by segment.
std::pair<at::Tensor, at::Tensor> ln_modulate_reference(const at::Tensor& x, const at::Tensor& y, const Modulation& m,
                                                        double eps, const at::Tensor& ln_w, const at::Tensor& ln_b) {
  const int64_t N = x.size(1), split = m.split;
  auto segment = [&](int64_t begin, int64_t n, const at::Tensor& shift, const at::Tensor& scale,
                     const at::Tensor& gate) -> std::pair<at::Tensor, at::Tensor> {
    at::Tensor xs = rows_of(x, begin, n);
    if (y.defined()) xs = residual(xs, gate, rows_of(y, begin, n));
    at::Tensor normed = at::layer_norm(xs, {x.size(-1)}, ln_w.defined() ? std::optional<at::Tensor>(ln_w) : std::nullopt,
                                       ln_b.defined() ? std::optional<at::Tensor>(ln_b) : std::nullopt, eps);
    return {xs, normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)};
  };
  if (split == 0) return segment(0, N, m.shift, m.scale, m.gate);
  auto [xt, ot] = segment(0, split, m.text_shift, m.text_scale, m.text_gate);
  auto [xv, ov] = segment(split, N - split, m.shift, m.scale, m.gate);
  return {at::cat({xt, xv}, 1), at::cat({ot, ov}, 1)};
}

at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x [B, n, H, D]; cos, sin [n, D]: apply_rotary_emb with interleaved (real, imag) pairs, in float32.
  auto sizes = x.sizes().vec();
  sizes.back() /= 2;
  sizes.push_back(2);
  auto parts = x.reshape(sizes).unbind(-1);
  at::Tensor rotated = at::stack({-parts[1], parts[0]}, -1).flatten(3);
  return (x.to(at::kFloat) * cos.unsqueeze(1) + rotated.to(at::kFloat) * sin.unsqueeze(1)).to(x.scalar_type());
}

at::Tensor qk_norm_reference(const at::Tensor& x, const QkNormSpec& s, const at::Tensor& w, const at::Tensor& b) {
  const int64_t D = x.size(-1);
  switch (s.kind) {
    case kernels::QkNorm::None: return x;
    case kernels::QkNorm::Layer: return at::layer_norm(x, {D}, w, b, s.eps);
    case kernels::QkNorm::Rms:
      if (!s.rms_round) return at::rms_norm(x, {D}, w, s.eps);
      {  // diffusers' RMSNorm
        at::Tensor var = x.to(at::kFloat).pow(2).mean({-1}, true);
        at::Tensor y = x * at::rsqrt(var + s.eps);
        if (w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16) y = y.to(w.scalar_type());
        return y * w;
      }
  }
  return x;
}

void qkv_prepare_reference(const at::Tensor& src, const QkNormSpec& s, const at::Tensor& cos, const at::Tensor& sin,
                           int64_t rope_first, Qkv& dst, int64_t offset) {
  const int64_t B = src.size(0), n = src.size(1), H = dst.q.size(2), D = dst.q.size(3), inner = H * D;
  const bool rope = cos.defined() && offset + n > rope_first;
  TORCH_CHECK(!rope || offset >= rope_first, "qkv_prepare: RoPE must cover all or none of a call's tokens");
  for (int which = 0; which < 3; ++which) {
    at::Tensor x = src.narrow(-1, which * inner, inner).reshape({B, n, H, D});
    if (which < 2) {
      x = qk_norm_reference(x, s, which == 0 ? s.q_w : s.k_w, which == 0 ? s.q_b : s.k_b);
      if (rope) x = rope_reference(x, cos.narrow(0, offset - rope_first, n), sin.narrow(0, offset - rope_first, n));
    }
    (which == 0 ? dst.q : which == 1 ? dst.k : dst.v).narrow(1, offset, n).copy_(x);
  }
}

}  // namespace

void set_mode(Mode m) { g_mode = m; }
Mode mode() { return g_mode.load(); }
bool kernels_built() { return MMDIT_HAVE_FUSED_KERNELS != 0; }

bool active(const at::Tensor& x) {
  const Mode m = g_mode.load();
  return m == Mode::Reference || (m == Mode::Auto && use_kernels(x));
}

std::pair<at::Tensor, at::Tensor> ln_modulate(const at::Tensor& x, const at::Tensor& y, const Modulation& m, double eps,
                                              const at::Tensor& ln_w, const at::Tensor& ln_b) {
#if MMDIT_HAVE_FUSED_KERNELS
  kernels::DType dt = kernels::DType::BF16;
  const bool text = m.split > 0;
  std::vector<at::Tensor> mods = {m.shift, m.scale};
  if (y.defined()) mods.push_back(m.gate);
  if (text) mods.insert(mods.end(), {m.text_shift, m.text_scale});
  if (text && y.defined()) mods.push_back(m.text_gate);
  bool ok = use_kernels(x) && kernel_dtype(x.scalar_type(), dt) && x.dim() == 3 && x.is_contiguous() &&
            (!y.defined() || (y.is_contiguous() && y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type())) &&
            (!ln_w.defined() || (ln_w.is_contiguous() && ln_w.scalar_type() == x.scalar_type())) &&
            (!ln_b.defined() || (ln_b.is_contiguous() && ln_b.scalar_type() == x.scalar_type()));
  if (ok && modulation_rows_ok(mods, x)) {
    kernels::LnModArgs a;
    a.dtype = dt;
    a.rows = x.size(0) * x.size(1);
    a.cols = x.size(2);
    a.tokens = x.size(1);
    a.split = m.split;
    a.x = x.data_ptr();
    at::Tensor x_out = x, out = at::empty_like(x);
    if (y.defined()) {
      x_out = at::empty_like(x);
      a.y = y.data_ptr();
      a.gate_b = m.gate.data_ptr();
      a.gate_a = text ? m.text_gate.data_ptr() : a.gate_b;
      a.x_out = x_out.data_ptr();
    }
    a.ln_w = ln_w.defined() ? ln_w.data_ptr() : nullptr;
    a.ln_b = ln_b.defined() ? ln_b.data_ptr() : nullptr;
    a.shift_b = m.shift.data_ptr();
    a.scale_b = m.scale.data_ptr();
    a.shift_a = text ? m.text_shift.data_ptr() : a.shift_b;
    a.scale_a = text ? m.text_scale.data_ptr() : a.scale_b;
    a.mod_stride = m.shift.size(0) == 1 ? 0 : m.shift.stride(0);
    a.out = out.data_ptr();
    a.eps = float(eps);
    if (kernels::ln_modulate(a, stream_of(x))) return {x_out, out};
  }
#endif
  return ln_modulate_reference(x, y, m, eps, ln_w, ln_b);
}

Qkv qkv_buffers(int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim, const at::TensorOptions& options) {
  return {at::empty({batch, tokens, heads, head_dim}, options), at::empty({batch, tokens, heads, head_dim}, options),
          at::empty({batch, tokens, heads, head_dim}, options)};
}

Qkv rows(const Qkv& buf, int64_t b, int64_t e) {
  return {buf.q.narrow(0, b, e - b), buf.k.narrow(0, b, e - b), buf.v.narrow(0, b, e - b)};
}

// Row by row with narrow: an index tensor would be a host-to-device copy in every block.
void copy_image_rows(Qkv& buf, int64_t begin, int64_t end, const std::vector<int64_t>& copies) {
  const int64_t first = buf.q.size(0) - int64_t(copies.size());
  for (size_t i = 0; i < copies.size(); ++i)
    for (at::Tensor* t : {&buf.q, &buf.k, &buf.v})
      t->narrow(0, first + int64_t(i), 1).narrow(1, begin, end - begin)
          .copy_(t->narrow(0, copies[i], 1).narrow(1, begin, end - begin));
}

at::Tensor with_copies(const at::Tensor& x, const std::vector<int64_t>& copies) {
  if (copies.empty()) return x;
  std::vector<at::Tensor> parts = {x};
  for (int64_t c : copies) parts.push_back(x.narrow(0, c, 1));
  return at::cat(parts);
}

void qkv_prepare(const at::Tensor& src, const QkNormSpec& s, const at::Tensor& cos, const at::Tensor& sin,
                 int64_t rope_first, Qkv& dst, int64_t offset) {
#if MMDIT_HAVE_FUSED_KERNELS
  kernels::DType dt = kernels::DType::BF16;
  const int64_t H = dst.q.size(2), D = dst.q.size(3);
  auto param_ok = [&](const at::Tensor& t) {
    return !t.defined() || (t.is_contiguous() && t.scalar_type() == src.scalar_type() && t.numel() == D);
  };
  bool ok = use_kernels(src) && kernel_dtype(src.scalar_type(), dt) && src.dim() == 3 && src.stride(2) == 1 &&
            src.size(2) >= 3 * H * D && dst.q.is_contiguous() && dst.k.is_contiguous() && dst.v.is_contiguous() &&
            dst.q.scalar_type() == src.scalar_type() && param_ok(s.q_w) && param_ok(s.k_w) && param_ok(s.q_b) &&
            param_ok(s.k_b) &&
            (!cos.defined() || (cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kFloat &&
                                sin.scalar_type() == at::kFloat && cos.size(1) == D));
  if (ok) {
    kernels::QkvArgs a;
    a.dtype = dt;
    a.batch = src.size(0);
    a.tokens = src.size(1);
    a.heads = H;
    a.head_dim = D;
    a.src = src.data_ptr();
    a.src_row_stride = src.stride(1);
    a.src_batch_stride = src.stride(0);
    a.norm = s.kind;
    a.rms_round = s.rms_round;
    a.q_w = s.q_w.defined() ? s.q_w.data_ptr() : nullptr;
    a.q_b = s.q_b.defined() ? s.q_b.data_ptr() : nullptr;
    a.k_w = s.k_w.defined() ? s.k_w.data_ptr() : nullptr;
    a.k_b = s.k_b.defined() ? s.k_b.data_ptr() : nullptr;
    a.eps = float(s.eps);
    a.cos = cos.defined() ? cos.data_ptr<float>() : nullptr;
    a.sin = sin.defined() ? sin.data_ptr<float>() : nullptr;
    a.rope_first = rope_first;
    a.q = dst.q.data_ptr();
    a.k = dst.k.data_ptr();
    a.v = dst.v.data_ptr();
    a.dst_tokens = dst.q.size(1);
    a.dst_offset = offset;
    if (kernels::qkv_prepare(a, stream_of(src))) return;
  }
#endif
  qkv_prepare_reference(src, s, cos, sin, rope_first, dst, offset);
}

at::Tensor linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!x.is_cuda() || !b.defined()) return at::gelu(at::linear(x, w, b), "tanh");
  // On CUDA, cuBLASLt's GELU epilogue is the tanh form (on the CPU the same op computes the erf form).
  auto sizes = x.sizes().vec();
  at::Tensor y = at::_addmm_activation(b, x.reshape({-1, x.size(-1)}), w.t(), 1, 1, /*use_gelu=*/true);
  sizes.back() = w.size(0);
  return y.view(sizes);
}

at::Tensor linear_of_concat(const at::Tensor& a, const at::Tensor& c, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t na = a.size(-1), nc = c.size(-1);
  auto sizes = a.sizes().vec();
  sizes.back() = w.size(0);
  at::Tensor out = at::addmm(bias, a.reshape({-1, na}), w.narrow(1, 0, na).t());
  out.addmm_(c.reshape({-1, nc}), w.narrow(1, na, nc).t());
  return out.view(sizes);
}

namespace {

// out = x + gate * y through the kernel; false when it does not take these tensors.
bool residual_kernel(const at::Tensor& x, const Modulation& m, const at::Tensor& y, at::Tensor& out) {
#if MMDIT_HAVE_FUSED_KERNELS
  kernels::DType dt = kernels::DType::BF16;
  const bool text = m.split > 0;
  bool ok = use_kernels(x) && kernel_dtype(x.scalar_type(), dt) && x.dim() == 3 && x.is_contiguous() &&
            y.is_contiguous() && y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() && out.is_contiguous();
  if (!ok || !modulation_rows_ok({m.gate, text ? m.text_gate : m.gate}, x)) return false;
  kernels::ResidualArgs a;
  a.dtype = dt;
  a.rows = x.size(0) * x.size(1);
  a.cols = x.size(2);
  a.tokens = x.size(1);
  a.split = m.split;
  a.x = x.data_ptr();
  a.gate_b = m.gate.data_ptr();
  a.gate_a = text ? m.text_gate.data_ptr() : a.gate_b;
  a.mod_stride = x.size(0) == 1 ? 0 : m.gate.stride(0);
  a.y = y.data_ptr();
  a.out = out.data_ptr();
  return kernels::residual(a, stream_of(x));
#else
  (void)x, (void)m, (void)y, (void)out;
  return false;
#endif
}

}  // namespace

at::Tensor residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  at::Tensor out = at::empty_like(x);
  Modulation m;
  m.gate = gate;
  if (residual_kernel(x, m, y, out)) return out;
  return at::addcmul(x, gate.unsqueeze(1), y);
}

void add_residual_(at::Tensor& x, const Modulation& m, const at::Tensor& y) {
  if (residual_kernel(x, m, y, x)) return;
  const int64_t T = m.split, N = x.size(1);
  if (T > 0) x.narrow(1, 0, T).addcmul_(m.text_gate.unsqueeze(1), y.narrow(1, 0, T));
  x.narrow(1, T, N - T).addcmul_(m.gate.unsqueeze(1), y.narrow(1, T, N - T));
}

at::Tensor fuse_rows(const std::vector<at::Tensor*>& params) {
  std::vector<at::Tensor> parts;
  for (at::Tensor* p : params) {
    if (!p->defined()) return at::Tensor();
    parts.push_back(*p);
  }
  at::Tensor fused = at::cat(parts, 0);
  int64_t row = 0;
  for (at::Tensor* p : params) {
    const int64_t n = p->size(0);
    at::Tensor view = fused.narrow(0, row, n);
    // set_ changes the registered parameter itself (the member shares its TensorImpl), so its old storage is freed.
    p->set_(fused.storage(), view.storage_offset(), view.sizes(), view.strides());
    row += n;
  }
  return fused;
}

}  // namespace mmdit::fused
