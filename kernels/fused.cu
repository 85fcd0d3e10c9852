// Fused CUDA kernels (kernels/fused.h). Each is a one-pass replacement for a chain of ATen ops; the ATen
// chain it replaces is in models/fused_ops.cpp (the reference the GPU checks compare against).
#include "kernels/fused.h"
#include "kernels/vec8.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mmdit::kernels {
namespace {

template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// The value a store of v in T would hold, as float: the unfused path rounds at these points too.
template <class T> __device__ __forceinline__ float round_as(float v) { return to_f(from_f<T>(v)); }

// Eight float registers to consecutive values (16-byte aligned for half types, 32 for float); vec8.cuh loads them.
__device__ __forceinline__ void store8(float* p, const float* v) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <class T> __device__ __forceinline__ void store8(T* p, const float* v) {
  uint4 raw;
  T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = from_f<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared[lane] : 0.f;
  return warp_sum(t);
}

// One block per row; each thread keeps its E values of the row in registers between the passes.
template <class T, int E>
__global__ void ln_modulate_kernel(LnModArgs a) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x, cols = a.cols;
  const int64_t b = row / a.tokens, tok = row % a.tokens;
  const bool first = tok < a.split;
  const T* x = static_cast<const T*>(a.x) + row * cols;
  const int64_t mod = b * a.mod_stride;
  float v[E];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * blockDim.x;
    v[i] = 0.f;
    if (c < cols) {
      float xv = to_f(x[c]);
      if (a.gate_a || a.gate_b) {
        const T* g = static_cast<const T*>(first ? a.gate_a : a.gate_b) + mod;
        const T* y = static_cast<const T*>(a.y) + row * cols;
        xv = round_as<T>(xv + to_f(g[c]) * to_f(y[c]));
        static_cast<T*>(a.x_out)[row * cols + c] = from_f<T>(xv);
      }
      v[i] = xv;
      sum += xv;
    }
  }
  const float mean = block_sum(sum, shared) / float(cols);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * blockDim.x;
    if (c < cols) sq += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(block_sum(sq, shared) / float(cols) + a.eps);
  const T* shift = static_cast<const T*>(first ? a.shift_a : a.shift_b) + mod;
  const T* scale = static_cast<const T*>(first ? a.scale_a : a.scale_b) + mod;
  const T* w = static_cast<const T*>(a.ln_w);
  const T* bias = static_cast<const T*>(a.ln_b);
  T* out = static_cast<T*>(a.out) + row * cols;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * blockDim.x;
    if (c >= cols) continue;
    float n = (v[i] - mean) * rstd;
    if (w) n = n * to_f(w[c]) + (bias ? to_f(bias[c]) : 0.f);
    n = round_as<T>(n);  // the unfused path stores the norm before modulating
    out[c] = from_f<T>(n * (1.f + to_f(scale[c])) + to_f(shift[c]));
  }
}

