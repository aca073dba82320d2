// C launcher interface of the raw-pointer CUDA kernels (no torch headers: compile-checked with plain nvcc).
#pragma once
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// dtype codes for the input pointers
enum sa_dtype { SA_F32 = 0, SA_F16 = 1, SA_BF16 = 2 };

// Pair-cosine sums over all pairs i<j within A [K,n,d], within B [K,m,d] and all of A x B.
// sums: device [6, K] float64, zero-initialised by the caller; on return rows 0..2 hold the cosine sums
// (AA, BB, AB) and rows 3..5 the angle sums in radians. invA/invB: device workspaces [K*n], [K*m].
// pair_aa/bb/ab: optional device outputs [K,n,n], [K,m,m], [K,n,m] (full symmetric matrices), or null.
// Returns 0 on success, else a cudaError_t value.
int sa_pair_stats_cuda(int dtype, const void* A, const void* B, int64_t K, int64_t n, int64_t m, int64_t d,
                       float* invA, float* invB, double* sums, float* pair_aa, float* pair_bb, float* pair_ab,
                       void* stream);

// In-place x *= alpha for `count` contiguous device tensors of one dtype (computed in fp32).
int sa_scale_cuda(int dtype, void* const* ptrs, const int64_t* numels, int64_t count, float alpha, void* stream);

#ifdef __cplusplus
}
#endif
