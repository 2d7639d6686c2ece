// pitstop's CPU kernels (issue 18), built once per machine by pitstop/model/cpu_kernels.py with
// torch.utils.cpp_extension and cached on disk. Plain C++ loops written so that the compiler vectorizes them
// (-O3 -march=native -fopenmp-simd); the few-row linears use AVX2 + FMA intrinsics where the compiler targets them
// and plain loops otherwise, so the same source builds on x86 (AVX2, AVX-512) and ARM.
// Threads: at::parallel_for, i.e. torch's intra-op pool (torch.set_num_threads).
//
// paged_decode_attention: single-token attention of B decodes reading K/V blocks of the paged cache in place
//   (no gather copy). Work item = (sequence, KV head); its G = Hq / Hkv query heads share every K/V row read.
//   Two passes over the context: scores (kept, G x L floats), softmax in float, then the V-weighted sum. float32
//   with a head size that is a multiple of 8 on AVX2 + FMA: intrinsics and a vectorized exp, one work item per
//   sequence; from 512 tokens of context one pass over its blocks (each block's K and V rows read once for every
//   head, contiguously) with an online softmax (flash-decoding). Otherwise plain loops.
// int8_linear: y = x @ (w * scale)^T (+ bias) with int8 weights [N, K] and float scales per output row ([N]) or
//   per group of weights of a row ([N, groups], equal groups; weight-only quantization). Few rows: each weight row
//   is read once and dotted with every activation row;
//   more rows: tiles of the weight are dequantized to x's dtype and multiplied with ATen's GEMM.
// linear_rows: y = x @ w^T (+ bias) with float32 weights, for few activation rows (ATen's GEMM is far from the
//   memory bound there on the machines measured: 2 rows cost it about twice 1 row).
// q4_linear: y = x @ w^T (+ bias) with 4-bit weights kept as GGUF stores Q4_0 / Q4_1 blocks: per group of 32
//   weights of a row a float scale d and minimum m, w = d * q + m, q in 0..15, 16 bytes per group (byte j: weight j
//   in the low nibble, weight j + 16 in the high one). Few rows: each group is dequantized once into registers
//   (AVX2; plain loops: a row into an L1-resident buffer) and dotted with up to four activation rows in the order
//   of the linear_rows code (so the sums are the float32 model's to the bit); more rows: weight tiles dequantized
//   into L2 and ATen's GEMM, as int8_linear.
// add_rms_norm: the decoder's residual add and RMSNorm in one pass (float32): r = h + residual (or h), out =
//   weight * (r * rsqrt(mean(r^2) + eps)), the statistics in float32 as transformers' LlamaRMSNorm; one call
//   instead of about eight ATen ops, which cost more than the arithmetic at decode batch sizes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
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

#if defined(__AVX2__) && defined(__FMA__)
#define PITSTOP_AVX2 1
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) of 8 floats, x <= 0 (softmax after its max is subtracted): Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2,
// e^r by a degree-7 polynomial, 2^n into the exponent bits); relative error about 1e-7. Below -87.3 it returns
// about 1e-38 instead of a denormal or 0, which no softmax sum notices.
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// s[t] = exp(s[t] - m) for t < L; returns their sum.
inline float exp_sum(float* s, int64_t L, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= L; t += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
    _mm256_storeu_ps(s + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum256(acc);
  for (; t < L; ++t) {
    s[t] = std::exp(s[t] - m);
    sum += s[t];
  }
  return sum;
}

// dot of two float rows of D (a multiple of 8) elements, two accumulators.
inline float dot8(const float* __restrict a, const float* __restrict b, int64_t D) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), a1);
  }
  if (d < D) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), a0);
  return hsum256(_mm256_add_ps(a0, a1));
}

// acc[0 .. 8 NV) += sum over the L tokens of p[t] * v_t[d0 ..], v_t the token's row in its block; NV accumulators in
// registers for the whole context, then out = acc * inv.
template <int NV, typename I>
inline void weighted_values(const float* p, int64_t L, const float* vp, const I* table, int64_t BS, int64_t row,
                            int64_t off, float inv, float* out) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t t0 = 0; t0 < L; t0 += BS) {
    const float* vb = vp + (static_cast<int64_t>(table[t0 / BS]) * BS) * row + off;
    const int64_t n = std::min(BS, L - t0);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[t0 + j]);
      const float* vr = vb + j * row;
      for (int i = 0; i < NV; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * i), acc[i]);
    }
  }
  const __m256 iv = _mm256_set1_ps(inv);
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], iv));
}

