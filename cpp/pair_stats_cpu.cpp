// Fused, tiled pair-cosine statistics on the CPU (see auditor/similarity.py for the contract).
//
// For every layer k it reduces, over all pairs i<j within A, i<j within B and all of A x B:
//   mean cos = <a,b>/(|a||b|)  and  mean angle = acos(clamp(cos,-1,1)) in degrees.
// The K x (n+m)^2 pair matrix is never built: work items are (layer, block, row tile, col tile);
// each runs one GEMM on a [T, d] x [d, T] tile (single-threaded BLAS inside at::parallel_for),
// normalizes in the epilogue with precomputed inverse norms, and reduces in float64.
// Zero vectors get inverse norm 0, so their cosine with anything is 0 (angle 90 degrees).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace safety_audit {

at::Tensor inverse_norms(const at::Tensor& X) {
  // [K, n, d] -> [K, n] float32; norms accumulated in float64 (massive activation dims).
  auto norm = at::linalg_vector_norm(X, 2, {-1}, false, at::kDouble);
  auto inv = at::where(norm > 0, norm.reciprocal(), at::zeros_like(norm));
  return inv.to(at::kFloat);
}

namespace {

constexpr int64_t kTile = 256;
enum Block : int { AA = 0, BB = 1, AB = 2 };

struct Item {
  int64_t k;
  int block;
  int64_t r0, rh, c0, ch;
};

void add_items(std::vector<Item>& items, int64_t K, int block, int64_t rows, int64_t cols, bool upper) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r0 = 0; r0 < rows; r0 += kTile)
      for (int64_t c0 = upper ? r0 : 0; c0 < cols; c0 += kTile)
        items.push_back({k, block, r0, std::min(kTile, rows - r0), c0, std::min(kTile, cols - c0)});
}

}  // namespace

// Returns (means [6, K] float64: cos_aa, cos_bb, cos_ab, angle_aa, angle_bb, angle_ab;
//          pair cosines aa [K,n,n], bb [K,m,m], ab [K,n,m] when return_pairs, else empty tensors).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_stats_cpu(
    const at::Tensor& A_in, const at::Tensor& B_in, bool return_pairs) {
  TORCH_CHECK(A_in.dim() == 3 && B_in.dim() == 3, "pair_stats: A and B must be [K, n, d] and [K, m, d]");
  TORCH_CHECK(A_in.size(0) == B_in.size(0) && A_in.size(2) == B_in.size(2),
              "pair_stats: A and B must share K and d");
  TORCH_CHECK(A_in.size(1) >= 2 && B_in.size(1) >= 2, "pair_stats: need at least 2 vectors in each set");
  TORCH_CHECK(A_in.is_floating_point() && B_in.is_floating_point(), "pair_stats: floating-point inputs only");
  const auto A = A_in.contiguous(), B = B_in.contiguous();
  const int64_t K = A.size(0), n = A.size(1), m = B.size(1), d = A.size(2);
  const auto invA = inverse_norms(A), invB = inverse_norms(B);
  const bool f32 = A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat;

  std::vector<Item> items;
  add_items(items, K, AA, n, n, true);
  add_items(items, K, BB, m, m, true);
  add_items(items, K, AB, n, m, false);
  std::vector<double> cos_sum(items.size()), ang_sum(items.size());

  auto fopt = A.options().dtype(at::kFloat);
  at::Tensor paa = at::empty({0}, fopt), pbb = at::empty({0}, fopt), pab = at::empty({0}, fopt);
  if (return_pairs) {
    paa = at::empty({K, n, n}, fopt);
    pbb = at::empty({K, m, m}, fopt);
    pab = at::empty({K, n, m}, fopt);
  }

  at::parallel_for(0, (int64_t)items.size(), 1, [&](int64_t begin, int64_t end) {
    at::Tensor tile = at::empty({kTile, kTile}, fopt);
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const at::Tensor& R = w.block == BB ? B : A;
      const at::Tensor& C = w.block == AA ? A : B;
      const at::Tensor& invR = w.block == BB ? invB : invA;
      const at::Tensor& invC = w.block == AA ? invA : invB;
      auto rows = R[w.k].narrow(0, w.r0, w.rh);
      auto cols = C[w.k].narrow(0, w.c0, w.ch);
      if (!f32) {  // bf16 / fp16 / fp64 inputs: accumulate in fp32
        rows = rows.to(at::kFloat);
        cols = cols.to(at::kFloat);
      }
      auto t = tile.narrow(0, 0, w.rh).narrow(1, 0, w.ch);
      at::mm_out(t, rows, cols.t());
      t.mul_(invR[w.k].narrow(0, w.r0, w.rh).unsqueeze(1));
      t.mul_(invC[w.k].narrow(0, w.c0, w.ch).unsqueeze(0));
      t.clamp_(-1.0, 1.0);
      if (return_pairs) {
        at::Tensor& out = w.block == AA ? paa : (w.block == BB ? pbb : pab);
        out[w.k].narrow(0, w.r0, w.rh).narrow(1, w.c0, w.ch).copy_(t);
        if (w.block != AB && w.c0 != w.r0)  // mirror the upper tile
          out[w.k].narrow(0, w.c0, w.ch).narrow(1, w.r0, w.rh).copy_(t.t());
      }
      const bool diag = w.block != AB && w.r0 == w.c0;
      double cs = t.sum(at::kDouble).item<double>();
      double cd = diag ? t.diagonal().sum(at::kDouble).item<double>() : 0.0;
      t.acos_();
      double as = t.sum(at::kDouble).item<double>();
      double ad = diag ? t.diagonal().sum(at::kDouble).item<double>() : 0.0;
      // a diagonal tile holds each pair twice (i<j and j>i) plus the self-pairs: drop those, halve.
      cos_sum[it] = diag ? 0.5 * (cs - cd) : cs;
      ang_sum[it] = diag ? 0.5 * (as - ad) : as;
    }
  });

  auto means = at::zeros({6, K}, A.options().dtype(at::kDouble));
  auto acc = means.accessor<double, 2>();
  for (size_t it = 0; it < items.size(); ++it) {
    acc[items[it].block][items[it].k] += cos_sum[it];
    acc[3 + items[it].block][items[it].k] += ang_sum[it];
  }
  const double npairs[3] = {n * (n - 1) / 2.0, m * (m - 1) / 2.0, double(n) * m};
  const double deg = 180.0 / M_PI;
  for (int b = 0; b < 3; ++b)
    for (int64_t k = 0; k < K; ++k) {
      acc[b][k] /= npairs[b];
      acc[3 + b][k] *= deg / npairs[b];
    }
  return {means, paa, pbb, pab};
}

}  // namespace safety_audit
