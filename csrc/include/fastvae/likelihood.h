// Per-element math of the reconstruction likelihoods, shared by the CUDA kernels and the CPU
// loops: the Bernoulli, continuous Bernoulli and Gaussian negative log-likelihoods and their
// gradients, in the forms of kernels/likelihood.py and fastvae/reference.py.
//
// Every formula takes its elementary functions from a Math policy: LibraryMath, the C/CUDA
// math library's expf, logf, log1pf and expm1f (the CUDA kernels'), by default; the CPU
// loops pass csrc/cpu/vector_math.h's branch-free VectorMath, which the compiler vectorizes
// (a libm call per element keeps a loop scalar).  Branches are selects (both sides computed,
// as the Triton kernels do), so the formulas vectorize too.
#pragma once

#include "fastvae/common.h"

namespace fastvae {

// log 2π and log 2, as fastvae.reference.LOG_2PI and math.log(2).
constexpr float kLog2Pi = 1.8378770664093453f;
constexpr float kLog2 = 0.6931471805599453f;
// fastvae.reference.CB_TAYLOR_THRESHOLD: below it |logits| uses the Taylor series of log C,
// since the closed form cancels as l → 0 (0/0 at l = 0).
constexpr float kCBTaylorThreshold = 0.1f;

// A Bernoulli target given as 0/1 bytes (a uint8 tensor, or a bool one viewed as uint8).
FASTVAE_HD float to_float(uint8_t value) { return static_cast<float>(value); }

// log(1 + e^x) = max(x, 0) + log1p(e^(−|x|)): no overflow for any x; NaN stays NaN.
template <typename Math = LibraryMath>
FASTVAE_HD float softplus(float x) {
  return (x > 0.0f ? x : 0.0f) + Math::log1p(Math::exp(-fabsf(x)));
}

// σ(x) from e^(−|x|), which never overflows.
template <typename Math = LibraryMath>
FASTVAE_HD float sigmoid(float x) {
  const float decay = Math::exp(-fabsf(x));
  return x >= 0.0f ? 1.0f / (1.0f + decay) : decay / (1.0f + decay);
}

// log C(l) of the continuous Bernoulli, C = l / tanh(l/2), written in the logits:
// log|l| − log(1 − e^(−|l|)) + log(1 + e^(−|l|)) (stable for any l), and
// log 2 + l²/12 − 7·l⁴/1440 for |l| < kCBTaylorThreshold.  A NaN l takes the closed form.
template <typename Math = LibraryMath>
FASTVAE_HD float cb_log_normalizer(float logits) {
  const float magnitude = fabsf(logits);
  const bool small = magnitude < kCBTaylorThreshold;
  const float safe = small ? 1.0f : magnitude;  // keeps the discarded side finite
  const float exact = Math::log(safe) - Math::log(-Math::expm1(-safe)) + Math::log1p(Math::exp(-safe));
  const float square = logits * logits;
  const float taylor = kLog2 + square / 12.0f - 7.0f * square * square / 1440.0f;
  return small ? taylor : exact;
}

// d log C / dl = 1/l − 1/sinh(l), with 1/sinh(a) = 2e^(−a) / ((1 − e^(−a))(1 + e^(−a))) for
// a = |l| (odd in l, so l's sign is put back), and the Taylor branch's derivative
// l/6 − 7·l³/360 for |l| < kCBTaylorThreshold.
template <typename Math = LibraryMath>
FASTVAE_HD float cb_log_normalizer_grad(float logits) {
  const float magnitude = fabsf(logits);
  const bool small = magnitude < kCBTaylorThreshold;
  const float safe = small ? 1.0f : magnitude;
  const float decay = Math::exp(-safe);
  const float inverse_sinh = 2.0f * decay / ((-Math::expm1(-safe)) * (1.0f + decay));
  const float exact = 1.0f / safe - inverse_sinh;
  const float taylor = logits / 6.0f - 7.0f * logits * logits * logits / 360.0f;
  return small ? taylor : (logits < 0.0f ? -exact : exact);
}

// −log Bernoulli(x; σ(l)) = softplus(l) − x·l, exact for soft targets x in [0, 1] too; the
// continuous Bernoulli (kContinuous) subtracts log C(l).
template <bool kContinuous, typename Math = LibraryMath>
FASTVAE_HD float bernoulli_family_nll(float logits, float x) {
  const float nll = softplus<Math>(logits) - x * logits;
  return kContinuous ? nll - cb_log_normalizer<Math>(logits) : nll;
}

// d nll / dl = σ(l) − x (− d log C / dl).  (d/dx is −l, for a soft target that needs it.)
template <bool kContinuous, typename Math = LibraryMath>
FASTVAE_HD float bernoulli_family_logits_grad(float logits, float x) {
  const float grad = sigmoid<Math>(logits) - x;
  return kContinuous ? grad - cb_log_normalizer_grad<Math>(logits) : grad;
}

// −log N(x; mean, e^logvar) = ½·(log 2π + logvar + (x − mean)²·e^(−logvar)).
template <typename Math = LibraryMath>
FASTVAE_HD float gaussian_nll(float mean, float x, float logvar) {
  const float diff = x - mean;
  return 0.5f * (kLog2Pi + logvar + diff * diff * Math::exp(-logvar));
}

struct GaussianNLLGrads {
  float mean, x, logvar;
};

// Gradients of grad_nll·nll with respect to mean, x and logvar.
template <typename Math = LibraryMath>
FASTVAE_HD GaussianNLLGrads gaussian_nll_grads(float mean, float x, float logvar, float grad_nll) {
  const float diff = x - mean;
  const float scaled = diff * Math::exp(-logvar);  // (x − mean)·e^(−logvar)
  return GaussianNLLGrads{-grad_nll * scaled, grad_nll * scaled, grad_nll * 0.5f * (1.0f - diff * scaled)};
}

}  // namespace fastvae
