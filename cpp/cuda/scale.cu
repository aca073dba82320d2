// In-place weight scaling on the GPU: one grid-stride kernel per tensor, computed in fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launchers.h"

namespace {

__device__ __forceinline__ void scale_one(float* p, float a) { *p *= a; }
__device__ __forceinline__ void scale_one(__half* p, float a) { *p = __float2half(__half2float(*p) * a); }
__device__ __forceinline__ void scale_one(__nv_bfloat16* p, float a) { *p = __float2bfloat16(__bfloat162float(*p) * a); }

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    scale_one(x + i, alpha);
}

template <typename T>
void launch(void* p, int64_t n, float alpha, cudaStream_t s) {
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  scale_kernel<T><<<unsigned(blocks < 65535 ? blocks : 65535), threads, 0, s>>>(static_cast<T*>(p), n, alpha);
}

}  // namespace

extern "C" int sa_scale_cuda(int dtype, void* const* ptrs, const int64_t* numels, int64_t count, float alpha,
                             void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  for (int64_t t = 0; t < count; ++t) {
    if (numels[t] == 0) continue;
    switch (dtype) {
      case SA_F32: launch<float>(ptrs[t], numels[t], alpha, s); break;
      case SA_F16: launch<__half>(ptrs[t], numels[t], alpha, s); break;
      case SA_BF16: launch<__nv_bfloat16>(ptrs[t], numels[t], alpha, s); break;
      default: return static_cast<int>(cudaErrorInvalidValue);
    }
  }
  return static_cast<int>(cudaGetLastError());
}