template <typename I>
inline void weighted_values_any(int nv, const float* p, int64_t L, const float* vp, const I* table, int64_t BS,
                                int64_t row, int64_t off, float inv, float* out) {
  switch (nv) {
    case 1: return weighted_values<1, I>(p, L, vp, table, BS, row, off, inv, out);
    case 2: return weighted_values<2, I>(p, L, vp, table, BS, row, off, inv, out);
    case 3: return weighted_values<3, I>(p, L, vp, table, BS, row, off, inv, out);
    case 4: return weighted_values<4, I>(p, L, vp, table, BS, row, off, inv, out);
    case 5: return weighted_values<5, I>(p, L, vp, table, BS, row, off, inv, out);
    case 6: return weighted_values<6, I>(p, L, vp, table, BS, row, off, inv, out);
    case 7: return weighted_values<7, I>(p, L, vp, table, BS, row, off, inv, out);
    default: return weighted_values<8, I>(p, L, vp, table, BS, row, off, inv, out);
  }
}

// float32 decode attention of one (sequence, KV head) work item with AVX2 + FMA (D a multiple of 8).
template <typename I>
void decode_item_avx2(const float* qf, int64_t G, int64_t D, int64_t L, const float* kp, const float* vp,
                      const I* table, int64_t BS, int64_t row, int64_t h, float* scores, float* out_rows) {
  for (int64_t t0 = 0; t0 < L; t0 += BS) {
    const float* kb = kp + (static_cast<int64_t>(table[t0 / BS]) * BS) * row + h * D;
    const int64_t n = std::min(BS, L - t0);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t g = 0; g < G; ++g) scores[g * L + t0 + j] = dot8(qf + g * D, kb + j * row, D);
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * L;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < L; ++t) m = std::max(m, s[t]);
    const float inv = 1.f / exp_sum(s, L, m);
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
      const int nv = static_cast<int>(std::min<int64_t>(8, (D - d0) / 8));
      weighted_values_any<I>(nv, s, L, vp, table, BS, row, h * D + d0, inv, out_rows + g * D + d0);
    }
  }
}

// acc[0 .. D) = acc * corr + sum over the block's n tokens of p[j] * v_j (v_j at vb + j * row), D a multiple of 8;
// up to 64 floats of acc are held in registers per pass over the block (the block's V rows stay in L1).
inline void block_values(float* __restrict acc, float corr, const float* __restrict p, int64_t n,
                         const float* __restrict vb, int64_t row, int64_t D) {
  const __m256 cv = _mm256_set1_ps(corr);
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    const int nv = static_cast<int>(std::min<int64_t>(8, (D - d0) / 8));
    __m256 r[8];
    for (int i = 0; i < nv; ++i) r[i] = _mm256_mul_ps(_mm256_loadu_ps(acc + d0 + 8 * i), cv);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vr = vb + j * row + d0;
      for (int i = 0; i < nv; ++i) r[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * i), r[i]);
    }
    for (int i = 0; i < nv; ++i) _mm256_storeu_ps(acc + d0 + 8 * i, r[i]);
  }
}

// Contexts from this many tokens take the one-pass online-softmax path; shorter ones the two-pass path per KV head.
// Measured (1 thread, SmolLM2's 9/3 heads of 64, both builds in one process, best of 7): one-pass 1.10-1.15x faster
// at 600-1,500 tokens (B=32 x 1,000: 7.1 vs 8.2 ms a layer), slower at 264 (1.48 vs 1.10 ms in an earlier run): its
// per-block softmax bookkeeping costs more than it saves while the context stays in cache.
constexpr int64_t kFlashMinLen = 512;

