// Arguments of the IWAE launchers, shared by the CPU and CUDA bindings.
//
// Samples: the latent is the [B, N] view of mu (N = every dimension but the batch) and z
// is [K, B, N], read as [K·B, N]: row k·B + b is sample k of data point b, and element i
// of the flattened z is drawn at Philox offset base + i (as kernels/iwae.py).
//
// Log-mean-exp: a contiguous x of shape [outer, K, inner] reduced over K, read as K × M
// columns (M = outer·inner): column m = o·inner + j is the K elements at
// o·K·inner + k·inner + j, so no input is permuted or copied.
#pragma once

#include "fastvae/latent.h"

namespace fastvae {

struct SampleKForwardArgs {
  const void* mu;              // [B, N], dtype
  const void* logvar;          // [B, N], dtype
  const void* prior_mu;        // broadcast through prior_mu_layout, prior_dtype; may be null (0)
  const void* prior_logvar;    // broadcast through prior_logvar_layout, prior_dtype; may be null (0)
  const int64_t* seed_offset;  // [2]: seed, base offset
  void* z;                     // [K, B, N], dtype
  float* log_q;                // [K·B, row_partials]: partial sums of log q over column chunks
  float* log_p;                // [K·B, row_partials]: likewise for log p
  int64_t num_samples, batch, features, row_partials;
  BroadcastLayout prior_mu_layout, prior_logvar_layout;
  InnerSizes sizes;
  int dtype, prior_dtype;
};

struct SampleKBackwardArgs {
  const void* mu;              // [B, N], dtype
  const void* logvar;          // [B, N], dtype
  const void* prior_mu;        // as in the forward
  const void* prior_logvar;
  const int64_t* seed_offset;  // [2]; read when grad_z or grad_log_p is given
  const void* grad_z;          // [K, B, N], dtype; null when z got no gradient
  const float* grad_log_q;     // [K, B]; null when log q got no gradient
  const float* grad_log_p;     // [K, B]; null when log p got no gradient
  void* grad_mu;               // [B, N], dtype: summed over the K samples
  void* grad_logvar;           // [B, N], dtype
  void* grad_prior_mu;         // [B, N], grad_prior_mu_dtype (float32 for a broadcast prior, whose
                               // gradient is summed to its shape in Python); may be null
  void* grad_prior_logvar;     // likewise, grad_prior_logvar_dtype
  int64_t num_samples, batch, features;
  BroadcastLayout prior_mu_layout, prior_logvar_layout;
  InnerSizes sizes;
  int dtype, prior_dtype, grad_prior_mu_dtype, grad_prior_logvar_dtype;
};

struct LogMeanExpForwardArgs {
  const void* x;      // [outer, K, inner], dtype: x, or log p(x|z) when log_p and log_q are given
  const void* log_p;  // [outer, K, inner], dtype: log p(z) of the IWAE log weights; may be null
  const void* log_q;  // [outer, K, inner], dtype: log q(z|x); null exactly when log_p is
  float* out;         // [M]: logsumexp over K − log K
  float* lse_parts;   // [2, M]: the shift, and log Σ_k exp(x − shift), for the backward
  int64_t num_samples, columns, inner;
  float log_num_samples;  // log K
  int dtype;
};

struct LogMeanExpBackwardArgs {
  const void* x;           // as in the forward
  const void* log_p;
  const void* log_q;
  const float* lse_parts;  // [2, M], the forward's
  const float* grad_out;   // [M]
  void* grad_x;            // [outer, K, inner], dtype: grad·softmax_k; may be null
  void* grad_log_p;        // [outer, K, inner], dtype: the same; may be null
  void* grad_log_q;        // [outer, K, inner], dtype: its negative; may be null
  int64_t num_samples, columns, inner;
  int dtype;
};

}  // namespace fastvae
