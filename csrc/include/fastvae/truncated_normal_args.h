// Arguments of the truncated-normal launchers, shared by the CPU and CUDA bindings.
#pragma once

#include "fastvae/latent.h"
#include "fastvae/truncated_normal.h"

namespace fastvae {

struct TruncatedNormalForwardArgs {
  const void* loc;              // [B, N], dtype
  const void* log_scale;        // [B, N], dtype
  const void* prior_loc;        // broadcast through prior_loc_layout, prior_dtype; may be null
  const void* prior_log_scale;  // broadcast through prior_log_scale_layout, prior_dtype; may be null
  const int64_t* seed_offset;   // [2]: seed, base offset
  void* z;                      // [B, N], dtype
  float* log_q;                 // [B, N] (per_element) or [B, row_partials]
  float* kl;                    // likewise
  int64_t batch, features, row_partials;
  BroadcastLayout prior_loc_layout, prior_log_scale_layout;
  InnerSizes sizes;
  truncated_normal::TruncatedNormalBounds bounds;
  int dtype, prior_dtype;
  bool per_element;
};

struct TruncatedNormalBackwardArgs {
  const void* loc;              // [B, N], dtype
  const void* log_scale;        // [B, N], dtype
  const void* prior_loc;        // as in the forward
  const void* prior_log_scale;
  const int64_t* seed_offset;   // [2]
  const void* grad_z;           // [B, N], dtype; null when z got no gradient
  const float* grad_log_q;      // [B, N] (grad_per_element) or [B]; may be null
  const float* grad_kl;         // likewise
  void* grad_loc;               // [B, N], dtype
  void* grad_log_scale;         // [B, N], dtype
  void* grad_prior_loc;         // [B, N] per element, grad_prior_loc_dtype; may be null
  void* grad_prior_log_scale;   // likewise, grad_prior_log_scale_dtype
  int64_t batch, features;
  BroadcastLayout prior_loc_layout, prior_log_scale_layout;
  InnerSizes sizes;
  truncated_normal::TruncatedNormalBounds bounds;
  int dtype, prior_dtype, grad_prior_loc_dtype, grad_prior_log_scale_dtype;
  bool grad_per_element;
};

}  // namespace fastvae
