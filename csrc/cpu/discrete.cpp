// Discrete latent family on the CPU: Gumbel-softmax sampling fused with the categorical
// KL, forward and backward, with the math of fastvae/discrete.h.  OpenMP splits the rows;
// each thread keeps its row's logits and perturbed logits in a scratch buffer, so the
// Gumbel noise is drawn once per element per call.  Row maxima, sums and the argmax run in
// column order, the sums in float64 (rounded to float32 once at the end: their error does
// not grow with the row's length): results do not depend on the number of threads.
//
// The per-element transcendentals run in SIMD loops over the row, compiled for AVX2 and
// for the baseline x86-64 (picked at run time) from the same source without floating-point
// contraction: the noise (Philox words from csrc/cpu/philox_tile.h, then −log(−log u) with
// vector_math.h's log) and the exponentials of the softmaxes; the row's sums then add
// those values in column order.  GCC if-converts the selects of the branch-free math only
// when evaluating both sides may not trap; nothing here reads the floating-point exception
// flags.  Before the includes, so the inlined header functions are compiled alike.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>
#include <vector>

#include "fastvae/discrete_args.h"
#include "fastvae/dispatch.h"
#include "ops.h"
#include "philox_tile.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

// Softmax statistics of one row: its maximum and Σ exp(v − max).
struct RowSoftmax {
  float max = -INFINITY;
  float total = 0.0f;
};

template <typename P>
void store_grad_prior(void* grad_prior, int64_t index, float value, bool as_float32) {
  if (as_float32) {
    static_cast<float*>(grad_prior)[index] = value;
  } else {
    static_cast<P*>(grad_prior)[index] = from_float<P>(value);
  }
}

// Columns per run of Philox words (the word arrays' length; a multiple of eight).
constexpr int kNoiseRun = 1024;

// One thread's row buffers.
struct RowScratch {
  explicit RowScratch(int64_t categories)
      : logits(static_cast<size_t>(categories)),
        noisy(static_cast<size_t>(categories)),
        exp_noisy(static_cast<size_t>(categories)),
        exp_logits(static_cast<size_t>(categories)),
        words0(kNoiseRun),
        words1(kNoiseRun) {}
  std::vector<float> logits;      // x
  std::vector<float> noisy;       // s = (x + g)/τ
  std::vector<float> exp_noisy;   // exp(s − max s)
  std::vector<float> exp_logits;  // exp(x − max x)
  std::vector<uint32_t> words0, words1;
};

// s = (x + g)/τ for `count` columns whose Philox word 0 is in words0 (gumbel_perturbed).
inline void perturb_body(const float* logits, const uint32_t* words0, int count, float tau, float* noisy) {
#pragma omp simd
  for (int i = 0; i < count; ++i) noisy[i] = (logits[i] + gumbel_from_word<VectorMath>(words0[i])) / tau;
}

// exp(v − max) for a row's values: the softmax's numerators.
inline void shifted_exp_body(const float* values, float max, int64_t count, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = VectorMath::exp(values[i] - max);
}

struct DiscreteMath {
  void (*perturb)(const float*, int, float, uint64_t, uint64_t, uint32_t*, uint32_t*, float*);
  void (*shifted_exp)(const float*, float, int64_t, float*);
};

// The loops compiled for one target: PHILOX_WORDS fills the Philox words.
#define FASTVAE_DISCRETE_LOOPS(SUFFIX, TARGET, PHILOX_WORDS)                                                  \
  TARGET void perturb_##SUFFIX(const float* logits, int count, float tau, uint64_t seed, uint64_t first_offset, \
                               uint32_t* words0, uint32_t* words1, float* noisy) {                            \
    PHILOX_WORDS(words0, words1, count, seed, first_offset);                                                  \
    perturb_body(logits, words0, count, tau, noisy);                                                          \
  }                                                                                                           \
  TARGET void shifted_exp_##SUFFIX(const float* values, float max, int64_t count, float* out) {               \
    shifted_exp_body(values, max, count, out);                                                                \
  }                                                                                                           \
  constexpr DiscreteMath discrete_math_##SUFFIX = {perturb_##SUFFIX, shifted_exp_##SUFFIX};

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_DISCRETE_LOOPS(avx2, FASTVAE_AVX2_TARGET, philox_words_run_avx2)
#endif
FASTVAE_DISCRETE_LOOPS(baseline, FASTVAE_BASELINE_TARGET, philox_words_run)
#undef FASTVAE_DISCRETE_LOOPS

DiscreteMath discrete_math() { return FASTVAE_FOR_THIS_CPU(discrete_math); }

