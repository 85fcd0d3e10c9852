// Row-wise fp8 quantization (kernels/quant.h). The reference is fp8::quantize_reference in models/fp8.cpp:
// scale = max(amax, 1e-12) * (1 / 448) in float32, values x / scale rounded to nearest e4m3.
#include "kernels/quant.h"
#include "kernels/vec8.cuh"

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace mmdit::kernels {
namespace {

constexpr int kThreads = 256;

// torch's tanh-GELU, in float32 as its CUDA kernel computes it.
__device__ __forceinline__ float gelu_tanh(float x) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;
  const float inner = beta * (x + kappa * x * x * x);
  return 0.5f * x * (1.f + tanhf(inner));
}

// v / scale as eight e4m3 values at an 8-byte-aligned address.
__device__ __forceinline__ void store8_e4m3(uint8_t* out, const float* v, float scale) {
  uint2 packed;
  uint8_t* q = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] = __nv_cvt_float_to_fp8(v[i] / scale, __NV_SATFINITE, __NV_E4M3);
  *reinterpret_cast<uint2*>(out) = packed;
}

template <class T>
__device__ __forceinline__ void load_segment8(const QuantSegment& s, int64_t row, int64_t c, float* v) {
  const int64_t at = (row / s.tokens) * s.batch_stride + (row % s.tokens) * s.row_stride + c;
  if (s.fp8_scale) {  // e4m3 values times one scale
    const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(s.x) + at);
    const __nv_fp8_e4m3* h = reinterpret_cast<const __nv_fp8_e4m3*>(&raw);
    const float scale = *s.fp8_scale;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = float(h[i]) * scale;
  } else {
    load8(static_cast<const T*>(s.x) + at, v);
  }
  if (s.gelu) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = gelu_tanh(v[i]);
  }
}

__device__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < (kThreads >> 5) ? shared[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

// One block per row: the row's amax in a first pass, then the scaled values (the second read comes from L2).
template <class T>
__global__ void quantize_kernel(QuantArgs a) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  float amax = 0.f, v[8];
  for (int s = 0; s < a.segments; ++s)
    for (int64_t c = int64_t(threadIdx.x) * 8; c < a.seg[s].cols; c += kThreads * 8) {
      load_segment8<T>(a.seg[s], row, c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    }
  amax = block_max(amax, shared);
  const float scale = fmaxf(amax, 1e-12f) * (1.f / 448.f);  // as ATen divides by a scalar: times its reciprocal
  if (threadIdx.x == 0) a.scale[row] = scale;
  const int64_t width = a.seg[0].cols + (a.segments > 1 ? a.seg[1].cols : 0);
  uint8_t* out = static_cast<uint8_t*>(a.out) + row * width;
  for (int s = 0, offset = 0; s < a.segments; offset += int(a.seg[s].cols), ++s)
    for (int64_t c = int64_t(threadIdx.x) * 8; c < a.seg[s].cols; c += kThreads * 8) {
      load_segment8<T>(a.seg[s], row, c, v);
      store8_e4m3(out + offset + c, v, scale);
    }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Q, K, V: blockIdx.y picks the tensor; a grid-stride loop over 8-value chunks.
template <class T>
__global__ void amax_kernel(QkvQuantArgs a) {
  __shared__ float shared[32];
  const T* x = static_cast<const T*>(a.x[blockIdx.y]);
  float amax = 0.f, v[8];
  for (int64_t c = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * 8; c < a.numel; c += int64_t(gridDim.x) * kThreads * 8) {
    load8(x + c, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = block_max(amax, shared);
  // Non-negative floats order as their bit patterns do.
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned*>(a.amax) + blockIdx.y, __float_as_uint(amax));
}

template <class T>
__global__ void quantize_tensor_kernel(QkvQuantArgs a) {
  const float scale = fmaxf(a.amax[blockIdx.y], 1e-12f) * (1.f / 448.f);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    a.params[blockIdx.y] = scale;
    if (blockIdx.y == 2) {
      const float out = fmaxf(a.amax[2], 1e-12f) * kOutMargin * (1.f / 448.f);
      a.params[3] = 1.f / 448.f;
      a.params[4] = 448.f;
      a.params[5] = 1.f / out;
      a.params[6] = out;
    }
  }
  const T* x = static_cast<const T*>(a.x[blockIdx.y]);
  uint8_t* out = static_cast<uint8_t*>(a.out[blockIdx.y]);
  float v[8];
  for (int64_t c = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * 8; c < a.numel; c += int64_t(gridDim.x) * kThreads * 8) {
    load8(x + c, v);
    store8_e4m3(out + c, v, scale);
  }
}

}  // namespace

bool quantize_rows(const QuantArgs& a, void* stream) {
  if (a.dtype == DType::F32 || a.segments < 1 || a.segments > 2 || a.rows <= 0) return false;
  for (int s = 0; s < a.segments; ++s) {
    const QuantSegment& g = a.seg[s];
    if (g.cols % 8 || g.row_stride % 8 || g.batch_stride % 8 || g.tokens <= 0 || !aligned(g.x, 16)) return false;
  }
  if (!aligned(a.out, 8)) return false;
  for (int s = 0; s < a.segments; ++s)
    if (a.seg[s].fp8_scale && !aligned(a.seg[s].x, 8)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::BF16)
    quantize_kernel<__nv_bfloat16><<<unsigned(a.rows), kThreads, 0, st>>>(a);
  else
    quantize_kernel<__half><<<unsigned(a.rows), kThreads, 0, st>>>(a);
  return cudaGetLastError() == cudaSuccess;
}

bool quantize_qkv(const QkvQuantArgs& a, void* stream) {
  if (a.dtype == DType::F32 || a.numel <= 0 || a.numel % 8) return false;
  for (int t = 0; t < 3; ++t)
    if (!aligned(a.x[t], 16) || !aligned(a.out[t], 8)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t chunks = a.numel / 8;
  const dim3 grid(unsigned(std::min<int64_t>((chunks + kThreads - 1) / kThreads, 1024)), 3);
  if (cudaMemsetAsync(a.amax, 0, 3 * sizeof(float), st) != cudaSuccess) return false;
  if (a.dtype == DType::BF16) {
    amax_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(a);
    quantize_tensor_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(a);
  } else {
    amax_kernel<__half><<<grid, kThreads, 0, st>>>(a);
    quantize_tensor_kernel<__half><<<grid, kThreads, 0, st>>>(a);
  }
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace mmdit::kernels
