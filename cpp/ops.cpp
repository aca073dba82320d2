// Op registration for the safety_audit torch library (CPU kernels; CUDA ones in cuda_ops.cpp).
#include <torch/library.h>

namespace safety_audit {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_stats_cpu(const at::Tensor&, const at::Tensor&, bool);
void scale_cpu_(at::TensorList, double);
at::Tensor pair_weighted_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
}  // namespace safety_audit

TORCH_LIBRARY(safety_audit, m) {
  m.def("pair_stats(Tensor a, Tensor b, bool return_pairs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pair_weighted(Tensor a, Tensor b, Tensor wa, Tensor wb, bool angles) -> Tensor");
  m.def("scale_(Tensor(a!)[] tensors, float alpha) -> ()");
}

TORCH_LIBRARY_IMPL(safety_audit, CPU, m) {
  m.impl("pair_stats", &safety_audit::pair_stats_cpu);
  m.impl("pair_weighted", &safety_audit::pair_weighted_cpu);
  m.impl("scale_", &safety_audit::scale_cpu_);
}