// The same with eight consecutive values per thread in 16-byte loads and stores (cols % 8 == 0, aligned
// pointers): one thread per 8 columns of the row.
template <class T>
__global__ void ln_modulate_vec_kernel(LnModArgs a) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x, cols = a.cols, c0 = int64_t(threadIdx.x) * 8;
  const int64_t b = row / a.tokens, tok = row % a.tokens;
  const bool first = tok < a.split, active = c0 < cols;
  const int64_t mod = b * a.mod_stride + c0;
  float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float sum = 0.f;
  if (active) {
    load8(static_cast<const T*>(a.x) + row * cols + c0, v);
    if (a.gate_a || a.gate_b) {
      float g[8], y[8];
      load8(static_cast<const T*>(first ? a.gate_a : a.gate_b) + mod, g);
      load8(static_cast<const T*>(a.y) + row * cols + c0, y);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = round_as<T>(v[i] + g[i] * y[i]);
      store8(static_cast<T*>(a.x_out) + row * cols + c0, v);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += v[i];
  }
  const float mean = block_sum(sum, shared) / float(cols);
  float sq = 0.f;
  if (active) {
#pragma unroll
    for (int i = 0; i < 8; ++i) sq += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(block_sum(sq, shared) / float(cols) + a.eps);
  if (!active) return;
  float shift[8], scale[8], w[8], bias[8];
  load8(static_cast<const T*>(first ? a.shift_a : a.shift_b) + mod, shift);
  load8(static_cast<const T*>(first ? a.scale_a : a.scale_b) + mod, scale);
  if (a.ln_w) load8(static_cast<const T*>(a.ln_w) + c0, w);
  if (a.ln_b) load8(static_cast<const T*>(a.ln_b) + c0, bias);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float n = (v[i] - mean) * rstd;
    if (a.ln_w) n = n * w[i] + (a.ln_b ? bias[i] : 0.f);
    n = round_as<T>(n);
    v[i] = n * (1.f + scale[i]) + shift[i];
  }
  store8(static_cast<T*>(a.out) + row * cols + c0, v);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <class T>
bool vec_ok(const LnModArgs& a) {
  if (a.cols % 8 || a.cols / 8 > 1024 || (a.mod_stride % 8)) return false;
  for (const void* p : {a.x, a.gate_a, a.gate_b, a.y, static_cast<const void*>(a.x_out), a.ln_w, a.ln_b, a.shift_a,
                        a.scale_a, a.shift_b, a.scale_b, static_cast<const void*>(a.out)})
    if (p && !aligned16(p)) return false;
  return true;
}

template <class T>
bool launch_ln_modulate(const LnModArgs& a, cudaStream_t s) {
  if (vec_ok<T>(a)) {
    const int threads = int((a.cols / 8 + 31) / 32 * 32);
    ln_modulate_vec_kernel<T><<<unsigned(a.rows), threads, 0, s>>>(a);
    return cudaGetLastError() == cudaSuccess;
  }
  const int threads = a.cols >= 1024 ? 256 : 128;
  const int64_t per = (a.cols + threads - 1) / threads;
  if (per <= 4) ln_modulate_kernel<T, 4><<<unsigned(a.rows), threads, 0, s>>>(a);
  else if (per <= 8) ln_modulate_kernel<T, 8><<<unsigned(a.rows), threads, 0, s>>>(a);
  else if (per <= 16) ln_modulate_kernel<T, 16><<<unsigned(a.rows), threads, 0, s>>>(a);
  else if (per <= 32) ln_modulate_kernel<T, 32><<<unsigned(a.rows), threads, 0, s>>>(a);
  else return false;
  return cudaGetLastError() == cudaSuccess;
}

// One warp per (batch, token, head); lane l holds elements [l*E, l*E+E) of the head (E even: RoPE pairs
// stay in one lane).
template <class T, int E>
__global__ void qkv_prepare_kernel(QkvArgs a) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t H = a.heads, D = a.head_dim;
  if (warp >= a.batch * a.tokens * H) return;
  const int64_t h = warp % H, t = (warp / H) % a.tokens, b = warp / (H * a.tokens);
  const T* src = static_cast<const T*>(a.src) + b * a.src_batch_stride + t * a.src_row_stride + h * D + lane * E;
  const int64_t dt = a.dst_offset + t;
  const int64_t dst = ((b * a.dst_tokens + dt) * H + h) * D + lane * E;
  const int64_t rope_row = dt - a.rope_first;
  const bool rope = a.cos && rope_row >= 0;
  for (int which = 0; which < 3; ++which) {
    const T* in = src + which * H * D;
    T* out = static_cast<T*>(which == 0 ? a.q : which == 1 ? a.k : a.v) + dst;
    float x[E];
#pragma unroll
    for (int i = 0; i < E; ++i) x[i] = to_f(in[i]);
    if (which < 2 && a.norm != QkNorm::None) {
      const T* w = static_cast<const T*>(which == 0 ? a.q_w : a.k_w);
      const T* bias = static_cast<const T*>(which == 0 ? a.q_b : a.k_b);
      float mean = 0.f;
      if (a.norm == QkNorm::Layer) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < E; ++i) s += x[i];
        mean = warp_sum(s) / float(D);
      }
      float sq = 0.f;
#pragma unroll
      for (int i = 0; i < E; ++i) sq += (x[i] - mean) * (x[i] - mean);
      const float r = rsqrtf(warp_sum(sq) / float(D) + a.eps);
#pragma unroll
      for (int i = 0; i < E; ++i) {
        float y = (x[i] - mean) * r;
        if (a.rms_round) y = round_as<T>(y);
        y *= to_f(w[lane * E + i]);
        if (bias) y += to_f(bias[lane * E + i]);
        x[i] = round_as<T>(y);
      }
    }
    if (which < 2 && rope) {
      const float* c = a.cos + rope_row * D + lane * E;
      const float* s = a.sin + rope_row * D + lane * E;
#pragma unroll
      for (int i = 0; i < E; i += 2) {
        const float x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * c[i] - x1 * s[i];
        x[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
      }
    }
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = from_f<T>(x[i]);
  }
}

