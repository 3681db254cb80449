// Per-element math of the Gaussian latent family, shared by the CUDA kernels and the CPU
// loops: the KL of N(mu, e^logvar) from N(prior_mu, e^prior_logvar), its gradients, and
// how a prior broadcast to the [B, N] view of the latent is indexed.
#pragma once

#include "fastvae/common.h"

namespace fastvae {

// A prior broadcast to [B, N] through strides: a batch stride and the strides of the
// (up to) three collapsed inner dimensions, whose sizes (size0, size1, size2) are shared
// by both priors (fastvae/layout.py computes them; absent priors have all-zero strides).
struct BroadcastLayout {
  int64_t stride_b, stride0, stride1, stride2;
};

struct InnerSizes {
  int64_t size1, size2;
};

FASTVAE_HD int64_t broadcast_offset(const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row, int64_t col) {
  const int64_t i2 = col % sizes.size2;
  const int64_t i1 = (col / sizes.size2) % sizes.size1;
  const int64_t i0 = col / (sizes.size1 * sizes.size2);
  return row * layout.stride_b + i0 * layout.stride0 + i1 * layout.stride1 + i2 * layout.stride2;
}

// KL = ½·(prior_logvar − logvar + e^(logvar − prior_logvar) + (mu − prior_mu)²·e^(−prior_logvar) − 1)
template <typename Math = LibraryMath>
FASTVAE_HD float gaussian_kl(float mu, float logvar, float prior_mu, float prior_logvar) {
  const float diff = mu - prior_mu;
  return 0.5f *
         (prior_logvar - logvar + Math::exp(logvar - prior_logvar) + diff * diff * Math::exp(-prior_logvar) - 1.0f);
}

struct GaussianKLGrads {
  float mu, logvar, prior_mu, prior_logvar;
};

// Gradients of grad_kl·KL with respect to each of the four inputs.
template <typename Math = LibraryMath>
FASTVAE_HD GaussianKLGrads gaussian_kl_grads(float mu, float logvar, float prior_mu, float prior_logvar, float grad_kl) {
  const float diff = mu - prior_mu;
  const float precision = Math::exp(-prior_logvar);
  const float variance_ratio = Math::exp(logvar - prior_logvar);
  const float d_mu = grad_kl * diff * precision;
  return GaussianKLGrads{
      d_mu,
      grad_kl * 0.5f * (variance_ratio - 1.0f),
      -d_mu,
      grad_kl * 0.5f * (1.0f - variance_ratio - diff * diff * precision),
  };
}

// log N(z; mu, e^logvar) = −½·(log 2π + logvar + (z − mu)²·e^(−logvar))
template <typename Math = LibraryMath>
FASTVAE_HD float gaussian_log_density(float z, float mu, float logvar) {
  const float diff = z - mu;
  return -0.5f * (1.8378770664093453f + logvar + diff * diff * Math::exp(-logvar));
}

}  // namespace fastvae