// float32 decode attention of one sequence, all heads, AVX2 + FMA (D a multiple of 8): one pass over its blocks in
// order, each block's K and V rows (every head: contiguous) read once, with an online softmax per query head
// (running max m, sum l, output accumulator rescaled when the max grows; flash-decoding). qf [Hq, D] (scaled),
// work: Hq * (D + BS + 2) floats; out_rows [Hq, D].
template <typename I>
void decode_seq_avx2(const float* qf, int64_t Hq, int64_t G, int64_t D, int64_t L, const float* kp, const float* vp,
                     const I* table, int64_t BS, int64_t row, float* work, float* out_rows) {
  float* acc = work;                // [Hq, D]
  float* s = acc + Hq * D;          // [Hq, BS] this block's scores, then weights
  float* m = s + Hq * BS;           // [Hq]
  float* l = m + Hq;                // [Hq]
  std::fill(acc, acc + Hq * D, 0.f);
  std::fill(m, m + Hq, -std::numeric_limits<float>::infinity());
  std::fill(l, l + Hq, 0.f);
  for (int64_t t0 = 0; t0 < L; t0 += BS) {
    const int64_t base = static_cast<int64_t>(table[t0 / BS]) * BS * row;
    const float* kb = kp + base;
    const float* vb = vp + base;
    const int64_t n = std::min(BS, L - t0);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t hq = 0; hq < Hq; ++hq) s[hq * BS + j] = dot8(qf + hq * D, kb + j * row + (hq / G) * D, D);
    for (int64_t hq = 0; hq < Hq; ++hq) {
      float* sh = s + hq * BS;
      float bm = m[hq];
      for (int64_t j = 0; j < n; ++j) bm = std::max(bm, sh[j]);
      const float corr = std::exp(m[hq] - bm);  // 0 on the first block (m = -inf)
      l[hq] = l[hq] * corr + exp_sum(sh, n, bm);
      m[hq] = bm;
      block_values(acc + hq * D, corr, sh, n, vb + (hq / G) * D, row, D);
    }
  }
  for (int64_t hq = 0; hq < Hq; ++hq) {
    const float inv = 1.f / l[hq];
    for (int64_t d = 0; d < D; ++d) out_rows[hq * D + d] = acc[hq * D + d] * inv;
  }
}
#endif

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
#ifdef PITSTOP_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (D % 8 == 0) {  // one work item per sequence: see decode_seq_avx2 and decode_item_avx2
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> qf(Hq * D), work(Hq * (D + BS + 2)), scores;
        for (int64_t b = begin; b < end; ++b) {
          const int64_t L = sl[b];
          for (int64_t i = 0; i < Hq * D; ++i) qf[i] = qp[b * Hq * D + i] * sc;
          if (L >= kFlashMinLen) {
            decode_seq_avx2<I>(qf.data(), Hq, G, D, L, kp, vp, bt + b * W, BS, row, work.data(), op + b * Hq * D);
            continue;
          }
          scores.resize(G * L);
          for (int64_t h = 0; h < Hkv; ++h)
            decode_item_avx2<I>(qf.data() + h * G * D, G, D, L, kp, vp, bt + b * W, BS, row, h, scores.data(),
                                op + (b * Hq + h * G) * D);
        }
      });
      return;
    }
  }
#endif
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

// Few-row linears (decode batches, speculative verify rows): y[m, n] = dot(x[m], w[n] * scales) (+ bias[n]) with
// weights int8 (weight-only quantization) or float32. MB activation rows (1-4) go against one weight row at a time
// (it stays in L1 across the row blocks): each weight is loaded (and converted) once for all MB rows, into MB x U
// independent 8-float accumulators, so the loop is bound by memory, not by the latency of one accumulator's FMA
// chain (the plain-loop version was: about 2 weights per cycle). AVX2 + FMA intrinsics where the compiler targets
// them (-march=native; AVX-512 CPUs have both), a plain loop otherwise (ARM, older x86).
#ifdef PITSTOP_AVX2
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