// The same with G = head_dim / 8 threads per head (G divides 32), eight values each in 16-byte loads: a warp
// covers 32 / G heads and reduces within each group of G lanes.
template <class T, int G>
__global__ void qkv_prepare_vec_kernel(QkvArgs a) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t H = a.heads, D = a.head_dim, total = a.batch * a.tokens * H * G;
  const bool valid = tid < total;  // whole groups are valid or not; all lanes still take part in the shuffles
  const int64_t t_ = valid ? tid : 0;
  const int part = int(t_ % G);
  const int64_t h = (t_ / G) % H, t = (t_ / (G * H)) % a.tokens, b = t_ / (G * H * a.tokens);
  const T* src = static_cast<const T*>(a.src) + b * a.src_batch_stride + t * a.src_row_stride + h * D + part * 8;
  const int64_t dt = a.dst_offset + t;
  const int64_t dst = ((b * a.dst_tokens + dt) * H + h) * D + part * 8;
  const int64_t rope_row = dt - a.rope_first;
  const bool rope = a.cos && rope_row >= 0;
  auto group_sum = [](float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
  };
  for (int which = 0; which < 3; ++which) {
    float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (valid) load8(src + which * H * D, x);
    if (which < 2 && a.norm != QkNorm::None) {
      const T* w = static_cast<const T*>(which == 0 ? a.q_w : a.k_w) + part * 8;
      const T* bias_p = static_cast<const T*>(which == 0 ? a.q_b : a.k_b);
      float mean = 0.f;
      if (a.norm == QkNorm::Layer) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s += x[i];
        mean = group_sum(s) / float(D);
      }
      float sq = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) sq += (x[i] - mean) * (x[i] - mean);
      const float r = rsqrtf(group_sum(sq) / float(D) + a.eps);
      float wv[8], bv[8];
      load8(w, wv);
      if (bias_p) load8(bias_p + part * 8, bv);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float y = (x[i] - mean) * r;
        if (a.rms_round) y = round_as<T>(y);
        y *= wv[i];
        if (bias_p) y += bv[i];
        x[i] = round_as<T>(y);
      }
    }
    if (which < 2 && rope && valid) {
      float c[8], sn[8];
      load8(a.cos + rope_row * D + part * 8, c);
      load8(a.sin + rope_row * D + part * 8, sn);
#pragma unroll
      for (int i = 0; i < 8; i += 2) {
        const float x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * c[i] - x1 * sn[i];
        x[i + 1] = x1 * c[i + 1] + x0 * sn[i + 1];
      }
    }
    if (valid) store8(static_cast<T*>(which == 0 ? a.q : which == 1 ? a.k : a.v) + dst, x);
  }
}

template <class T>
bool qkv_vec_ok(const QkvArgs& a) {
  if ((a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256) || a.src_row_stride % 8 || a.src_batch_stride % 8)
    return false;
  for (const void* p : {a.src, a.q_w, a.q_b, a.k_w, a.k_b, static_cast<const void*>(a.cos),
                        static_cast<const void*>(a.sin), static_cast<const void*>(a.q), static_cast<const void*>(a.k),
                        static_cast<const void*>(a.v)})
    if (p && !aligned16(p)) return false;
  return true;
}

