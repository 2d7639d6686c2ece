// pitstop's CPU kernels (issue 18), built once per machine by pitstop/model/cpu_kernels.py with
// torch.utils.cpp_extension and cached on disk. Plain C++ loops written so that the compiler vectorizes them
// (-O3 -march=native -fopenmp-simd); no intrinsics, so the same source builds on x86 (AVX2, AVX-512) and ARM.
// Threads: at::parallel_for, i.e. torch's intra-op pool (torch.set_num_threads).
//
// paged_decode_attention: single-token attention of B decodes reading K/V blocks of the paged cache in place
//   (no gather copy). Work item = (sequence, KV head); its G = Hq / Hkv query heads share every K/V row read.
//   Two passes over the context: scores (kept, G x L floats), softmax in float, then the V-weighted sum.
// int8_linear: y = (x @ w^T) * scale (+ bias) with int8 weights [N, K] and one float scale per output row
//   (weight-only quantization). Few rows: each weight row is read once and dotted with every activation row;
//   more rows: tiles of the weight are dequantized to x's dtype and multiplied with ATen's GEMM.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline float dot_f(const float* __restrict a, const T* __restrict b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * static_cast<float>(b[i]);
  return s;
}

template <typename T>
inline void axpy_f(float* __restrict acc, float p, const T* __restrict v, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += p * static_cast<float>(v[i]);
}

template <typename T, typename I>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                           at::Tensor& out) {
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), Hkv = k_cache.size(2);
  const int64_t G = Hq / Hkv, W = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const I* bt = block_tables.data_ptr<I>();
  const int64_t* sl = seq_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t row = Hkv * D;  // elements of one token in a block
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Hkv, h = item % Hkv;
      const int64_t L = sl[b];
      scores.resize(G * L);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = static_cast<float>(qp[(b * Hq + h * G + g) * D + d]) * sc;
      const I* table = bt + b * W;
      for (int64_t t0 = 0; t0 < L; t0 += BS) {
        const T* kb = kp + (static_cast<int64_t>(table[t0 / BS]) * BS) * row + h * D;
        const int64_t n = std::min(BS, L - t0);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t g = 0; g < G; ++g) scores[g * L + t0 + j] = dot_f(&qf[g * D], kb + j * row, D);
      }
      std::vector<float> inv(G);
      for (int64_t g = 0; g < G; ++g) {
        float* s = &scores[g * L];
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < L; ++t) m = std::max(m, s[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < L; ++t) {
          s[t] = std::exp(s[t] - m);
          sum += s[t];
        }
        inv[g] = 1.f / sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t0 = 0; t0 < L; t0 += BS) {
        const T* vb = vp + (static_cast<int64_t>(table[t0 / BS]) * BS) * row + h * D;
        const int64_t n = std::min(BS, L - t0);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t g = 0; g < G; ++g) axpy_f(&acc[g * D], scores[g * L + t0 + j], vb + j * row, D);
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          op[(b * Hq + h * G + g) * D + d] = static_cast<T>(acc[g * D + d] * inv[g]);
    }
  });
}

}  // namespace

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "bad shapes");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && v_cache.scalar_type() == k_cache.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0 && q.size(2) == k_cache.size(3), "head geometry mismatch");
  TORCH_CHECK(seq_lens.scalar_type() == at::kLong && block_tables.size(0) == q.size(0), "bad tables");
  auto qc = q.contiguous();
  auto bt = block_tables.contiguous();
  auto sl = seq_lens.contiguous();
  auto out = at::empty_like(qc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    if (bt.scalar_type() == at::kInt)
      decode_attention_impl<scalar_t, int32_t>(qc, k_cache, v_cache, bt, sl, scale, out);
    else
      decode_attention_impl<scalar_t, int64_t>(qc, k_cache, v_cache, bt, sl, scale, out);
  });
  return out;
}

namespace {

template <typename T>
void int8_gemv_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const float* bias,
                    at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const T* xp = x.data_ptr<T>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  T* op = out.data_ptr<T>();
  std::vector<float> xf(M * K);
  for (int64_t i = 0; i < M * K; ++i) xf[i] = static_cast<float>(xp[i]);
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* wr = wp + n * K;
      for (int64_t m = 0; m < M; ++m) {
        float v = dot_f(&xf[m * K], wr, K) * sp[n];
        if (bias) v += bias[n];
        op[m * N + n] = static_cast<T>(v);
      }
    }
  });
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias, int64_t gemv_rows) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "int8_linear: x [M, K], w [N, K]");
  TORCH_CHECK(w.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat, "int8 weight, float scales");
  auto xc = x.contiguous();
  const int64_t M = xc.size(0), N = w.size(0), K = w.size(1);
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) bias_f = bias->to(at::kFloat).contiguous();
  if (M <= gemv_rows) {
    auto out = at::empty({M, N}, xc.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "int8_linear", [&] {
      int8_gemv_impl<scalar_t>(xc, w, scale, bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out);
    });
    return out;
  }
  // Many rows: dequantize a weight tile (about 256 KiB of x's dtype, L2-sized) and use ATen's GEMM on it.
  const int64_t tile = std::max<int64_t>(64, (256 * 1024 / xc.element_size()) / std::max<int64_t>(K, 1));
  auto out = at::empty({M, N}, xc.options());
  auto scale_x = scale.to(xc.scalar_type());
  for (int64_t n0 = 0; n0 < N; n0 += tile) {
    const int64_t nt = std::min(tile, N - n0);
    auto wt = w.narrow(0, n0, nt).to(xc.scalar_type()).mul_(scale_x.narrow(0, n0, nt).unsqueeze(1));
    auto o = out.narrow(1, n0, nt);
    if (bias_f.defined())
      o.copy_(at::addmm(bias_f.narrow(0, n0, nt).to(xc.scalar_type()), xc, wt.t()));
    else
      o.copy_(at::mm(xc, wt.t()));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "single-token attention over a paged KV cache");
  m.def("int8_linear", &int8_linear, "weight-only int8 linear");
}