// The row's perturbed logits s into scratch.noisy, from its logits in scratch.logits; the
// row's first element is at Philox offset first_offset.
inline void perturb_row(const DiscreteMath& math, RowScratch& scratch, int64_t categories, float tau, uint64_t seed,
                        uint64_t first_offset) {
  for (int64_t begin = 0; begin < categories; begin += kNoiseRun) {
    const int count = static_cast<int>(std::min<int64_t>(kNoiseRun, categories - begin));
    math.perturb(scratch.logits.data() + begin, count, tau, seed, first_offset + static_cast<uint64_t>(begin),
                 scratch.words0.data(), scratch.words1.data(), scratch.noisy.data() + begin);
  }
}

template <typename T, typename P>
void categorical_forward_rows(const CategoricalForwardArgs& args) {
  const T* logits = static_cast<const T*>(args.logits);
  const P* prior = static_cast<const P*>(args.prior_logits);
  T* z = static_cast<T*>(args.z);
  const int64_t categories = args.categories;
  const int64_t stride_c = args.prior_layout.stride_c;
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
  const DiscreteMath math = discrete_math();
#pragma omp parallel
  {
    RowScratch scratch(categories);
    const float* logit_row = scratch.logits.data();
    const float* noisy_row = scratch.noisy.data();
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.rows; ++row) {
      const int64_t start = row * categories;
      const P* prior_row = prior ? prior + categorical_prior_row(args.prior_layout, row) : nullptr;
      for (int64_t col = 0; col < categories; ++col) scratch.logits[col] = to_float(logits[start + col]);
      perturb_row(math, scratch, categories, args.tau, seed, base + static_cast<uint64_t>(start));
      RowSoftmax noisy, posterior, prior_softmax;
      for (int64_t col = 0; col < categories; ++col) {
        noisy.max = fmaxf(noisy.max, noisy_row[col]);
        posterior.max = fmaxf(posterior.max, logit_row[col]);
        if (prior_row) prior_softmax.max = fmaxf(prior_softmax.max, to_float(prior_row[col * stride_c]));
      }
      math.shifted_exp(noisy_row, noisy.max, categories, scratch.exp_noisy.data());
      math.shifted_exp(logit_row, posterior.max, categories, scratch.exp_logits.data());
      double noisy_total = 0.0, posterior_total = 0.0, prior_total = 0.0;
      for (int64_t col = 0; col < categories; ++col) {
        noisy_total += scratch.exp_noisy[col];
        posterior_total += scratch.exp_logits[col];
        if (prior_row) prior_total += expf(to_float(prior_row[col * stride_c]) - prior_softmax.max);
      }
      noisy.total = static_cast<float>(noisy_total);
      posterior.total = static_cast<float>(posterior_total);
      prior_softmax.total = static_cast<float>(prior_total);
      const float log_total = logf(posterior.total);
      const float prior_log_total = prior_row ? logf(prior_softmax.total) : 0.0f;
      double kl = 0.0;
      ArgMax best = argmax_none();
      for (int64_t col = 0; col < categories; ++col) {
        const float y = scratch.exp_noisy[col] / noisy.total;
        if (args.hard) {
          best = argmax_combine(best, ArgMax{y, col});
        } else {
          z[start + col] = from_float<T>(y);
        }
        const float x = logit_row[col];
        const float p = scratch.exp_logits[col] / posterior.total;
        const float log_q = prior_row ? log_softmax_value(to_float(prior_row[col * stride_c]), prior_softmax.max,
                                                          prior_log_total)
                                      : args.log_uniform;
        kl += p * (log_softmax_value(x, posterior.max, log_total) - log_q);
      }
      args.kl[row] = static_cast<float>(kl);
      if (args.hard) {
        // y is NaN across a row with a NaN (its total is), and so is one_hot − y + y.
        const bool row_is_nan = is_nan(noisy.total);
        for (int64_t col = 0; col < categories; ++col) {
          const float value = row_is_nan ? NAN : col == best.index ? straight_through_at_argmax(best.value) : 0.0f;
          z[start + col] = from_float<T>(value);
        }
      }
    }
  }
}

