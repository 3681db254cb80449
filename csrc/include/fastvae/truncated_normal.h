// Per-element math of the truncated-normal latent, shared by the CUDA kernels and the CPU
// loops (and written out again in Triton, kernels/truncated_normal.py): the sample
// z = loc + σ·Φ⁻¹((1 − u)·Φ(α) + u·Φ(β)) on [low, high], its log density log q, the KL
// estimate log q(z) − log p(z) against the prior truncated to the same interval, and the
// gradients of all three.
//
// Float32 throughout, with no erf/erfc from a library: log Φ comes from an erfc
// approximation of the form t·exp(−w² + poly(t)) taken in log space (so it never
// underflows), Φ⁻¹ from Acklam's rational approximation refined by Newton steps in log
// space.  The interval is reflected into the lower half, and in the lower tail the sample
// is solved for as its distance e from the interval's upper end b, so the squares of deep
// bounds (α = −1e4) are never formed where they would cancel: docs/architecture.md, "The
// truncated normal", has the formulas.
#pragma once

#include "fastvae/common.h"

namespace fastvae {
namespace truncated_normal {

constexpr float kHalfLog2Pi = 0.91893853320467274f;
constexpr float kLog2 = 0.69314718055994531f;
constexpr float kInvSqrt2 = 0.70710678118654752f;
// fastvae/reference_truncated_normal.py: the uniform is kept in [2^-32, 1 − 2^-24].
constexpr float kUniformMin = 2.3283064365386963e-10f;
constexpr float kUniformMax = 0.99999994039535522f;
// Below this w·max(1, |m|) (w the standardized width, m the midpoint), log Z is the series
// log(w·φ(m)) + log1p(w²(m² − 1)/24), whose next term is below 1e-10 there.
constexpr float kNarrowWidth = 1.0e-2f;
constexpr float kFiniteMax = 3.0e38f;

FASTVAE_HD float min_of(float a, float b) { return a < b ? a : b; }
FASTVAE_HD float max_of(float a, float b) { return a > b ? a : b; }
FASTVAE_HD float abs_of(float a) { return a < 0.0f ? -a : a; }
FASTVAE_HD float finite_or_zero(float a) { return abs_of(a) < kFiniteMax ? a : 0.0f; }
FASTVAE_HD float clamp_to(float value, float low, float high) { return min_of(max_of(value, low), high); }

// R(s) = log Φ(−s) + s²/2 for s ≥ 0: log erfc(w) = log t − w² + poly(t), t = 1/(1 + w/2),
// w = s/√2 (Numerical Recipes' erfcc, relative error below 1.2e-7 for every w), less log 2.
template <typename Math>
FASTVAE_HD float tail_remainder(float s) {
  const float w = s * kInvSqrt2;
  const float t = 1.0f / (1.0f + 0.5f * w);
  float poly = 0.17087277f;
  poly = poly * t - 0.82215223f;
  poly = poly * t + 1.48851587f;
  poly = poly * t - 1.13520398f;
  poly = poly * t + 0.27886807f;
  poly = poly * t - 0.18628806f;
  poly = poly * t + 0.09678418f;
  poly = poly * t + 0.37409196f;
  poly = poly * t + 1.00002368f;
  poly = poly * t - 1.26551223f;
  return poly - Math::log(1.0f + 0.5f * w) - kLog2;
}

struct LogNdtr {
  float cdf;        // log Φ(x)
  float sf;         // log Φ(−x)
  float remainder;  // R(|x|)
};

template <typename Math>
FASTVAE_HD LogNdtr log_ndtr(float x) {
  const float s = abs_of(x);
  const float remainder = tail_remainder<Math>(s);
  const float small = remainder - 0.5f * s * s;
  const float big = Math::log1p(-Math::exp(small));
  return x < 0.0f ? LogNdtr{small, big, remainder} : LogNdtr{big, small, remainder};
}

template <typename Math>
FASTVAE_HD float log_add_exp(float a, float b) {
  const float top = max_of(a, b);
  const float bottom = min_of(a, b);
  if (bottom == -INFINITY) return top;
  return top + Math::log1p(Math::exp(bottom - top));
}

// One Newton step on log Φ(x) = target: x − (log Φ(x) − target)·Φ(x)/φ(x).
template <typename Math>
FASTVAE_HD float newton_log_ndtr(float x, float target) {
  const LogNdtr parts = log_ndtr<Math>(x);
  // log(φ(x)/Φ(x)) = −½ log 2π − R(|x|) for x < 0 (the x² cancel), else by its terms.
  const float log_mills = x < 0.0f ? -kHalfLog2Pi - parts.remainder : -kHalfLog2Pi - 0.5f * x * x - parts.cdf;
  return x - (parts.cdf - target) * Math::exp(-log_mills);
}

// Φ⁻¹(e^log_p) for log_p ≤ log ½: Acklam's rational approximation (the tail's in
// q = √(−2 log p), written in 1/q so it never overflows), then two Newton steps.
template <typename Math>
FASTVAE_HD float ndtri_log(float log_p) {
  float x;
  if (log_p < -3.7193418f) {  // p < 0.02425
    const float tail_q = Math::sqrt(-2.0f * log_p);
    const float s = 1.0f / tail_q;
    float num = 2.938163982698783e+00f;
    num = num * s + 4.374664141464968e+00f;
    num = num * s - 2.549732539343734e+00f;
    num = num * s - 2.400758277161838e+00f;
    num = num * s - 3.223964580411365e-01f;
    num = num * s - 7.784894002430293e-03f;
    float den = s;
    den = den * s + 3.754408661907416e+00f;
    den = den * s + 2.445134137142996e+00f;
    den = den * s + 3.224671290700398e-01f;
    den = den * s + 7.784695709041462e-03f;
    x = tail_q * num / den;
  } else {
    const float q = Math::exp(log_p) - 0.5f;
    const float r = q * q;
    float num = -3.969683028665376e+01f;
    num = num * r + 2.209460984245205e+02f;
    num = num * r - 2.759285104469687e+02f;
    num = num * r + 1.383577518672690e+02f;
    num = num * r - 3.066479806614716e+01f;
    num = num * r + 2.506628277459239e+00f;
    float den = -5.447609879822406e+01f;
    den = den * r + 1.615858368580409e+02f;
    den = den * r - 1.556989798598866e+02f;
    den = den * r + 6.680131188771972e+01f;
    den = den * r - 1.328068155288572e+01f;
    den = den * r + 1.0f;
    x = num * q / den;
  }
  x = newton_log_ndtr<Math>(x, log_p);
  return newton_log_ndtr<Math>(x, log_p);
}

// The interval [α, β] of standardized width w, reflected into the lower half: [a, b] =
// [α, β], or [−β, −α] where α + β > 0, so a + b ≤ 0.
struct Interval {
  bool flipped;
  float a, b, width;
  LogNdtr at_a, at_b;
  float gap;           // log Φ(a) − log Φ(b) ≤ 0
  float log_mass_gap;  // log(1 − Φ(a)/Φ(b)): log Z = log Φ(b) + this
  bool narrow;
};

template <typename Math>
FASTVAE_HD Interval interval(float alpha, float beta, float width) {
  Interval in;
  in.flipped = alpha + beta > 0.0f;
  in.a = in.flipped ? -beta : alpha;
  in.b = in.flipped ? -alpha : beta;
  in.width = width;
  in.at_a = log_ndtr<Math>(in.a);
  in.at_b = log_ndtr<Math>(in.b);
  // In the lower tail from the width: the ½a², ½b² are never formed.
  in.gap = in.b <= 0.0f ? 0.5f * width * (in.a + in.b) + in.at_a.remainder - in.at_b.remainder
                        : in.at_a.cdf - in.at_b.cdf;
  in.log_mass_gap = Math::log(-Math::expm1(in.gap));
  in.narrow = width * max_of(abs_of(0.5f * (in.a + in.b)), 1.0f) < kNarrowWidth;
  return in;
}

// H(e) = ½x² + log Z at x = b − e on the reflected interval (log q = −½ log 2π − log σ − H).
template <typename Math>
FASTVAE_HD float log_mass_terms(const Interval& in, float e) {
  if (in.narrow) {
    const float mid = 0.5f * (in.a + in.b);
    return Math::log(in.width) - kHalfLog2Pi + 0.5f * (0.5f * in.width - e) * (in.b - e + mid) +
           Math::log1p(in.width * in.width * (mid * mid - 1.0f) / 24.0f);
  }
  if (in.b <= 0.0f) return in.at_b.remainder - 0.5f * e * (2.0f * in.b - e) + in.log_mass_gap;
  const float x = in.b - e;
  return 0.5f * x * x + in.at_b.cdf + in.log_mass_gap;
}

// (S, T) = (∂log Z/∂α + ∂log Z/∂β, α·∂log Z/∂α + β·∂log Z/∂β): ∂log Z/∂β = φ(β)/Z and
// −∂log Z/∂α = φ(α)/Z, e^(−½ log 2π − H) at e = 0 and e = w on the reflected interval (S
// changes sign with the reflection, T does not); for a narrow interval the derivatives of
// its series, as the two densities there nearly cancel.
struct LogMassSlopes {
  float shift, scaling;
};

template <typename Math>
FASTVAE_HD LogMassSlopes log_mass_slopes(const Interval& in) {
  float shift, scaling;
  if (in.narrow) {
    const float mid = 0.5f * (in.a + in.b);
    const float correction =
        in.width * in.width / (12.0f * (1.0f + in.width * in.width * (mid * mid - 1.0f) / 24.0f));
    shift = -mid + correction * mid;
    scaling = 1.0f - mid * mid + correction * (2.0f * mid * mid - 1.0f);
  } else {
    const float density_b = Math::exp(-kHalfLog2Pi - log_mass_terms<Math>(in, 0.0f));
    const float density_a = Math::exp(-kHalfLog2Pi - log_mass_terms<Math>(in, in.width));
    shift = density_b - density_a;
    scaling = density_b * finite_or_zero(in.b) - density_a * finite_or_zero(in.a);
  }
  return LogMassSlopes{in.flipped ? -shift : shift, scaling};
}

// One Newton step on log Φ(b − e) − log Φ(b) = target for the distance e ∈ [0, w] from b ≤ 0:
// the difference is ½e(2b − e) + R(|b − e|) − R(|b|), exact in float32 however deep b lies.
template <typename Math>
FASTVAE_HD float newton_distance(const Interval& in, float e, float target) {
  const float x = in.b - e;
  const float remainder_x = tail_remainder<Math>(abs_of(x));
  const float difference = 0.5f * e * (2.0f * in.b - e) + remainder_x - in.at_b.remainder;
  const float log_mills = -kHalfLog2Pi - remainder_x;
  return clamp_to(e + (difference - target) * Math::exp(-log_mills), 0.0f, in.width);
}

// The standardized sample at uniform u: its distance e from b on the reflected interval,
// and the logs of the weights of b and a.
struct StandardSample {
  float e, log_v, log_1mv;
};

template <typename Math>
FASTVAE_HD StandardSample standard_sample(const Interval& in, float u) {
  const float log_u = Math::log(u);
  const float log_1mu = Math::log1p(-u);
  const float log_v = in.flipped ? log_1mu : log_u;    // the weight of b
  const float log_1mv = in.flipped ? log_u : log_1mu;  // the weight of a
  // First guess: Φ⁻¹ of the smaller of p and 1 − p, both in log space.
  const float log_lower = log_add_exp<Math>(log_1mv + in.at_a.cdf, log_v + in.at_b.cdf);
  const float log_upper = log_add_exp<Math>(log_1mv + in.at_a.sf, log_v + in.at_b.sf);
  const bool lower = log_lower <= log_upper;
  const float root = ndtri_log<Math>(min_of(log_lower, log_upper));
  const float guess = lower ? root : -root;
  float e = clamp_to(in.b - guess, 0.0f, in.width);
  if (in.b <= 0.0f) {
    // In the lower tail, refine e against log(p/Φ(b)) = logaddexp(log v, log(1 − v) + gap).
    const float target = log_add_exp<Math>(log_v, log_1mv + in.gap);
    e = newton_distance<Math>(in, e, target);
    e = newton_distance<Math>(in, e, target);
  }
  return StandardSample{e, log_v, log_1mv};
}

struct TruncatedNormalBounds {
  float low, high;
};

// Everything one element's outputs and gradients are formed from.
struct TruncatedNormalState {
  Interval q, p;
  StandardSample sample;
  float z, x, alpha, beta, scale, inv_scale, prior_inv_scale, prior_loc;
  float log_q, kl;
};

template <typename Math = LibraryMath>
FASTVAE_HD TruncatedNormalState truncated_normal_state(float loc, float log_scale, float prior_loc,
                                                       float prior_log_scale, float u, TruncatedNormalBounds bounds) {
  TruncatedNormalState s;
  const float low = bounds.low, high = bounds.high;
  s.inv_scale = Math::exp(-log_scale);
  s.scale = Math::exp(log_scale);
  s.alpha = (low - loc) * s.inv_scale;
  s.beta = (high - loc) * s.inv_scale;
  s.q = interval<Math>(s.alpha, s.beta, (high - low) * s.inv_scale);
  s.sample = standard_sample<Math>(s.q, u);
  const float e = s.sample.e;
  const float x_reflected = s.q.b - e;
  s.x = s.q.flipped ? -x_reflected : x_reflected;
  // In the lower tail z is measured from the bound next to the sample.
  float z;
  if (s.q.b <= 0.0f) {
    z = s.q.flipped ? low + s.scale * e : high - s.scale * e;
  } else {
    z = loc + s.scale * s.x;
  }
  s.z = clamp_to(z, low, high);
  s.log_q = -kHalfLog2Pi - log_scale - log_mass_terms<Math>(s.q, e);

  s.prior_loc = prior_loc;
  s.prior_inv_scale = Math::exp(-prior_log_scale);
  s.p = interval<Math>((low - prior_loc) * s.prior_inv_scale, (high - prior_loc) * s.prior_inv_scale,
                       (high - low) * s.prior_inv_scale);
  // z's distance from each bound, exact (σ·e) from the bound z was measured from.
  const bool tail = s.q.b <= 0.0f;
  const float from_low = tail && s.q.flipped ? s.scale * e : s.z - low;
  const float from_high = tail && !s.q.flipped ? s.scale * e : high - s.z;
  const float prior_e = max_of((s.p.flipped ? from_low : from_high) * s.prior_inv_scale, 0.0f);
  s.kl = prior_log_scale - log_scale - log_mass_terms<Math>(s.q, e) + log_mass_terms<Math>(s.p, prior_e);
  return s;
}

struct TruncatedNormalGrads {
  float loc, log_scale, prior_loc, prior_log_scale;
};

// Gradients of grad_z·z + grad_log_q·log q + grad_kl·kl.
template <typename Math = LibraryMath>
FASTVAE_HD TruncatedNormalGrads truncated_normal_grads(const TruncatedNormalState& s, float grad_z, float grad_log_q,
                                                       float grad_kl) {
  const float e = s.sample.e, b = s.q.b, width = s.q.width;
  const float a = b - width;
  // ∂x/∂a, ∂x/∂b on the reflected interval: φ(b)/φ(x) = e^(−½e(2b − e)), φ(a)/φ(x) =
  // e^(½(w − e)(b − e + a)); mapped back to α and β.
  const float d_b = Math::exp(s.sample.log_v - 0.5f * e * (2.0f * b - e));
  const float d_a = Math::exp(s.sample.log_1mv + 0.5f * (width - e) * (b - e + a));
  const float d_alpha = s.q.flipped ? d_b : d_a;
  const float d_beta = s.q.flipped ? d_a : d_b;
  // x − α and x − β from e (exact); 0·inf avoided where a gradient is 0.
  const float x_minus_alpha = s.q.flipped ? e : width - e;
  const float x_minus_beta = s.q.flipped ? e - width : -e;
  const float dz_dloc = 1.0f - d_alpha - d_beta;
  const float dz_dlog_scale = s.scale * ((d_alpha == 0.0f ? 0.0f : d_alpha * x_minus_alpha) +
                                         (d_beta == 0.0f ? 0.0f : d_beta * x_minus_beta) + dz_dloc * s.x);
  // log q = −½ log 2π − log σ − ½x² − log Z(α, β), α = (low − loc)/σ, β = (high − loc)/σ.
  const LogMassSlopes q_slopes = log_mass_slopes<Math>(s.q);
  const float dlq_dloc = (s.x * (d_alpha + d_beta) + q_slopes.shift) * s.inv_scale;
  const float dlq_dlog_scale =
      -1.0f + s.x * (d_alpha * finite_or_zero(s.alpha) + d_beta * finite_or_zero(s.beta)) + q_slopes.scaling;
  // log p likewise in y = (z − prior_loc)/σ_p, with z's own derivative.
  const LogMassSlopes p_slopes = log_mass_slopes<Math>(s.p);
  const float prior_y = (s.z - s.prior_loc) * s.prior_inv_scale;
  const float dlp_dz = -prior_y * s.prior_inv_scale;
  const float dlp_dprior_loc = (prior_y + p_slopes.shift) * s.prior_inv_scale;
  const float dlp_dprior_log_scale = -1.0f + prior_y * prior_y + p_slopes.scaling;
  return TruncatedNormalGrads{
      grad_z * dz_dloc + grad_log_q * dlq_dloc + grad_kl * (dlq_dloc - dlp_dz * dz_dloc),
      grad_z * dz_dlog_scale + grad_log_q * dlq_dlog_scale + grad_kl * (dlq_dlog_scale - dlp_dz * dz_dlog_scale),
      -grad_kl * dlp_dprior_loc,
      -grad_kl * dlp_dprior_log_scale,
  };
}

}  // namespace truncated_normal
}  // namespace fastvae
