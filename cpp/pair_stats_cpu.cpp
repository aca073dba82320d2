// Fused, tiled pair-cosine statistics on the CPU (see auditor/similarity.py for the contract).
//
// For every layer k it reduces, over all pairs i<j within A, i<j within B and all of A x B:
//   mean cos = <a,b>/(|a||b|)  and  mean angle = acos(clamp(cos,-1,1)) in degrees.
// The K x (n+m)^2 pair matrix is never built: work items are (layer, block, row block, column span);
// each runs one GEMM [256 (64 within a set), d] x [d, <=1024] into a per-thread buffer (single-threaded BLAS inside
// at::parallel_for; within a set only the columns right of the diagonal are computed), normalises in
// the epilogue with precomputed inverse norms, and reduces in float64.
// Zero vectors get inverse norm 0, so their cosine with anything is 0 (angle 90 degrees).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace safety_audit {

at::Tensor inverse_norms(const at::Tensor& X) {
  // [K, n, d] -> [K, n] float32. Squares summed in float64 (massive activation dims) row by row, so
  // no float64 copy of X is ever made.
  const int64_t rows = X.size(0) * X.size(1), d = X.size(2);
  auto inv = at::empty({X.size(0), X.size(1)}, X.options().dtype(at::kFloat));
  float* out = inv.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "inverse_norms", [&] {
    const scalar_t* x = X.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        double s = 0.0;
        for (int64_t i = 0; i < d; ++i) {
          const double v = static_cast<double>(x[r * d + i]);
          s += v * v;
        }
        out[r] = s > 0.0 ? static_cast<float>(1.0 / std::sqrt(s)) : 0.f;
      }
    });
  });
  return inv;
}

