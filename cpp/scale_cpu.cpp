// In-place multi-tensor scaling of weights by alpha, on the CPU.
// One call scales a whole list of tensors: the list is cut into fixed-size chunks that are spread over
// threads with at::parallel_for, so many small tensors and a few large ones both keep every core busy.
// fp16/bf16 are computed in fp32 and rounded once, like torch's own mul_.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

namespace safety_audit {

namespace {
constexpr int64_t kChunk = 1 << 16;

template <typename T>
void scale_span(T* p, int64_t len, float alpha) {
  for (int64_t i = 0; i < len; ++i) p[i] = static_cast<T>(static_cast<float>(p[i]) * alpha);
}
}  // namespace

void scale_cpu_(at::TensorList tensors, double alpha) {
  struct Chunk { int64_t t, start, len; };
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < (int64_t)tensors.size(); ++t) {
    const auto& x = tensors[t];
    TORCH_CHECK(x.is_contiguous(), "scale_: tensor ", t, " is not contiguous");
    TORCH_CHECK(x.device().is_cpu(), "scale_: tensor ", t, " is not on the CPU");
    auto st = x.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
                "scale_: unsupported dtype ", st);
    for (int64_t s = 0; s < x.numel(); s += kChunk) chunks.push_back({t, s, std::min(kChunk, x.numel() - s)});
  }
  const float a = static_cast<float>(alpha);
  at::parallel_for(0, (int64_t)chunks.size(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const auto& ch = chunks[c];
      const auto& x = tensors[ch.t];
      switch (x.scalar_type()) {
        case at::kFloat: scale_span(x.data_ptr<float>() + ch.start, ch.len, a); break;
        case at::kHalf: scale_span(x.data_ptr<at::Half>() + ch.start, ch.len, a); break;
        case at::kBFloat16: scale_span(x.data_ptr<at::BFloat16>() + ch.start, ch.len, a); break;
        default: {
          double* p = x.data_ptr<double>() + ch.start;
          for (int64_t i = 0; i < ch.len; ++i) p[i] *= alpha;
        }
      }
    }
  });
}

}  // namespace safety_audit
