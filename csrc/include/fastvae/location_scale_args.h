// Arguments of the location-scale latent launchers, shared by the CPU and CUDA bindings.
#pragma once

#include "fastvae/latent_args.h"
#include "fastvae/location_scale.h"

namespace fastvae {

struct LocationScaleForwardArgs {
  const void* loc;              // [B, N], dtype
  const void* log_scale;        // [B, N], dtype
  const void* prior_loc;        // broadcast through prior_loc_layout, prior_dtype; may be null
  const void* prior_log_scale;  // broadcast through prior_log_scale_layout, prior_dtype; may be null
  const int64_t* seed_offset;   // [2]: seed, base offset
  void* z;                      // [B, N], dtype
  float* log_q;                 // [B, N] (kKLElement) or [B, row_partials] (kKLRow)
  float* kl;                    // likewise, by kl_mode
  int64_t batch, features, row_partials;
  BroadcastLayout prior_loc_layout, prior_log_scale_layout;
  InnerSizes sizes;
  int dtype, prior_dtype, family, log_q_mode, kl_mode;  // family: LocationScaleFamily; modes: KLMode
};

struct LocationScaleBackwardArgs {
  const void* loc;              // [B, N], dtype
  const void* log_scale;        // [B, N], dtype
  const void* prior_loc;        // as in the forward
  const void* prior_log_scale;
  const int64_t* seed_offset;   // [2]
  const void* grad_z;           // [B, N], dtype; null when z got no gradient
  const float* grad_log_q;      // [B, N] or [B]; null when log q got no gradient
  const float* grad_kl;         // [B, N] or [B]; null when the KL got no gradient
  void* grad_loc;               // [B, N], dtype
  void* grad_log_scale;         // [B, N], dtype
  void* grad_prior_loc;         // [B, N] per element, grad_prior_loc_dtype (float32 for a broadcast prior,
                                // whose gradient is summed to its shape in Python); may be null
  void* grad_prior_log_scale;   // likewise, grad_prior_log_scale_dtype
  int64_t batch, features;
  BroadcastLayout prior_loc_layout, prior_log_scale_layout;
  InnerSizes sizes;
  int dtype, prior_dtype, grad_prior_loc_dtype, grad_prior_log_scale_dtype, family;
  bool grad_log_q_per_element, grad_kl_per_element;
};

}  // namespace fastvae