// out[m] = sum over groups g of gs[g] * dot(x[m] group g, w group g) (no gs: one group, no scaling). The groups are
// `group` weights long (a multiple of 8 * U, or the whole row).
template <int MB, int U, bool GS, typename W>
inline void dot_rows(const float* __restrict xf, int64_t K, const W* __restrict wr, const float* __restrict gs,
                     int64_t group, float* out) {
  __m256 acc[MB][U];
  float tail[MB] = {};
  for (int m = 0; m < MB; ++m)
    for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < K; g0 += group) {
    const int64_t gend = std::min(K, g0 + group);
    const float gsc = GS ? gs[g0 / group] : 1.f;
    const __m256 sv = _mm256_set1_ps(gsc);
    int64_t k = g0;
    for (; k + 8 * U <= gend; k += 8 * U) {
      __m256 wf[U];
      for (int u = 0; u < U; ++u) wf[u] = GS ? _mm256_mul_ps(load8(wr + k + 8 * u), sv) : load8(wr + k + 8 * u);
      for (int m = 0; m < MB; ++m)
        for (int u = 0; u < U; ++u)
          acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(xf + m * K + k + 8 * u), wf[u], acc[m][u]);
    }
    for (; k < gend; ++k)
      for (int m = 0; m < MB; ++m) tail[m] += xf[m * K + k] * static_cast<float>(wr[k]) * gsc;
  }
  for (int m = 0; m < MB; ++m) {
    __m256 t = acc[m][0];
    for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[m][u]);
    out[m] = hsum256(t) + tail[m];
  }
}
#else
template <int MB, int U, bool GS, typename W>
inline void dot_rows(const float* __restrict xf, int64_t K, const W* __restrict wr, const float* __restrict gs,
                     int64_t group, float* out) {
  for (int m = 0; m < MB; ++m) {
    float s = 0.f;
    for (int64_t g0 = 0; g0 < K; g0 += group)
      s += dot_f(xf + m * K + g0, wr + g0, std::min(group, K - g0)) * (GS ? gs[g0 / group] : 1.f);
    out[m] = s;
  }
}
#endif

#ifdef PITSTOP_AVX2
// Groups of a compile-time 32 weights (the int8 default, llama.cpp's Q8_0 grouping; K a multiple of 32): the inner
// loop has a fixed trip count, so the accumulators stay in registers (the runtime-group loop above costs about 30%
// more at four rows).
template <int MB, int U, typename W>
inline void dot_rows_g32(const float* __restrict xf, int64_t K, const W* __restrict wr, const float* __restrict gs,
                         float* out) {
  static_assert(32 % (8 * U) == 0, "a group is a whole number of steps");
  __m256 acc[MB][U];
  for (int m = 0; m < MB; ++m)
    for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < K; g0 += 32) {
    const __m256 sv = _mm256_set1_ps(gs[g0 >> 5]);
    for (int j = 0; j < 32; j += 8 * U) {
      const int64_t k = g0 + j;
      __m256 wf[U];
      for (int u = 0; u < U; ++u) wf[u] = _mm256_mul_ps(load8(wr + k + 8 * u), sv);
      for (int m = 0; m < MB; ++m)
        for (int u = 0; u < U; ++u)
          acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(xf + m * K + k + 8 * u), wf[u], acc[m][u]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    __m256 t = acc[m][0];
    for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[m][u]);
    out[m] = hsum256(t);
  }
}
#endif

template <bool GS, typename W>
inline void dot_block(int64_t mb, const float* xb, int64_t K, const W* wr, const float* gs, int64_t group,
                      float* d) {
  if (mb == 1) dot_rows<1, 4, GS>(xb, K, wr, gs, group, d);
  else if (mb == 2) dot_rows<2, 2, GS>(xb, K, wr, gs, group, d);
  else if (mb == 3) dot_rows<3, 2, GS>(xb, K, wr, gs, group, d);
  else dot_rows<4, 2, GS>(xb, K, wr, gs, group, d);
}

#ifdef PITSTOP_AVX2
template <typename W>
inline void dot_block_g32(int64_t mb, const float* xb, int64_t K, const W* wr, const float* gs, float* d) {
  if (mb == 1) dot_rows_g32<1, 4>(xb, K, wr, gs, d);
  else if (mb == 2) dot_rows_g32<2, 2>(xb, K, wr, gs, d);
  else if (mb == 3) dot_rows_g32<3, 2>(xb, K, wr, gs, d);
  else dot_rows_g32<4, 2>(xb, K, wr, gs, d);
}
#endif

