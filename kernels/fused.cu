// Fused CUDA kernels (kernels/fused.h). Each is a one-pass replacement for a chain of ATen ops; the ATen
// chain it replaces is in models/fused_ops.cpp (the reference the GPU checks compare against).
#include "kernels/fused.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mmdit::kernels {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// The value a store of v in T would hold, as float: the unfused path rounds at these points too.
template <class T> __device__ __forceinline__ float round_as(float v) { return to_f(from_f<T>(v)); }

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

template <class T>
bool launch_ln_modulate(const LnModArgs& a, cudaStream_t s) {
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

template <class T>
bool launch_qkv_prepare(const QkvArgs& a, cudaStream_t s) {
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

}  // namespace

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
