// Arguments of the diffusion launchers (diffuse, diffusion_loss), shared by the CPU and CUDA
// bindings.  Every [B, N] tensor is contiguous; element (b, n) draws its ε from Philox at
// offset base + b·N + n (fastvae/philox.h's normal, as the Gaussian latent's).  A row sum
// comes back as row_partials partial sums per row, one per chunk of the backend's
// DIFFUSION_ROW_PARTIAL_WIDTH columns, which the launcher adds in float64
// (fastvae/row_sums.py); a row of one chunk is written straight into the [B] output.
#pragma once

#include <cstdint>

#include "fastvae/diffusion.h"

namespace fastvae {

struct DiffuseForwardArgs {
  const void* x;               // [B, N], x_dtype
  const void* gamma;           // [B], gamma_dtype
  const int64_t* seed_offset;  // [2]: seed, base offset
  void* z;                     // [B, N], z_dtype
  int64_t batch, features;
  int x_dtype, gamma_dtype, z_dtype;
};

struct DiffuseBackwardArgs {
  const void* grad_z;          // [B, N], grad_z_dtype
  const void* x;               // [B, N], x_dtype
  const void* gamma;           // [B], gamma_dtype
  const int64_t* seed_offset;  // [2]; read only for grad_gamma
  void* grad_x;                // [B, N], x_dtype; may be null
  float* grad_gamma;           // [B, row_partials]; may be null
  int64_t batch, features, row_partials;
  int grad_z_dtype, x_dtype, gamma_dtype;
};

struct DiffusionLossForwardArgs {
  const void* eps_hat;         // [B, N], eps_hat_dtype
  const int64_t* seed_offset;  // [2]
  const void* weight;          // [B], weight_dtype; read only for loss
  float* loss;                 // [B, row_partials], ½·w·Σ(ε − ε̂)² of each chunk; may be null
  float* squared_error;        // [B, row_partials], Σ(ε − ε̂)² of each chunk; may be null
  int64_t batch, features, row_partials;
  int eps_hat_dtype, weight_dtype;
};

struct DiffusionLossBackwardArgs {
  const float* grad_loss;      // [B]
  const void* eps_hat;         // [B, N], eps_hat_dtype
  const int64_t* seed_offset;  // [2]
  const void* weight;          // [B], weight_dtype
  void* grad_eps_hat;          // [B, N], eps_hat_dtype
  int64_t batch, features;
  int eps_hat_dtype, weight_dtype;
};

}  // namespace fastvae