template <class T>
bool launch_qkv_prepare(const QkvArgs& a, cudaStream_t s) {
  if (qkv_vec_ok<T>(a)) {
    const int64_t threads = a.batch * a.tokens * a.heads * (a.head_dim / 8);
    const unsigned blocks = unsigned((threads + 255) / 256);
    if (a.head_dim == 64) qkv_prepare_vec_kernel<T, 8><<<blocks, 256, 0, s>>>(a);
    else if (a.head_dim == 128) qkv_prepare_vec_kernel<T, 16><<<blocks, 256, 0, s>>>(a);
    else qkv_prepare_vec_kernel<T, 32><<<blocks, 256, 0, s>>>(a);
    return cudaGetLastError() == cudaSuccess;
  }
  const int64_t warps = a.batch * a.tokens * a.heads;
  const unsigned blocks = unsigned((warps + 7) / 8);
  switch (a.head_dim) {
    case 64: qkv_prepare_kernel<T, 2><<<blocks, 256, 0, s>>>(a); break;
    case 128: qkv_prepare_kernel<T, 4><<<blocks, 256, 0, s>>>(a); break;
    case 192: qkv_prepare_kernel<T, 6><<<blocks, 256, 0, s>>>(a); break;
    case 256: qkv_prepare_kernel<T, 8><<<blocks, 256, 0, s>>>(a); break;
    default: return false;
  }
  return cudaGetLastError() == cudaSuccess;
}

// out = x + gate * y, eight values per thread (out may be x).
template <class T>
__global__ void residual_kernel(ResidualArgs a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = a.cols / 8;
  if (i >= a.rows * per_row) return;
  const int64_t row = i / per_row, c0 = (i % per_row) * 8;
  const int64_t b = row / a.tokens, tok = row % a.tokens;
  float x[8], g[8], y[8];
  load8(static_cast<const T*>(a.x) + row * a.cols + c0, x);
  load8(static_cast<const T*>(tok < a.split ? a.gate_a : a.gate_b) + b * a.mod_stride + c0, g);
  load8(static_cast<const T*>(a.y) + row * a.cols + c0, y);
#pragma unroll
  for (int k = 0; k < 8; ++k) x[k] += g[k] * y[k];
  store8(static_cast<T*>(a.out) + row * a.cols + c0, x);
}

template <class T>
bool launch_residual(const ResidualArgs& a, cudaStream_t s) {
  if (a.cols % 8 || a.mod_stride % 8) return false;
  for (const void* p : {a.x, a.gate_a, a.gate_b, a.y, static_cast<const void*>(a.out)})
    if (p && !aligned16(p)) return false;
  const int64_t n = a.rows * a.cols / 8;
  residual_kernel<T><<<unsigned((n + 255) / 256), 256, 0, s>>>(a);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

bool residual(const ResidualArgs& a, void* stream) {
  if (a.rows == 0) return true;
  auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::F32: return launch_residual<float>(a, s);
    case DType::F16: return launch_residual<__half>(a, s);
    case DType::BF16: return launch_residual<__nv_bfloat16>(a, s);
  }
  return false;
}

bool ln_modulate(const LnModArgs& a, void* stream) {
  if (a.rows == 0) return true;
  auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::F32: return launch_ln_modulate<float>(a, s);
    case DType::F16: return launch_ln_modulate<__half>(a, s);
    case DType::BF16: return launch_ln_modulate<__nv_bfloat16>(a, s);
  }
  return false;
}

bool qkv_prepare(const QkvArgs& a, void* stream) {
  if (a.batch * a.tokens == 0) return true;
  auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::F32: return launch_qkv_prepare<float>(a, s);
    case DType::F16: return launch_qkv_prepare<__half>(a, s);
    case DType::BF16: return launch_qkv_prepare<__nv_bfloat16>(a, s);
  }
  return false;
}

}  // namespace mmdit::kernels
