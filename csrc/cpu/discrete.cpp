// Discrete latent family on the CPU: Gumbel-softmax sampling fused with the categorical
// KL, forward and backward, with the math of fastvae/discrete.h.  OpenMP splits the rows;
// each thread keeps its row's logits and perturbed logits in a scratch buffer, so the
// Gumbel noise is drawn once per element per call.  Row maxima, sums and the argmax run in
// column order: results do not depend on the number of threads.
#include <vector>

#include "fastvae/discrete_args.h"
#include "fastvae/dispatch.h"
#include "ops.h"

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

template <typename T, typename P>
void categorical_forward_rows(const CategoricalForwardArgs& args) {
  const T* logits = static_cast<const T*>(args.logits);
  const P* prior = static_cast<const P*>(args.prior_logits);
  T* z = static_cast<T*>(args.z);
  const int64_t categories = args.categories;
  const int64_t stride_c = args.prior_layout.stride_c;
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
#pragma omp parallel
  {
    std::vector<float> logit_row(static_cast<size_t>(categories));  // x
    std::vector<float> noisy_row(static_cast<size_t>(categories));  // s = (x + g)/τ
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.rows; ++row) {
      const int64_t start = row * categories;
      const P* prior_row = prior ? prior + categorical_prior_row(args.prior_layout, row) : nullptr;
      RowSoftmax noisy, posterior, prior_softmax;
      for (int64_t col = 0; col < categories; ++col) {
        const float x = to_float(logits[start + col]);
        const float s = gumbel_perturbed(x, args.tau, seed, base + static_cast<uint64_t>(start + col));
        logit_row[col] = x;
        noisy_row[col] = s;
        noisy.max = fmaxf(noisy.max, s);
        posterior.max = fmaxf(posterior.max, x);
        if (prior_row) prior_softmax.max = fmaxf(prior_softmax.max, to_float(prior_row[col * stride_c]));
      }
      for (int64_t col = 0; col < categories; ++col) {
        noisy.total += expf(noisy_row[col] - noisy.max);
        posterior.total += expf(logit_row[col] - posterior.max);
        if (prior_row) prior_softmax.total += expf(to_float(prior_row[col * stride_c]) - prior_softmax.max);
      }
      const float log_total = logf(posterior.total);
      const float prior_log_total = prior_row ? logf(prior_softmax.total) : 0.0f;
      float kl = 0.0f;
      ArgMax best = argmax_none();
      for (int64_t col = 0; col < categories; ++col) {
        const float y = softmax_probability(noisy_row[col], noisy.max, noisy.total);
        if (args.hard) {
          best = argmax_combine(best, ArgMax{y, col});
        } else {
          z[start + col] = from_float<T>(y);
        }
        const float x = logit_row[col];
        const float p = softmax_probability(x, posterior.max, posterior.total);
        const float log_q = prior_row ? log_softmax_value(to_float(prior_row[col * stride_c]), prior_softmax.max,
                                                          prior_log_total)
                                      : args.log_uniform;
        kl += p * (log_softmax_value(x, posterior.max, log_total) - log_q);
      }
      args.kl[row] = kl;
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
#pragma omp parallel
  {
    std::vector<float> logit_row(static_cast<size_t>(categories));  // x
    std::vector<float> noisy_row(grad_z ? static_cast<size_t>(categories) : 0);  // s = (x + g)/τ, then y
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.rows; ++row) {
      const int64_t start = row * categories;
      const P* prior_row = prior ? prior + categorical_prior_row(args.prior_layout, row) : nullptr;
      RowSoftmax noisy, posterior, prior_softmax;
      for (int64_t col = 0; col < categories; ++col) {
        const float x = to_float(logits[start + col]);
        logit_row[col] = x;
        if (grad_z) {
          // The soft sample is rebuilt from the regenerated noise, for hard samples too
          // (their straight-through gradient is the soft sample's).
          const float s = gumbel_perturbed(x, args.tau, seed, base + static_cast<uint64_t>(start + col));
          noisy_row[col] = s;
          noisy.max = fmaxf(noisy.max, s);
        }
        if (args.grad_kl) {
          posterior.max = fmaxf(posterior.max, x);
          if (prior_row) prior_softmax.max = fmaxf(prior_softmax.max, to_float(prior_row[col * stride_c]));
        }
      }
      for (int64_t col = 0; col < categories; ++col) {
        if (grad_z) noisy.total += expf(noisy_row[col] - noisy.max);
        if (args.grad_kl) {
          posterior.total += expf(logit_row[col] - posterior.max);
          if (prior_row) prior_softmax.total += expf(to_float(prior_row[col * stride_c]) - prior_softmax.max);
        }
      }
      const float log_total = logf(posterior.total);
      const float prior_log_total = prior_row ? logf(prior_softmax.total) : 0.0f;
      const float upstream_kl = args.grad_kl ? args.grad_kl[row] : 0.0f;
      // Σ grad_z·y (the softmax VJP's row term) and the row's KL (its gradient's).
      float dot = 0.0f, kl = 0.0f;
      for (int64_t col = 0; col < categories; ++col) {
        if (grad_z) {
          const float y = softmax_probability(noisy_row[col], noisy.max, noisy.total);
          noisy_row[col] = y;
          dot += to_float(grad_z[start + col]) * y;
        }
        if (args.grad_kl) {
          const float x = logit_row[col];
          const float log_q = prior_row ? log_softmax_value(to_float(prior_row[col * stride_c]), prior_softmax.max,
                                                            prior_log_total)
                                        : args.log_uniform;
          kl += softmax_probability(x, posterior.max, posterior.total) *
                (log_softmax_value(x, posterior.max, log_total) - log_q);
        }
      }
      for (int64_t col = 0; col < categories; ++col) {
        float grad = 0.0f;
        if (grad_z) grad += gumbel_softmax_grad(noisy_row[col], to_float(grad_z[start + col]), dot, args.tau);
        if (args.grad_kl) {
          const float x = logit_row[col];
          const float p = softmax_probability(x, posterior.max, posterior.total);
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
