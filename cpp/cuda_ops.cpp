// CUDA implementations of the safety_audit ops: thin ATen wrappers around the raw launchers in cuda/.
// Compiled only when the imported torch has CUDA (auditor/_ext.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "launchers.h"

namespace safety_audit {
namespace {

int dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return SA_F32;
    case at::kHalf: return SA_F16;
    case at::kBFloat16: return SA_BF16;
    default: TORCH_CHECK(false, "safety_audit CUDA ops: unsupported dtype ", st);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_stats_cuda(const at::Tensor& A_in, const at::Tensor& B_in,
                                                                           bool return_pairs) {
  TORCH_CHECK(A_in.dim() == 3 && B_in.dim() == 3 && A_in.size(0) == B_in.size(0) && A_in.size(2) == B_in.size(2),
              "pair_stats: A [K,n,d] and B [K,m,d] must share K and d");
  TORCH_CHECK(A_in.size(1) >= 2 && B_in.size(1) >= 2, "pair_stats: need at least 2 vectors in each set");
  auto B0 = B_in.scalar_type() == A_in.scalar_type() ? B_in : B_in.to(A_in.scalar_type());
  auto A = A_in.scalar_type() == at::kDouble ? A_in.to(at::kFloat).contiguous() : A_in.contiguous();
  auto B = A_in.scalar_type() == at::kDouble ? B0.to(at::kFloat).contiguous() : B0.contiguous();
  const int64_t K = A.size(0), n = A.size(1), m = B.size(1), d = A.size(2);
  auto fopt = A.options().dtype(at::kFloat);
  auto invA = at::empty({K * n}, fopt), invB = at::empty({K * m}, fopt);
  auto sums = at::zeros({6, K}, A.options().dtype(at::kDouble));
  at::Tensor paa = at::empty({0}, fopt), pbb = at::empty({0}, fopt), pab = at::empty({0}, fopt);
  if (return_pairs) {
    paa = at::empty({K, n, n}, fopt);
    pbb = at::empty({K, m, m}, fopt);
    pab = at::empty({K, n, m}, fopt);
  }
  auto stream = c10::cuda::getCurrentCUDAStream(A.device().index());
  int rc = sa_pair_stats_cuda(dtype_code(A.scalar_type()), A.data_ptr(), B.data_ptr(), K, n, m, d,
                              invA.data_ptr<float>(), invB.data_ptr<float>(), sums.data_ptr<double>(),
                              return_pairs ? paa.data_ptr<float>() : nullptr, return_pairs ? pbb.data_ptr<float>() : nullptr,
                              return_pairs ? pab.data_ptr<float>() : nullptr, stream.stream());
  TORCH_CHECK(rc == 0, "pair_stats CUDA launch failed with CUDA error ", rc);
  auto npairs = at::tensor({n * (n - 1) / 2.0, m * (m - 1) / 2.0, double(n) * m}, sums.options()).unsqueeze(1);
  auto means = sums.clone();
  means.narrow(0, 0, 3).div_(npairs);
  means.narrow(0, 3, 3).div_(npairs).mul_(180.0 / M_PI);
  return {means, paa, pbb, pab};
}

void scale_cuda_(at::TensorList tensors, double alpha) {
  std::vector<std::vector<void*>> ptrs(3);
  std::vector<std::vector<int64_t>> sizes(3);
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "scale_: CUDA tensors must be contiguous");
    if (t.scalar_type() == at::kDouble) {  // rare: let ATen do it
      t.mul_(alpha);
      continue;
    }
    int c = dtype_code(t.scalar_type());
    ptrs[c].push_back(t.data_ptr());
    sizes[c].push_back(t.numel());
  }
  if (tensors.empty()) return;
  auto stream = c10::cuda::getCurrentCUDAStream(tensors[0].device().index());
  for (int c = 0; c < 3; ++c) {
    if (ptrs[c].empty()) continue;
    int rc = sa_scale_cuda(c, ptrs[c].data(), sizes[c].data(), (int64_t)ptrs[c].size(), (float)alpha, stream.stream());
    TORCH_CHECK(rc == 0, "scale_ CUDA launch failed with CUDA error ", rc);
  }
}

}  // namespace
}  // namespace safety_audit

TORCH_LIBRARY_IMPL(safety_audit, CUDA, m) {
  m.impl("pair_stats", &safety_audit::pair_stats_cuda);
  m.impl("scale_", &safety_audit::scale_cuda_);
}
