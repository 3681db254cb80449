// Per-element math of the location-scale latent family (Laplace, logistic, Cauchy), shared
// by the CUDA kernels and the CPU loops; fastvae/reference_location_scale.py is the same
// math in PyTorch, and docs/architecture.md ("Location-scale latents") says why each
// formula has its form.
//
// The noise of element i: Philox words 0 and 1 at offset base + i as uniforms u0, u1; the
// sign −1 where u1 < ½; the tail probability p = ½·u0 + 2^-33 in (0, ½]; x = sign·|x|
// with |x| the family's upper-tail quantile at p (float32 throughout).  Then
// z = loc + e^log_scale · x and log q(z|x) = log f(x) − log_scale, f the standard density.
#pragma once

#include "fastvae/common.h"
#include "fastvae/philox.h"

namespace fastvae {

// Codes of the families; fastvae/ops/location_scale.py (FAMILY_CODES) uses the same.
enum LocationScaleFamily : int { kLaplace = 0, kLogistic = 1, kCauchy = 2 };

// The elementary functions of this family: LibraryMath's and sinf (the Cauchy's quantile
// cos(πp)/sin(πp)).
struct LocationScaleMath : LibraryMath {
  FASTVAE_HD static float sin(float x) { return sinf(x); }
  FASTVAE_HD static float cos(float x) { return cosf(x); }
};

constexpr float kLocationScaleLn2 = 0.693147180559945309f;
constexpr float kLocationScaleLogPi = 1.14472988584940017f;
constexpr float kLocationScalePi = 3.14159265358979324f;
// 2^-33: keeps p above 0 (u0 = 0 happens), and p at most ½.
constexpr float kTailProbabilityOffset = 1.16415321826934814453125e-10f;
// Above this |½·(l1 − l2)| or log t the Cauchy KL is formed in log space (cauchy_kl).
constexpr float kCauchyKLLogSpace = 15.0f;
// Below this |x|, e^x − 1 − x is its Taylor series (expm1_minus_identity).
constexpr float kExpm1SeriesBound = 0.0625f;

// x of the family from the element's first two Philox words.
template <int kFamily, typename Math = LocationScaleMath>
FASTVAE_HD float location_scale_noise(uint32_t word0, uint32_t word1) {
  const float u0 = uint32_to_uniform(word0);
  const float u1 = uint32_to_uniform(word1);
  const float p = 0.5f * u0 + kTailProbabilityOffset;
  float magnitude;
  if (kFamily == kLaplace) {
    magnitude = -Math::log(2.0f * p);
  } else if (kFamily == kLogistic) {
    magnitude = Math::log1p(-p) - Math::log(p);
  } else {
    const float angle = kLocationScalePi * p;
    magnitude = Math::cos(angle) / Math::sin(angle);
  }
  return u1 < 0.5f ? -magnitude : magnitude;
}

template <int kFamily, typename Math = LocationScaleMath>
FASTVAE_HD float location_scale_noise_at(uint64_t seed, uint64_t offset) {
  const PhiloxWords words = philox4x32_10(seed, offset);
  return location_scale_noise<kFamily, Math>(words.word[0], words.word[1]);
}

// log f(x) of the standard density: Laplace −log 2 − |x|; logistic −|x| − 2·log1p(e^(−|x|));
// Cauchy −log π − log1p(x²), or −log π − 2·log|x| − log1p(x^-2) past |x| = 1 (no x²).
template <int kFamily, typename Math = LocationScaleMath>
FASTVAE_HD float standard_log_density(float x) {
  const float magnitude = fabsf(x);
  if (kFamily == kLaplace) return -kLocationScaleLn2 - magnitude;
  if (kFamily == kLogistic) return -magnitude - 2.0f * Math::log1p(Math::exp(-magnitude));
  if (magnitude > 1.0f) {
    return -kLocationScaleLogPi - 2.0f * Math::log(magnitude) - Math::log1p(1.0f / (magnitude * magnitude));
  }
  return -kLocationScaleLogPi - Math::log1p(magnitude * magnitude);
}

// e^x − 1 − x: the Taylor series x²/2! + … + x⁹/9! below |x| = 1/16, expm1(x) − x above.
template <typename Math = LocationScaleMath>
FASTVAE_HD float expm1_minus_identity(float x) {
  if (fabsf(x) < kExpm1SeriesBound) {
    float series = 1.0f / 362880.0f;
    series = series * x + 1.0f / 40320.0f;
    series = series * x + 1.0f / 5040.0f;
    series = series * x + 1.0f / 720.0f;
    series = series * x + 1.0f / 120.0f;
    series = series * x + 1.0f / 24.0f;
    series = series * x + 1.0f / 6.0f;
    series = series * x + 0.5f;
    return series * x * x;
  }
  return Math::expm1(x) - x;
}

struct LocationScaleGrads {
  float loc, log_scale, prior_loc, prior_log_scale;
};

// KL(Laplace(loc, e^l1) ‖ Laplace(prior_loc, e^l2)) = −r + c·e^r + expm1(r − c) with
// r = l1 − l2, c = |Δ|·e^(−l1); for c < 1 as g(r − c) + c·expm1(r), g = expm1_minus_identity,
// which does not cancel near q = p.  |Δ|·e^(−l) is 0 at Δ = 0 even where e^(−l) overflows.
template <typename Math = LocationScaleMath>
FASTVAE_HD float laplace_kl(float loc, float log_scale, float prior_loc, float prior_log_scale) {
  const float distance = fabsf(loc - prior_loc);
  const float q_scaled = distance == 0.0f ? 0.0f : distance * Math::exp(-log_scale);
  const float p_scaled = distance == 0.0f ? 0.0f : distance * Math::exp(-prior_log_scale);
  const float log_ratio = log_scale - prior_log_scale;
  if (q_scaled < 1.0f) return expm1_minus_identity<Math>(log_ratio - q_scaled) + q_scaled * Math::expm1(log_ratio);
  return -log_ratio + p_scaled + Math::expm1(log_ratio - q_scaled);
}

// Gradients of grad_kl·KL: with E = e^(r − c) = (b1/b2)·e^(−|Δ|/b1),
// ∂loc = sign(Δ)·e^(−l2)·(1 − e^(−c)), ∂l1 = −1 + E·(1 + c), ∂l2 = 1 − |Δ|/b2 − E, ∂prior_loc = −∂loc.
template <typename Math = LocationScaleMath>
FASTVAE_HD LocationScaleGrads laplace_kl_grads(float loc, float log_scale, float prior_loc, float prior_log_scale,
                                               float grad_kl) {
  const float difference = loc - prior_loc;
  const float distance = fabsf(difference);
  const float q_scaled = distance == 0.0f ? 0.0f : distance * Math::exp(-log_scale);
  const float p_scaled = distance == 0.0f ? 0.0f : distance * Math::exp(-prior_log_scale);
  const float ratio = Math::exp(log_scale - prior_log_scale - q_scaled);
  // c·E is 0 where E underflows, also where c overflows (a product of 0 and inf).
  const float scaled_ratio = ratio == 0.0f ? 0.0f : q_scaled * ratio;
  const float sign = difference < 0.0f ? -1.0f : 1.0f;
  const float d_loc =
      distance == 0.0f ? 0.0f : grad_kl * sign * Math::exp(-prior_log_scale) * -Math::expm1(-q_scaled);
  return LocationScaleGrads{d_loc, grad_kl * (ratio - 1.0f + scaled_ratio), -d_loc,
                            grad_kl * (1.0f - p_scaled - ratio)};
}

// The pieces of the Cauchy KL log(cosh² h + t²), h = ½·(l1 − l2), t = |Δ|/(2·√(γ1·γ2)):
// log cosh h, log t (−inf at Δ = 0) and the KL itself.
struct CauchyKLParts {
  float half_log_ratio, log_cosh, log_t, kl;
};

template <typename Math = LocationScaleMath>
FASTVAE_HD CauchyKLParts cauchy_kl_parts(float loc, float log_scale, float prior_loc, float prior_log_scale) {
  const float half_log_ratio = 0.5f * (log_scale - prior_log_scale);
  const float distance = fabsf(loc - prior_loc);
  const float magnitude = fabsf(half_log_ratio);
  const float log_cosh = magnitude + Math::log1p(Math::exp(-2.0f * magnitude)) - kLocationScaleLn2;
  const float log_t = distance == 0.0f ? -INFINITY
                                       : Math::log(distance) - 0.5f * (log_scale + prior_log_scale) - kLocationScaleLn2;
  float kl;
  if (magnitude > kCauchyKLLogSpace || log_t > kCauchyKLLogSpace) {
    // logaddexp(2·log cosh h, 2·log t): no overflow for any scale or difference.
    const float a = 2.0f * log_cosh;
    const float b = 2.0f * log_t;
    const float larger = a > b ? a : b;
    kl = larger + Math::log1p(Math::exp(-fabsf(a - b)));
  } else {
    // log1p(sinh² h + t²): exact near q = p.  sinh h = e·(e + 2)/(2·(e + 1)), e = expm1 h.
    const float e = Math::expm1(half_log_ratio);
    const float sinh = e * (e + 2.0f) / (2.0f * (e + 1.0f));
    const float t_squared = distance == 0.0f ? 0.0f : Math::exp(2.0f * log_t);
    kl = Math::log1p(sinh * sinh + t_squared);
  }
  return CauchyKLParts{half_log_ratio, log_cosh, log_t, kl};
}

// KL(Cauchy(loc, e^l1) ‖ Cauchy(prior_loc, e^l2)) = log(((γ1 + γ2)² + Δ²)/(4·γ1·γ2)).
template <typename Math = LocationScaleMath>
FASTVAE_HD float cauchy_kl(float loc, float log_scale, float prior_loc, float prior_log_scale) {
  return cauchy_kl_parts<Math>(loc, log_scale, prior_loc, prior_log_scale).kl;
}

// Gradients of grad_kl·KL, with N = cosh² h + t² = e^KL, c = cosh² h / N and τ = t²/N
// (both in [0, 1], formed as exponentials of differences of logs):
// ∂l1 = tanh h·c − τ, ∂l2 = −tanh h·c − τ, ∂loc = sign(Δ)·(t/N)·e^(−(l1 + l2)/2), ∂prior_loc = −∂loc.
template <typename Math = LocationScaleMath>
FASTVAE_HD LocationScaleGrads cauchy_kl_grads(float loc, float log_scale, float prior_loc, float prior_log_scale,
                                              float grad_kl) {
  const CauchyKLParts parts = cauchy_kl_parts<Math>(loc, log_scale, prior_loc, prior_log_scale);
  const float difference = loc - prior_loc;
  const float cosh_share = Math::exp(2.0f * parts.log_cosh - parts.kl);
  const float t_share = Math::exp(2.0f * parts.log_t - parts.kl);
  const float scale_term = Math::tanh(parts.half_log_ratio) * cosh_share;
  const float d_loc = difference == 0.0f ? 0.0f
                                         : grad_kl * (difference < 0.0f ? -1.0f : 1.0f) *
                                               Math::exp(parts.log_t - parts.kl - 0.5f * (log_scale + prior_log_scale));
  return LocationScaleGrads{d_loc, grad_kl * (scale_term - t_share), -d_loc, grad_kl * (-scale_term - t_share)};
}

// The logistic prior's side of the single-sample KL at z: t = (z − prior_loc)·e^(−l2),
// log p(z) = −|t| − l2 − 2·log1p(e^(−|t|)).
template <typename Math = LocationScaleMath>
FASTVAE_HD float logistic_log_prob(float z, float prior_loc, float prior_log_scale) {
  const float t = (z - prior_loc) * Math::exp(-prior_log_scale);
  const float magnitude = fabsf(t);
  return -magnitude - prior_log_scale - 2.0f * Math::log1p(Math::exp(-magnitude));
}

// Gradients of grad_kl·(log q(z) − log p(z)) with z = loc + e^l1·x: ∂log p/∂z = −tanh(t/2)·e^(−l2),
// so ∂loc = g·tanh(t/2)·e^(−l2), ∂l1 = g·(−1 + tanh(t/2)·e^(−l2)·e^l1·x), ∂prior_loc = −∂loc,
// ∂l2 = g·(1 − t·tanh(t/2)).
template <typename Math = LocationScaleMath>
FASTVAE_HD LocationScaleGrads logistic_kl_grads(float x, float loc, float log_scale, float prior_loc,
                                                float prior_log_scale, float grad_kl) {
  const float scale_x = Math::exp(log_scale) * x;
  const float z = loc + scale_x;
  const float inverse_prior_scale = Math::exp(-prior_log_scale);
  const float t = (z - prior_loc) * inverse_prior_scale;
  const float slope = Math::tanh(0.5f * t);
  const float d_z = grad_kl * slope * inverse_prior_scale;
  return LocationScaleGrads{d_z, -grad_kl + d_z * scale_x, -d_z, grad_kl * (1.0f - t * slope)};
}

// One element's forward: z, log q(z|x) and the KL (analytic, or log q − log p at z for the
// logistic).  The 0·loc of log q: a NaN or infinite loc, whose z is no number, gives no density.
struct LocationScaleOutputs {
  float z, log_q, kl;
};

template <int kFamily, typename Math = LocationScaleMath>
FASTVAE_HD LocationScaleOutputs location_scale_element_forward(float x, float loc, float log_scale, float prior_loc,
                                                       float prior_log_scale) {
  const float z = loc + Math::exp(log_scale) * x;
  const float log_q = standard_log_density<kFamily, Math>(x) - log_scale + 0.0f * loc;
  float kl;
  if (kFamily == kLaplace) {
    kl = laplace_kl<Math>(loc, log_scale, prior_loc, prior_log_scale);
  } else if (kFamily == kCauchy) {
    kl = cauchy_kl<Math>(loc, log_scale, prior_loc, prior_log_scale);
  } else {
    kl = log_q - logistic_log_prob<Math>(z, prior_loc, prior_log_scale);
  }
  return LocationScaleOutputs{z, log_q, kl};
}

// Whether the backward needs the element's noise x: for ∂z, and for the logistic's KL,
// which depends on z.
template <int kFamily>
FASTVAE_HD bool backward_needs_noise(bool has_grad_z, bool has_grad_kl) {
  return has_grad_z || (kFamily == kLogistic && has_grad_kl);
}

// One element's backward: the gradients of grad_z·z + grad_log_q·log q + grad_kl·KL in
// loc, log_scale and the priors (the priors' only through the KL).  ∂z/∂loc = 1,
// ∂z/∂l1 = e^l1·x; ∂log q/∂loc = 0, ∂log q/∂l1 = −1.  x is read only where
// backward_needs_noise.
template <int kFamily, typename Math = LocationScaleMath>
FASTVAE_HD LocationScaleGrads location_scale_element_backward(float x, float loc, float log_scale, float prior_loc,
                                                      float prior_log_scale, float grad_z, float grad_log_q,
                                                      float grad_kl, bool has_grad_z, bool has_grad_kl) {
  LocationScaleGrads grads{0.0f, 0.0f, 0.0f, 0.0f};
  if (has_grad_kl) {
    if (kFamily == kLaplace) {
      grads = laplace_kl_grads<Math>(loc, log_scale, prior_loc, prior_log_scale, grad_kl);
    } else if (kFamily == kCauchy) {
      grads = cauchy_kl_grads<Math>(loc, log_scale, prior_loc, prior_log_scale, grad_kl);
    } else {
      grads = logistic_kl_grads<Math>(x, loc, log_scale, prior_loc, prior_log_scale, grad_kl);
    }
  }
  if (has_grad_z) {
    grads.loc += grad_z;
    grads.log_scale += grad_z * Math::exp(log_scale) * x;
  }
  grads.log_scale -= grad_log_q;
  return grads;
}

}  // namespace fastvae