// x [M, K] (any float dtype), w [N, K] of W, group scales gs [N, K / group] float or null (no scaling), bias [N]
// float or null -> out [M, N].
template <typename T, typename W>
void gemv_rows_impl(const at::Tensor& x, const W* wp, const float* gs, int64_t group, const float* bias,
                    at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const int64_t ng = gs ? K / group : 0;
  T* op = out.data_ptr<T>();
  at::Tensor xf_t = x.to(at::kFloat).contiguous();
  const float* xf = xf_t.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    float d[4];
    for (int64_t n = begin; n < end; ++n) {
      const W* wr = wp + n * K;
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float* xb = xf + m0 * K;
        const int64_t mb = std::min<int64_t>(4, M - m0);
        if (gs == nullptr) dot_block<false>(mb, xb, K, wr, nullptr, K, d);
#ifdef PITSTOP_AVX2
        else if (group == 32) dot_block_g32(mb, xb, K, wr, gs + n * ng, d);
#endif
        else dot_block<true>(mb, xb, K, wr, gs + n * ng, group, d);
        for (int64_t m = 0; m < mb; ++m) op[(m0 + m) * N + n] = static_cast<T>(bias ? d[m] + bias[n] : d[m]);
      }
    }
  });
}

}  // namespace

// float32 weights, few rows: see gemv_rows_impl. x [M, K] float32, w [N, K] float32 contiguous, bias [N] or None.
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_rows: x [M, K], w [N, K]");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous(), "linear_rows: contiguous float32 weight");
  auto out = at::empty({x.size(0), w.size(0)}, x.options());
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) bias_f = bias->to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "linear_rows", [&] {
    gemv_rows_impl<scalar_t, float>(x, w.data_ptr<float>(), nullptr, 0,
                                    bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out);
  });
  return out;
}

// out[:, n0 : n0 + nt] = x @ w_tile^T (+ bias[n0 : n0 + nt]), w_tile [nt, K] in x's dtype: the many-row path of the
// quantized linears, one dequantized weight tile at a time.
static void mm_tile(at::Tensor& out, const at::Tensor& x, const at::Tensor& w_tile, const at::Tensor& bias_f,
                    int64_t n0) {
  const int64_t nt = w_tile.size(0);
  auto o = out.narrow(1, n0, nt);
  if (bias_f.defined())
    o.copy_(at::addmm(bias_f.narrow(0, n0, nt).to(x.scalar_type()), x, w_tile.t()));
  else
    o.copy_(at::mm(x, w_tile.t()));
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias, int64_t gemv_rows) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "int8_linear: x [M, K], w [N, K]");
  TORCH_CHECK(w.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat, "int8 weight, float scales");
  auto xc = x.contiguous();
  const int64_t M = xc.size(0), N = w.size(0), K = w.size(1);
  auto sc = (scale.dim() == 1 ? scale.unsqueeze(1) : scale).contiguous();  // [N, groups]
  const int64_t ng = sc.size(1);
  TORCH_CHECK(sc.size(0) == N && ng >= 1 && K % ng == 0, "int8_linear: scale [N] or [N, groups], groups dividing K");
  const int64_t group = K / ng;
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) bias_f = bias->to(at::kFloat).contiguous();
  if (M <= gemv_rows) {
    auto out = at::empty({M, N}, xc.options());
    auto wc = w.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "int8_linear", [&] {
      gemv_rows_impl<scalar_t, int8_t>(xc, wc.data_ptr<int8_t>(), sc.data_ptr<float>(), group,
                                       bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out);
    });
    return out;
  }
  // Many rows: dequantize a weight tile (about 256 KiB of x's dtype, L2-sized) and use ATen's GEMM on it.
  const int64_t tile = std::max<int64_t>(64, (256 * 1024 / xc.element_size()) / std::max<int64_t>(K, 1));
  auto out = at::empty({M, N}, xc.options());
  auto scale_x = sc.to(xc.scalar_type());
  for (int64_t n0 = 0; n0 < N; n0 += tile) {
    const int64_t nt = std::min(tile, N - n0);
    auto wt = w.narrow(0, n0, nt).to(xc.scalar_type()).view({nt, ng, group})
                  .mul_(scale_x.narrow(0, n0, nt).unsqueeze(2)).view({nt, K});
    mm_tile(out, xc, wt, bias_f, n0);
  }
  return out;
}

namespace {

#ifdef PITSTOP_AVX2
// One Q4 group (16 bytes at b) -> its 32 weights d * q + m in wf[0..3] (weights 0-7, 8-15, 16-23, 24-31).
inline void q4_group(const uint8_t* b, float d, float m, __m256 wf[4]) {
  const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  wf[0] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), mv);
  wf[1] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), mv);
  wf[2] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), mv);
  wf[3] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), mv);
}
#endif

