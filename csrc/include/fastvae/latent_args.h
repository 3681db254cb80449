// Arguments of the Gaussian latent launchers, shared by the CPU and CUDA bindings.
#pragma once

#include "fastvae/latent.h"

namespace fastvae {

enum KLMode : int { kKLNone = 0, kKLElement = 1, kKLRow = 2 };

struct LatentForwardArgs {
  const void* mu;            // [B, N], dtype
  const void* logvar;        // [B, N], dtype
  const void* prior_mu;      // broadcast through prior_mu_layout, prior_dtype; may be null
  const void* prior_logvar;  // broadcast through prior_logvar_layout, prior_dtype; may be null
  const int64_t* seed_offset;  // [2]: seed, base offset
  void* z;                   // [B, N], dtype; null unless sampling
  float* kl;                 // [B, N] (element), [B, row_partials] (row), or null
  int64_t batch, features, row_partials;
  BroadcastLayout prior_mu_layout, prior_logvar_layout;
  InnerSizes sizes;
  int dtype, prior_dtype, kl_mode;
};

struct LatentBackwardArgs {
  const void* mu;            // [B, N], dtype
  const void* logvar;        // [B, N], dtype
  const void* prior_mu;      // as in the forward
  const void* prior_logvar;
  const int64_t* seed_offset;  // [2]
  const void* z;             // [B, N], dtype; when set, dz/dlogvar = (z − mu)/2 is read from the
                             // sample instead of ε regenerated from seed_offset (CPU only)
  const void* grad_z;        // [B, N], dtype; null when z got no gradient
  const float* grad_kl;      // [B, N] or [B]; null when the KL got no gradient
  void* grad_mu;             // [B, N], dtype
  void* grad_logvar;         // [B, N], dtype
  void* grad_prior_mu;       // [B, N] per element, grad_prior_mu_dtype (float32 for a broadcast prior,
                             // whose gradient is summed to its shape in Python); may be null
  void* grad_prior_logvar;   // likewise, grad_prior_logvar_dtype
  int64_t batch, features;
  BroadcastLayout prior_mu_layout, prior_logvar_layout;
  InnerSizes sizes;
  int dtype, prior_dtype, grad_prior_mu_dtype, grad_prior_logvar_dtype;
  bool grad_kl_per_element;
};

}  // namespace fastvae
