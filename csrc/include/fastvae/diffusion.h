// Per-element math of the diffusion ops, shared by the CUDA kernels and the CPU loops (and
// written out again in Triton, kernels/diffusion.py): the variance-preserving forward
// process z = α·x + σ·ε at a per-row γ (α² = sigmoid(−γ), σ² = sigmoid(γ)), the squared
// error (ε − ε̂)² of a noise prediction, and the gradients of both.
// fastvae/reference_diffusion.py has the formulas.
#pragma once

#include "fastvae/common.h"

namespace fastvae {
namespace diffusion {

// α, σ and their squares at one γ, in float32.  Each square is a sigmoid of its own
// exponential, never 1 − the other: at γ = −30, σ² = 9.4e-14 would be lost entirely in
// 1 − α².  An exponential past float32's range gives 1/(1 + inf) = 0, so no γ overflows.
struct Scales {
  float alpha, sigma, alpha_squared, sigma_squared;
};

template <typename Math = LibraryMath>
FASTVAE_HD Scales scales(float gamma) {
  const float alpha_squared = 1.0f / (1.0f + Math::exp(gamma));
  const float sigma_squared = 1.0f / (1.0f + Math::exp(-gamma));
  return Scales{Math::sqrt(alpha_squared), Math::sqrt(sigma_squared), alpha_squared, sigma_squared};
}

// ∂α/∂γ = −½·α·σ² and ∂σ/∂γ = ½·σ·α² (d sigmoid(γ)/dγ = α²σ²).
struct Slopes {
  float alpha, sigma;
};

FASTVAE_HD Slopes slopes(const Scales& s) {
  return Slopes{-0.5f * s.alpha * s.sigma_squared, 0.5f * s.sigma * s.alpha_squared};
}

// z = α·x + σ·ε.
FASTVAE_HD float diffuse(float x, float eps, const Scales& s) { return s.alpha * x + s.sigma * eps; }

// One element's term of ∂/∂γ Σ grad_z·z: grad_z·(∂α/∂γ·x + ∂σ/∂γ·ε).
FASTVAE_HD float gamma_grad_term(float grad_z, float x, float eps, const Slopes& d) {
  return grad_z * (d.alpha * x + d.sigma * eps);
}

// (ε − ε̂)².
FASTVAE_HD float squared_error(float eps, float eps_hat) {
  const float error = eps - eps_hat;
  return error * error;
}

// ∂/∂ε̂ of scale·½(ε − ε̂)², scale = the row's grad_loss·w: scale·(ε̂ − ε).
FASTVAE_HD float noise_prediction_grad(float eps, float eps_hat, float scale) { return scale * (eps_hat - eps); }

// data[index] as float32, for a per-row value (γ, a weight) whose dtype code is given per
// call rather than by a template: one value per row, so its dtype multiplies no kernels.
FASTVAE_HD float load_as_float(const void* data, int dtype, int64_t index) {
  if (dtype == kBFloat16) return to_float(static_cast<const bfloat16*>(data)[index]);
  if (dtype == kFloat16) return to_float(static_cast<const float16*>(data)[index]);
  return static_cast<const float*>(data)[index];
}

}  // namespace diffusion
}  // namespace fastvae