// One row of Q4 groups -> K floats (w = d * q + m; d * q is exact in float32, so fma and mul + add agree).
inline void dequant_q4_row(const uint8_t* __restrict qs, const float* __restrict d, const float* __restrict mn,
                           int64_t K, float* __restrict out) {
  for (int64_t g = 0; g < K / 32; ++g) {
    const uint8_t* b = qs + g * 16;
    float* o = out + g * 32;
#ifdef PITSTOP_AVX2
    __m256 wf[4];
    q4_group(b, d[g], mn[g], wf);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(o + 8 * i, wf[i]);
#else
    for (int j = 0; j < 16; ++j) {
      o[j] = d[g] * static_cast<float>(b[j] & 0x0F) + mn[g];
      o[j + 16] = d[g] * static_cast<float>(b[j] >> 4) + mn[g];
    }
#endif
  }
}

#ifdef PITSTOP_AVX2
// MB activation rows against one Q4 weight row, each group dequantized into 4 registers (no buffer). The
// accumulators take the same products in the same order as dot_rows<MB, U, false> on the dequantized float row, so
// the result is that float32 kernel's to the bit.
template <int MB, int U>
inline void dot_rows_q4(const float* __restrict xf, int64_t K, const uint8_t* __restrict qs,
                        const float* __restrict d, const float* __restrict mn, float* out) {
  static_assert(U == 2 || U == 4, "a group is 32 / (8 U) steps");
  __m256 acc[MB][U];
  for (int m = 0; m < MB; ++m)
    for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / 32; ++g) {
    __m256 wf[4];
    q4_group(qs + g * 16, d[g], mn[g], wf);
    const float* xg = xf + g * 32;
    for (int i = 0; i < 4; i += U)
      for (int m = 0; m < MB; ++m)
        for (int u = 0; u < U; ++u)
          acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(xg + m * K + 8 * (i + u)), wf[i + u], acc[m][u]);
  }
  for (int m = 0; m < MB; ++m) {
    __m256 t = acc[m][0];
    for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[m][u]);
    out[m] = hsum256(t);
  }
}

inline void dot_block_q4(int64_t mb, const float* xb, int64_t K, const uint8_t* qs, const float* d,
                         const float* mn, float* out) {
  if (mb == 1) dot_rows_q4<1, 4>(xb, K, qs, d, mn, out);
  else if (mb == 2) dot_rows_q4<2, 2>(xb, K, qs, d, mn, out);
  else if (mb == 3) dot_rows_q4<3, 2>(xb, K, qs, d, mn, out);
  else dot_rows_q4<4, 2>(xb, K, qs, d, mn, out);
}
#endif

template <typename T>
void q4_rows_impl(const at::Tensor& x, const uint8_t* qs, const float* d, const float* mn, const float* bias,
                  at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1), G = K / 32;
  T* op = out.data_ptr<T>();
  at::Tensor xf_t = x.to(at::kFloat).contiguous();
  const float* xf = xf_t.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
#ifndef PITSTOP_AVX2
    std::vector<float> wrow(K);
#endif
    float dd[4];
    for (int64_t n = begin; n < end; ++n) {
#ifndef PITSTOP_AVX2
      dequant_q4_row(qs + n * (K / 2), d + n * G, mn + n * G, K, wrow.data());
#endif
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t mb = std::min<int64_t>(4, M - m0);
#ifdef PITSTOP_AVX2
        dot_block_q4(mb, xf + m0 * K, K, qs + n * (K / 2), d + n * G, mn + n * G, dd);
#else
        dot_block<false>(mb, xf + m0 * K, K, wrow.data(), static_cast<const float*>(nullptr), K, dd);
#endif
        for (int64_t m = 0; m < mb; ++m) op[(m0 + m) * N + n] = static_cast<T>(bias ? dd[m] + bias[n] : dd[m]);
      }
    }
  });
}

}  // namespace