namespace {

constexpr int64_t kRows = 256;        // rows per work item across the sets
constexpr int64_t kRowsWithin = 64;   // rows per item within a set: thin blocks waste less of the triangle
constexpr int64_t kCols = 1024;       // columns per work item: a [kRows, d] x [d, kCols] GEMM, buffer 1 MB
enum Block : int { AA = 0, BB = 1, AB = 2 };

struct Item {
  int64_t k;
  int block;
  int64_t r0, rh, c0, ch;
};

// Within a set only pairs i<j count: a row block [r0, r0+rh) needs columns from r0 on.
void add_items(std::vector<Item>& items, int64_t K, int block, int64_t rows, int64_t cols, bool within) {
  const int64_t step = within ? kRowsWithin : kRows;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r0 = 0; r0 < rows; r0 += step)
      for (int64_t c0 = within ? r0 : 0; c0 < cols; c0 += kCols)
        items.push_back({k, block, r0, std::min(step, rows - r0), c0, std::min(kCols, cols - c0)});
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
  const int64_t K = A.size(0), n = A.size(1), m = B.size(1);
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
    at::Tensor buf = at::empty({kRows * kCols}, fopt);  // per-thread tile: O(kRows x kCols), never O(n^2)
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const bool within = w.block != AB;
      const at::Tensor& R = w.block == BB ? B : A;
      const at::Tensor& C = w.block == AA ? A : B;
      const float* iR = (w.block == BB ? invB : invA)[w.k].data_ptr<float>() + w.r0;
      const float* iC = (w.block == AA ? invA : invB)[w.k].data_ptr<float>() + w.c0;
      auto rows = R[w.k].narrow(0, w.r0, w.rh);
      auto cols = C[w.k].narrow(0, w.c0, w.ch);
      if (!f32) {  // bf16 / fp16 / fp64 inputs: accumulate in fp32
        rows = rows.to(at::kFloat);
        cols = cols.to(at::kFloat);
      }
      auto t = buf.narrow(0, 0, w.rh * w.ch).view({w.rh, w.ch});
      at::mm_out(t, rows, cols.t());
      float* p = t.data_ptr<float>();
      float* out = nullptr;
      int64_t ld = 0;
      if (return_pairs) {
        at::Tensor& o = w.block == AA ? paa : (w.block == BB ? pbb : pab);
        out = o[w.k].data_ptr<float>();
        ld = o.size(2);
      }
      // epilogue 1: normalise, clamp, (store), sum cosines over the counted pairs
      double cs = 0.0;
      for (int64_t i = 0; i < w.rh; ++i) {
        const float ri = iR[i];
        const int64_t gi = w.r0 + i;
        const int64_t j0 = within ? std::max<int64_t>(0, gi + 1 - w.c0) : 0;  // first counted column
        float* row = p + i * w.ch;
        for (int64_t j = 0; j < w.ch; ++j) {
          float c = row[j] * ri * iC[j];
          row[j] = c < -1.f ? -1.f : (c > 1.f ? 1.f : c);
        }
        double rs = 0.0;
        for (int64_t j = j0; j < w.ch; ++j) rs += row[j];
        cs += rs;
        if (out) {
          for (int64_t j = within ? std::max<int64_t>(0, gi - w.c0) : 0; j < w.ch; ++j) {
            out[gi * ld + w.c0 + j] = row[j];
            if (within) out[(w.c0 + j) * ld + gi] = row[j];  // mirror: full symmetric matrix
          }
        }
      }
      // epilogue 2: angles (ATen's vectorised acos), sum over the counted pairs
      t.acos_();
      double as = 0.0;
      for (int64_t i = 0; i < w.rh; ++i) {
        const int64_t j0 = within ? std::max<int64_t>(0, w.r0 + i + 1 - w.c0) : 0;
        const float* row = p + i * w.ch;
        double rs = 0.0;
        for (int64_t j = j0; j < w.ch; ++j) rs += row[j];
        as += rs;
      }
      cos_sum[it] = cs;
      ang_sum[it] = as;
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

// Bootstrap replicates without the pair matrix (scan --bootstrap at any n). For weights Wa [R, n] and
// Wb [R, m] (multinomial prompt counts of R replicates) it returns [2, K, R] float64:
//   sum over counted pairs of Wa[r,i] Wa[r,j] f(cos_ij) (i<j within A) and of Wa[r,i] Wb[r,j] f(cos_ij)
//   (A x B), f = the cosine, or the pair angle in degrees when `angles`. Each work item reduces its tile
//   with one GEMM [R, rows] x [rows, cols] (uncounted entries zeroed) and a float64 dot with the column
//   weights; items run in fixed-size waves reduced in item order, so a run is reproducible bit for bit,
//   and the memory is O(wave x R + threads x R x cols), whatever n and m are.
at::Tensor pair_weighted_cpu(const at::Tensor& A_in, const at::Tensor& B_in, const at::Tensor& Wa_in,
                             const at::Tensor& Wb_in, bool angles) {
  TORCH_CHECK(A_in.dim() == 3 && B_in.dim() == 3 && A_in.size(0) == B_in.size(0) && A_in.size(2) == B_in.size(2),
              "pair_weighted: A and B must be [K, n, d] and [K, m, d]");
  TORCH_CHECK(Wa_in.dim() == 2 && Wb_in.dim() == 2 && Wa_in.size(0) == Wb_in.size(0) &&
                  Wa_in.size(1) == A_in.size(1) && Wb_in.size(1) == B_in.size(1),
              "pair_weighted: weights must be [R, n] and [R, m]");
  const auto A = A_in.contiguous(), B = B_in.contiguous();
  const auto Wa = Wa_in.to(at::kFloat).contiguous(), Wb = Wb_in.to(at::kFloat).contiguous();
  const int64_t K = A.size(0), n = A.size(1), m = B.size(1), R = Wa.size(0);
  const auto invA = inverse_norms(A), invB = inverse_norms(B);
  const bool f32 = A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat;
  auto fopt = A.options().dtype(at::kFloat);

  std::vector<Item> items;
  add_items(items, K, AA, n, n, true);
  add_items(items, K, AB, n, m, false);
  auto out = at::zeros({2, K, R}, A.options().dtype(at::kDouble));
  auto acc = out.accessor<double, 3>();
  const double scale = angles ? 180.0 / M_PI : 1.0;
  constexpr int64_t kWave = 128;
  std::vector<double> part(kWave * R);

  for (int64_t w0 = 0; w0 < (int64_t)items.size(); w0 += kWave) {
    const int64_t w1 = std::min<int64_t>(items.size(), w0 + kWave);
    at::parallel_for(w0, w1, 1, [&](int64_t begin, int64_t end) {
      at::Tensor buf = at::empty({kRows * kCols}, fopt), tmp = at::empty({R * kCols}, fopt);
      for (int64_t it = begin; it < end; ++it) {
        const Item& w = items[it];
        const bool within = w.block == AA;
        const at::Tensor& C = within ? A : B;
        const float* iR = invA[w.k].data_ptr<float>() + w.r0;
        const float* iC = (within ? invA : invB)[w.k].data_ptr<float>() + w.c0;
        auto rows = A[w.k].narrow(0, w.r0, w.rh), cols = C[w.k].narrow(0, w.c0, w.ch);
        if (!f32) {
          rows = rows.to(at::kFloat);
          cols = cols.to(at::kFloat);
        }
        auto t = buf.narrow(0, 0, w.rh * w.ch).view({w.rh, w.ch});
        at::mm_out(t, rows, cols.t());
        float* p = t.data_ptr<float>();
        for (int64_t i = 0; i < w.rh; ++i) {  // normalise and clamp, as pair_stats does
          float* row = p + i * w.ch;
          for (int64_t j = 0; j < w.ch; ++j) {
            const float c = row[j] * iR[i] * iC[j];
            row[j] = c < -1.f ? -1.f : (c > 1.f ? 1.f : c);
          }
        }
        if (angles) t.acos_();
        for (int64_t i = 0; within && i < w.rh; ++i) {  // uncounted pairs (i >= j within a set) weigh nothing
          const int64_t j0 = std::min(w.ch, std::max<int64_t>(0, w.r0 + i + 1 - w.c0));
          std::fill(p + i * w.ch, p + i * w.ch + j0, 0.f);
        }
        auto s = tmp.narrow(0, 0, R * w.ch).view({R, w.ch});
        at::mm_out(s, Wa.narrow(1, w.r0, w.rh), t);
        const float* sp = s.data_ptr<float>();
        const float* wc = (within ? Wa : Wb).data_ptr<float>() + w.c0;
        const int64_t ldw = within ? n : m;
        double* dst = part.data() + (it - w0) * R;
        for (int64_t r = 0; r < R; ++r) {
          double d = 0.0;
          for (int64_t j = 0; j < w.ch; ++j) d += double(sp[r * w.ch + j]) * double(wc[r * ldw + j]);
          dst[r] = d * scale;
        }
      }
    });
    for (int64_t it = w0; it < w1; ++it) {
      const int slot = items[it].block == AA ? 0 : 1;
      const double* src = part.data() + (it - w0) * R;
      for (int64_t r = 0; r < R; ++r) acc[slot][items[it].k][r] += src[r];
    }
  }
  return out;
}

}  // namespace safety_audit
