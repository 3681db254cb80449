// Per-element math of the importance-weighted (IWAE) family, shared by the CUDA kernels and
// the CPU loops: a reparameterized sample with its two log densities, the gradients of one
// sample summed over K, and the online max-shifted logsumexp behind log_mean_exp and
// iwae_bound.  Same formulas, in the same order, as kernels/iwae.py.
#pragma once

#include "fastvae/common.h"
#include "fastvae/latent.h"

namespace fastvae {

FASTVAE_HD float positive_infinity() { return bits_as_float(0x7f800000u); }

// ---------------------------------------------------------------------------------------
// K samples with log q and log p
// ---------------------------------------------------------------------------------------

struct SampleLogDensities {
  float z;      // mu + σ·ε in float32 (rounded to the output dtype only when stored)
  float log_q;  // log N(z; mu, e^logvar)
  float log_p;  // log N(z; prior_mu, e^prior_logvar)
};

// log N(z; mu, e^logvar) at its own sample z = mu + σ·ε, in ε: −½·(log 2π + logvar + ε²) + 0·mu,
// as fastvae.reference.sample_log_density.  (z − mu)²·e^(−logvar) would lose ε² to the
// rounding of z where σ ≪ |mu|; 0·mu keeps a NaN mu's NaN.
FASTVAE_HD float sample_log_density(float eps, float mu, float logvar) {
  return -0.5f * (1.8378770664093453f + logvar + eps * eps) + 0.0f * mu;
}

// log q in ε, log p at the float32 z, as fastvae.reference evaluates them.
template <typename Math = LibraryMath>
FASTVAE_HD SampleLogDensities sample_with_log_densities(float mu, float logvar, float prior_mu, float prior_logvar,
                                                        float eps) {
  const float z = mu + Math::exp(0.5f * logvar) * eps;
  return SampleLogDensities{z, sample_log_density(eps, mu, logvar), gaussian_log_density<Math>(z, prior_mu, prior_logvar)};
}

// Gradients of one latent element, summed over its K samples.
struct SampleGradSums {
  float mu, logvar, prior_mu, prior_logvar;
};

// Adds sample k's terms.  With z = mu + σ·ε: dz/dmu = 1, dz/dlogvar = σ·ε/2, and
// d log p/dz = −(z − prior_mu)·e^(−prior_logvar) = −d log p/dprior_mu.  The log q term is
// not here: log q = −½(log 2π + logvar + ε²) at the sampled z, so its total derivative is
// −½ per sample in logvar and 0 in mu, added once per row by the caller.
FASTVAE_HD void add_sample_grads(SampleGradSums& sums, float mu, float sigma, float eps, float prior_mu,
                                 float prior_precision, float grad_z, bool has_grad_log_p, float grad_log_p) {
  if (has_grad_log_p) {
    const float diff = (mu + sigma * eps) - prior_mu;
    const float d_prior_mu = grad_log_p * diff * prior_precision;
    grad_z -= d_prior_mu;
    sums.prior_mu += d_prior_mu;
    // d log p/dprior_logvar = −½(1 − (z − prior_mu)²·e^(−prior_logvar))
    sums.prior_logvar += grad_log_p * 0.5f * (diff * diff * prior_precision - 1.0f);
  }
  sums.mu += grad_z;
  sums.logvar += grad_z * 0.5f * sigma * eps;
}

// ---------------------------------------------------------------------------------------
// Log-mean-exp over samples
// ---------------------------------------------------------------------------------------

// The IWAE log weight log p(x|z) + log p(z) − log q(z|x), added in kernels/iwae.py's order.
FASTVAE_HD float iwae_log_weight(float log_px_z, float log_p, float log_q) { return (log_px_z + log_p) - log_q; }

// Term k of a column: x, or the IWAE log weight when log_p and log_q are given (both or
// neither), in float32.
template <typename T>
FASTVAE_HD float load_log_weight(const T* x, const T* log_p, const T* log_q, int64_t index) {
  const float value = to_float(x[index]);
  return log_p ? iwae_log_weight(value, to_float(log_p[index]), to_float(log_q[index])) : value;
}

// A logsumexp built one term (or one partial logsumexp) at a time: Σ exp(x − shift) with
// shift the running max, or 0 while the max is ±inf, so an all −inf column gives −inf and a
// +inf term gives +inf (as torch.logsumexp).  NaN is ignored by fmaxf but reaches total.
struct OnlineLogSumExp {
  float max;    // the largest term so far; −inf before any
  float shift;  // max, or 0 while max is ±inf
  float total;  // Σ exp(x − shift)
};

FASTVAE_HD OnlineLogSumExp online_logsumexp_start() { return OnlineLogSumExp{-positive_infinity(), 0.0f, 0.0f}; }

FASTVAE_HD float logsumexp_shift_for(float max) { return fabsf(max) == positive_infinity() ? 0.0f : max; }

// total·exp(shift − new_shift), skipped when it would not change total: a zero total stays
// zero (rescaling it could make 0·inf), and an unchanged shift multiplies by exactly 1.
FASTVAE_HD float rescaled_total(float total, float shift, float new_shift) {
  return (total == 0.0f || shift == new_shift) ? total : total * expf(shift - new_shift);
}

FASTVAE_HD void online_logsumexp_add(OnlineLogSumExp& state, float x) {
  const float new_max = fmaxf(state.max, x);
  const float new_shift = logsumexp_shift_for(new_max);
  state.total = rescaled_total(state.total, state.shift, new_shift) + expf(x - new_shift);
  state.max = new_max;
  state.shift = new_shift;
}

// Combine two partial logsumexps (a warp's lanes, in a fixed order).
FASTVAE_HD OnlineLogSumExp online_logsumexp_merge(const OnlineLogSumExp& a, const OnlineLogSumExp& b) {
  const float new_max = fmaxf(a.max, b.max);
  const float new_shift = logsumexp_shift_for(new_max);
  return OnlineLogSumExp{new_max, new_shift,
                         rescaled_total(a.total, a.shift, new_shift) + rescaled_total(b.total, b.shift, new_shift)};
}

// softmax_k = exp(x − shift − log total).  Not exp(x − result − log K): the rounding of a
// result of large magnitude (thousands of nats) would scale every weight.
FASTVAE_HD float log_mean_exp_weight(float x, float shift, float log_total) { return expf((x - shift) - log_total); }

}  // namespace fastvae
