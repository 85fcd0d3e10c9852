// Device helpers shared by kernels/fused.cu and kernels/quant.cu: half types to float32, and eight consecutive
// values in one 16-byte load (32 bytes for float).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mmdit::kernels {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// p 16-byte aligned for half types, 32 for float.
__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <class T> __device__ __forceinline__ void load8(const T* p, float* v) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = to_f(h[i]);
}

}  // namespace mmdit::kernels