// 4-bit GGUF weights (Q4_0 / Q4_1 blocks, see the header): x [M, K], qs [N, K / 2] uint8, d and m [N, K / 32]
// float32, bias [N] or None; at most gemv_rows rows take the read-weights-once path.
at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d, const at::Tensor& mn,
                     const c10::optional<at::Tensor>& bias, int64_t gemv_rows) {
  TORCH_CHECK(x.dim() == 2 && qs.dim() == 2 && qs.scalar_type() == at::kByte,
              "q4_linear: x [M, K], qs [N, K/2] uint8");
  const int64_t M = x.size(0), K = x.size(1), N = qs.size(0);
  TORCH_CHECK(K % 32 == 0 && qs.size(1) * 2 == K, "q4_linear: K a multiple of 32, qs [N, K / 2]");
  TORCH_CHECK(d.scalar_type() == at::kFloat && mn.scalar_type() == at::kFloat && d.size(0) == N &&
              d.size(1) == K / 32 && mn.sizes() == d.sizes(), "q4_linear: d, m [N, K / 32] float32");
  auto xc = x.contiguous();
  auto qc = qs.contiguous();
  auto dc = d.contiguous(), mc = mn.contiguous();
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) bias_f = bias->to(at::kFloat).contiguous();
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  auto out = at::empty({M, N}, xc.options());
  if (M <= gemv_rows) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "q4_linear", [&] {
      q4_rows_impl<scalar_t>(xc, qc.data_ptr<uint8_t>(), dc.data_ptr<float>(), mc.data_ptr<float>(), bp, out);
    });
    return out;
  }
  const int64_t tile = std::max<int64_t>(64, (256 * 1024 / 4) / std::max<int64_t>(K, 1));
  auto wt = at::empty({std::min(tile, N), K}, xc.options().dtype(at::kFloat));
  for (int64_t n0 = 0; n0 < N; n0 += tile) {
    const int64_t nt = std::min(tile, N - n0);
    float* wp = wt.data_ptr<float>();
    const uint8_t* qp = qc.data_ptr<uint8_t>();
    at::parallel_for(0, nt, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        dequant_q4_row(qp + (n0 + i) * (K / 2), dc.data_ptr<float>() + (n0 + i) * (K / 32),
                       mc.data_ptr<float>() + (n0 + i) * (K / 32), K, wp + i * K);
    });
    mm_tile(out, xc, wt.narrow(0, 0, nt).to(xc.scalar_type()), bias_f, n0);
  }
  return out;
}

// Residual add + RMSNorm (see the header): h, residual [T, D] float32 (residual may be absent), weight [D] float32
// -> (out [T, D], r [T, D]); r is h itself when there is no residual.
std::vector<at::Tensor> add_rms_norm(const at::Tensor& h, const c10::optional<at::Tensor>& residual,
                                     const at::Tensor& weight, double eps) {
  TORCH_CHECK(h.dim() == 2 && h.scalar_type() == at::kFloat, "add_rms_norm: h [T, D] float32");
  const int64_t T = h.size(0), D = h.size(1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.numel() == D, "add_rms_norm: weight [D] float32");
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res)
    TORCH_CHECK(residual->sizes() == h.sizes() && residual->scalar_type() == at::kFloat, "add_rms_norm: residual");
  auto hc = h.contiguous();
  at::Tensor rc = has_res ? residual->contiguous() : at::Tensor();
  at::Tensor r = has_res ? at::empty_like(hc) : hc;
  auto out = at::empty_like(hc);
  auto wc = weight.contiguous();
  const float* hp = hc.data_ptr<float>();
  const float* rp = has_res ? rc.data_ptr<float>() : nullptr;
  float* sp = r.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const float fe = static_cast<float>(eps);
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* x = hp + t * D;
      float* s = sp + t * D;
      if (rp != nullptr) {
        const float* y = rp + t * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) s[i] = x[i] + y[i];
      }
      float sq = 0.f;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < D; ++i) sq += s[i] * s[i];
      const float inv = 1.f / std::sqrt(sq / static_cast<float>(D) + fe);
      float* o = op + t * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] = wp[i] * (s[i] * inv);
    }
  });
  return {out, r};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "single-token attention over a paged KV cache");
  m.def("int8_linear", &int8_linear, "weight-only int8 linear");
  m.def("linear_rows", &linear_rows, "float32 linear for few activation rows");
  m.def("q4_linear", &q4_linear, "4-bit GGUF (Q4_0 / Q4_1 blocks) weight linear");
  m.def("add_rms_norm", &add_rms_norm, "residual add + RMSNorm, float32");
}