template <typename T, typename P>
void categorical_backward_rows(const CategoricalBackwardArgs& args) {
  const T* logits = static_cast<const T*>(args.logits);
  const P* prior = static_cast<const P*>(args.prior_logits);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_logits = static_cast<T*>(args.grad_logits);
  const int64_t categories = args.categories;
  const int64_t stride_c = args.prior_layout.stride_c;
  const uint64_t seed = grad_z ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = grad_z ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  const bool grad_prior_float32 = args.grad_prior_dtype == kFloat32;
  const DiscreteMath math = discrete_math();
#pragma omp parallel
  {
    RowScratch scratch(categories);
    const float* logit_row = scratch.logits.data();
    float* noisy_row = scratch.noisy.data();  // s = (x + g)/τ, then y
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.rows; ++row) {
      const int64_t start = row * categories;
      const P* prior_row = prior ? prior + categorical_prior_row(args.prior_layout, row) : nullptr;
      for (int64_t col = 0; col < categories; ++col) scratch.logits[col] = to_float(logits[start + col]);
      // The soft sample is rebuilt from the regenerated noise, for hard samples too (their
      // straight-through gradient is the soft sample's).
      if (grad_z) perturb_row(math, scratch, categories, args.tau, seed, base + static_cast<uint64_t>(start));
      RowSoftmax noisy, posterior, prior_softmax;
      for (int64_t col = 0; col < categories; ++col) {
        if (grad_z) noisy.max = fmaxf(noisy.max, noisy_row[col]);
        if (args.grad_kl) {
          posterior.max = fmaxf(posterior.max, logit_row[col]);
          if (prior_row) prior_softmax.max = fmaxf(prior_softmax.max, to_float(prior_row[col * stride_c]));
        }
      }
      if (grad_z) math.shifted_exp(noisy_row, noisy.max, categories, scratch.exp_noisy.data());
      if (args.grad_kl) math.shifted_exp(logit_row, posterior.max, categories, scratch.exp_logits.data());
      double noisy_total = 0.0, posterior_total = 0.0, prior_total = 0.0;
      for (int64_t col = 0; col < categories; ++col) {
        if (grad_z) noisy_total += scratch.exp_noisy[col];
        if (args.grad_kl) {
          posterior_total += scratch.exp_logits[col];
          if (prior_row) prior_total += expf(to_float(prior_row[col * stride_c]) - prior_softmax.max);
        }
      }
      noisy.total = static_cast<float>(noisy_total);
      posterior.total = static_cast<float>(posterior_total);
      prior_softmax.total = static_cast<float>(prior_total);
      const float log_total = logf(posterior.total);
      const float prior_log_total = prior_row ? logf(prior_softmax.total) : 0.0f;
      const float upstream_kl = args.grad_kl ? args.grad_kl[row] : 0.0f;
      // Σ grad_z·y (the softmax VJP's row term) and the row's KL (its gradient's).
      double dot_sum = 0.0, kl_sum = 0.0;
      for (int64_t col = 0; col < categories; ++col) {
        if (grad_z) {
          const float y = scratch.exp_noisy[col] / noisy.total;
          noisy_row[col] = y;
          dot_sum += to_float(grad_z[start + col]) * y;
        }
        if (args.grad_kl) {
          const float x = logit_row[col];
          const float log_q = prior_row ? log_softmax_value(to_float(prior_row[col * stride_c]), prior_softmax.max,
                                                            prior_log_total)
                                        : args.log_uniform;
          const float p = scratch.exp_logits[col] / posterior.total;
          kl_sum += p * (log_softmax_value(x, posterior.max, log_total) - log_q);
        }
      }
      const float dot = static_cast<float>(dot_sum), kl = static_cast<float>(kl_sum);
      for (int64_t col = 0; col < categories; ++col) {
        float grad = 0.0f;
        if (grad_z) grad += gumbel_softmax_grad(noisy_row[col], to_float(grad_z[start + col]), dot, args.tau);
        if (args.grad_kl) {
          const float x = logit_row[col];
          const float p = scratch.exp_logits[col] / posterior.total;
          const float prior_value = prior_row ? to_float(prior_row[col * stride_c]) : 0.0f;
          const float log_q =
              prior_row ? log_softmax_value(prior_value, prior_softmax.max, prior_log_total) : args.log_uniform;
          grad += categorical_kl_logit_grad(p, log_softmax_value(x, posterior.max, log_total) - log_q, kl, upstream_kl);
          if (args.grad_prior) {
            const float q = softmax_probability(prior_value, prior_softmax.max, prior_softmax.total);
            store_grad_prior<P>(args.grad_prior, start + col, categorical_kl_prior_grad(p, q, upstream_kl),
                                grad_prior_float32);
          }
        }
        grad_logits[start + col] = from_float<T>(grad);
      }
    }
  }
}

}  // namespace

void categorical_forward(const CategoricalForwardArgs& args) {
  if (args.rows == 0 || args.categories == 0) return;
  FASTVAE_DISPATCH(args.dtype, "categorical_fwd", T, [&] {
    dispatch_prior_dtype<T>(args.dtype, args.prior_dtype, "categorical_fwd", [&](auto prior_type) {
      categorical_forward_rows<T, decltype(prior_type)>(args);
    });
  });
}

void categorical_backward(const CategoricalBackwardArgs& args) {
  if (args.rows == 0 || args.categories == 0) return;
  FASTVAE_DISPATCH(args.dtype, "categorical_bwd", T, [&] {
    dispatch_prior_dtype<T>(args.dtype, args.prior_dtype, "categorical_bwd", [&](auto prior_type) {
      categorical_backward_rows<T, decltype(prior_type)>(args);
    });
  });
}

}  // namespace cpu
}  // namespace fastvae
