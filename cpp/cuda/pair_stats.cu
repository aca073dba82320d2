// Fused pair-cosine statistics on the GPU: shared-memory tiled dot products, normalise, clamp, acos and
// reduce in the epilogue; only tiles on or above the diagonal are computed for pairs within a set.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launchers.h"

namespace {

constexpr int TILE = 32;  // output tile TILE x TILE
constexpr int ROWS_PER_THREAD = 4;
constexpr int TY = TILE / ROWS_PER_THREAD;  // block = TILE x TY threads
constexpr int KT = 32;  // slice of d per shared-memory step

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void inv_norm_kernel(const T* X, int64_t rows, int64_t d, float* inv) {
  __shared__ double part[256];
  const int64_t r = blockIdx.x;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const double v = to_f(X[r * d + i]);
    s += v * v;
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) inv[r] = part[0] > 0.0 ? static_cast<float>(1.0 / sqrt(part[0])) : 0.f;  // zero vector -> 0
}

template <typename T>
__global__ void pair_tile_kernel(const T* R, const T* C, const float* invR, const float* invC, int64_t rows,
                                 int64_t cols, int64_t d, bool within, double* cos_sum, double* ang_sum,
                                 float* pairs) {
  const int64_t k = blockIdx.z, r0 = int64_t(blockIdx.y) * TILE, c0 = int64_t(blockIdx.x) * TILE;
  if (within && c0 + TILE <= r0) return;  // entirely below the diagonal: its pairs are counted above it
  __shared__ float sR[TILE][KT + 1];
  __shared__ float sC[TILE][KT + 1];
  __shared__ double red[2][TILE * TY];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const T* Rk = R + k * rows * d;
  const T* Ck = C + k * cols * d;
  float acc[ROWS_PER_THREAD] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t kk = 0; kk < d; kk += KT) {
    for (int l = ty; l < TILE; l += TY) {
      const int64_t rr = r0 + l, cc = c0 + l, dd = kk + tx;
      sR[l][tx] = (rr < rows && dd < d) ? to_f(Rk[rr * d + dd]) : 0.f;
      sC[l][tx] = (cc < cols && dd < d) ? to_f(Ck[cc * d + dd]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int q = 0; q < KT; ++q) {
      const float cv = sC[tx][q];
#pragma unroll
      for (int u = 0; u < ROWS_PER_THREAD; ++u) acc[u] += sR[ty + TY * u][q] * cv;
    }
    __syncthreads();
  }
  double cs = 0.0, as = 0.0;
  const int64_t j = c0 + tx;
#pragma unroll
  for (int u = 0; u < ROWS_PER_THREAD; ++u) {
    const int64_t i = r0 + ty + TY * u;
    if (i >= rows || j >= cols || (within && i > j)) continue;
    float c = acc[u] * invR[k * rows + i] * invC[k * cols + j];
    c = fminf(1.f, fmaxf(-1.f, c));
    if (pairs) {
      pairs[(k * rows + i) * cols + j] = c;
      if (within) pairs[(k * rows + j) * cols + i] = c;
    }
    if (within && i == j) continue;  // self-pairs are not pairs
    cs += c;
    as += acosf(c);
  }
  const int t = ty * TILE + tx;
  red[0][t] = cs;
  red[1][t] = as;
  __syncthreads();
  for (int w = TILE * TY / 2; w > 0; w >>= 1) {
    if (t < w) {
      red[0][t] += red[0][t + w];
      red[1][t] += red[1][t + w];
    }
    __syncthreads();
  }
  if (t == 0) {
    atomicAdd(cos_sum + k, red[0][0]);
    atomicAdd(ang_sum + k, red[1][0]);
  }
}

template <typename T>
int run(const T* A, const T* B, int64_t K, int64_t n, int64_t m, int64_t d, float* invA, float* invB,
        double* sums, float* paa, float* pbb, float* pab, cudaStream_t s) {
  inv_norm_kernel<T><<<unsigned(K * n), 256, 0, s>>>(A, K * n, d, invA);
  inv_norm_kernel<T><<<unsigned(K * m), 256, 0, s>>>(B, K * m, d, invB);
  const dim3 block(TILE, TY);
  struct Job { const T* R; const T* C; const float* iR; const float* iC; int64_t rows, cols; bool within; float* p; };
  const Job jobs[3] = {{A, A, invA, invA, n, n, true, paa}, {B, B, invB, invB, m, m, true, pbb},
                       {A, B, invA, invB, n, m, false, pab}};
  for (int b = 0; b < 3; ++b) {
    const Job& j = jobs[b];
    const dim3 grid(unsigned((j.cols + TILE - 1) / TILE), unsigned((j.rows + TILE - 1) / TILE), unsigned(K));
    pair_tile_kernel<T><<<grid, block, 0, s>>>(j.R, j.C, j.iR, j.iC, j.rows, j.cols, d, j.within, sums + b * K,
                                               sums + (3 + b) * K, j.p);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int sa_pair_stats_cuda(int dtype, const void* A, const void* B, int64_t K, int64_t n, int64_t m,
                                  int64_t d, float* invA, float* invB, double* sums, float* pair_aa,
                                  float* pair_bb, float* pair_ab, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SA_F32:
      return run(static_cast<const float*>(A), static_cast<const float*>(B), K, n, m, d, invA, invB, sums, pair_aa, pair_bb, pair_ab, s);
    case SA_F16:
      return run(static_cast<const __half*>(A), static_cast<const __half*>(B), K, n, m, d, invA, invB, sums, pair_aa, pair_bb, pair_ab, s);
    case SA_BF16:
      return run(static_cast<const __nv_bfloat16*>(A), static_cast<const __nv_bfloat16*>(B), K, n, m, d, invA, invB, sums, pair_aa, pair_bb, pair_ab, s);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
