// Per-element math of the discrete latent family, shared by the CUDA kernels and the CPU
// loops: Gumbel-softmax sampling (soft, or straight-through hard), the analytic KL of
// Cat(softmax(x)) from Cat(softmax(u)), and their gradients.  Each formula is written in
// the order kernels/discrete.py evaluates it, so every backend rounds alike (and a hard
// sample picks the same category).
//
// The logits are viewed as an [R, C] matrix, one categorical variable per row; a row's
// softmax is built from two row statistics, its maximum and Σ exp(v − max).
#pragma once

#include "fastvae/common.h"
#include "fastvae/philox.h"

namespace fastvae {

// A prior broadcast to the [R, C] view through strides: row r is (r / size1, r % size1)
// over two collapsed row dimensions (fastvae/layout.py's categorical_prior_layout).
struct CategoricalPriorLayout {
  int64_t stride0, stride1, stride_c, size1;
};

// Where row `row` of the broadcast prior starts; its category c is at + c·stride_c.
FASTVAE_HD int64_t categorical_prior_row(const CategoricalPriorLayout& layout, int64_t row) {
  return (row / layout.size1) * layout.stride0 + (row % layout.size1) * layout.stride1;
}

FASTVAE_HD bool is_nan(float value) { return value != value; }

// s = (x + g)/τ: the logit perturbed by the Gumbel noise g of Philox offset `offset`
// (base + the element's index in the [R, C] view, the same offset in forward and backward).
FASTVAE_HD float gumbel_perturbed(float logit, float tau, uint64_t seed, uint64_t offset) {
  return (logit + philox_gumbel(seed, offset)) / tau;
}

// softmax(v) = exp(v − max) / Σ exp(v − max), from the row's max and that sum.
FASTVAE_HD float softmax_probability(float value, float row_max, float row_total) {
  return expf(value - row_max) / row_total;
}

// log softmax(v) = (v − max) − log Σ exp(v − max), from the row's max and the log of that sum.
FASTVAE_HD float log_softmax_value(float value, float row_max, float log_row_total) {
  return (value - row_max) - log_row_total;
}

// The straight-through sample of the argmax category, one_hot − y + y as the reference
// writes it: 1 up to rounding.  Elsewhere (0 − y) + y is exactly 0 for any finite y, so
// the kernels store 0 there without recomputing y; a row with NaN is NaN throughout.
FASTVAE_HD float straight_through_at_argmax(float y) { return (1.0f - y) + y; }

// A running argmax: the greatest value, the lowest index among equal ones (torch.argmax's
// and tl.argmax's choice), so hard samples agree across backends.
struct ArgMax {
  float value;
  int64_t index;
};

FASTVAE_HD ArgMax argmax_none() { return ArgMax{-INFINITY, INT64_MAX}; }

FASTVAE_HD ArgMax argmax_combine(ArgMax best, ArgMax candidate) {
  const bool better = candidate.value > best.value || (candidate.value == best.value && candidate.index < best.index);
  return better ? candidate : best;
}

// Gradient through y = softmax(s), s = (x + g)/τ: the softmax's vector-Jacobian product
// y·(grad_z − Σ grad_z·y), then the 1/τ.
FASTVAE_HD float gumbel_softmax_grad(float y, float grad_z, float dot, float tau) {
  return (y * (grad_z - dot)) / tau;
}

// ∂KL/∂x_j = p_j·((log p_j − log q_j) − KL), times the incoming gradient.
FASTVAE_HD float categorical_kl_logit_grad(float p, float log_ratio, float kl, float grad_kl) {
  return grad_kl * (p * (log_ratio - kl));
}

// ∂KL/∂u_j = q_j − p_j (u the prior logits), times the incoming gradient.
FASTVAE_HD float categorical_kl_prior_grad(float p, float q, float grad_kl) { return grad_kl * (q - p); }

}  // namespace fastvae
