// Gaussian latent family on CUDA: reparameterized sampling fused with the KL, forward and
// backward, one pass each over the [B, N] view of the latent.
//
// Each warp takes one (row, chunk of kLatentChunk columns) task; lane l handles the four
// columns chunk·128 + 4l + (0..3), read and written as one vector where alignment allows
// (16 bytes of float32), so a warp's accesses are 512 contiguous bytes.  A row's KL is reduced inside
// the warp in a fixed butterfly order and written as one partial per chunk: no atomics,
// bitwise repeatable.  ε is regenerated in the backward from (seed, base offset), never
// stored; indices are int64 throughout.
#include "fastvae/dispatch.h"
#include "fastvae/latent_args.h"
#include "fastvae/philox.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kElementsPerLane = kLatentChunk / kWarpSize;
static_assert(kElementsPerLane == kQuad, "a lane takes one quad of its chunk");

template <typename T, typename P>
__global__ void latent_forward_kernel(LatentForwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns)) return;
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const uint64_t seed = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  float row_kl = 0.0f;
  if (columns.count > 0) {  // lanes past the row's end still join the warp's sum below
    float mu_values[kQuad], logvar_values[kQuad], z_values[kQuad], kl_values[kQuad];
    load_quad(static_cast<const T*>(args.mu), columns.index, columns.count, vector, mu_values);
    load_quad(static_cast<const T*>(args.logvar), columns.index, columns.count, vector, logvar_values);
#pragma unroll
    for (int e = 0; e < kQuad; ++e) {
      z_values[e] = 0.0f;
      kl_values[e] = 0.0f;
      if (e >= columns.count) continue;
      const int64_t col = columns.first + e;
      if (args.z) {
        const float eps = philox_normal(seed, base + static_cast<uint64_t>(columns.index + e));
        z_values[e] = mu_values[e] + expf(0.5f * logvar_values[e]) * eps;
      }
      if (args.kl_mode == kKLNone) continue;
      const float prior_mu_value =
          prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, columns.row, col)]) : 0.0f;
      const float prior_logvar_value =
          prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, columns.row, col)])
                       : 0.0f;
      kl_values[e] = gaussian_kl(mu_values[e], logvar_values[e], prior_mu_value, prior_logvar_value);
      row_kl += kl_values[e];
    }
    if (args.z) store_quad(static_cast<T*>(args.z), columns.index, columns.count, vector, z_values);
    if (args.kl_mode == kKLElement) store_quad(args.kl, columns.index, columns.count, vector, kl_values);
  }
  if (args.kl_mode == kKLRow) {
    row_kl = warp_sum(row_kl);
    if (threadIdx.x % kWarpSize == 0) args.kl[columns.row * args.row_partials + columns.chunk] = row_kl;
  }
}

template <typename T, typename P>
__global__ void latent_backward_kernel(LatentBackwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns) || columns.count == 0) return;
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const uint64_t seed = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  float mu_values[kQuad], logvar_values[kQuad], grad_z_values[kQuad], grad_kl_values[kQuad];
  float grad_mu_values[kQuad], grad_logvar_values[kQuad];
  load_quad(static_cast<const T*>(args.mu), columns.index, columns.count, vector, mu_values);
  load_quad(static_cast<const T*>(args.logvar), columns.index, columns.count, vector, logvar_values);
  if (args.grad_z) load_quad(static_cast<const T*>(args.grad_z), columns.index, columns.count, vector, grad_z_values);
  if (args.grad_kl && args.grad_kl_per_element) {
    load_quad(args.grad_kl, columns.index, columns.count, vector, grad_kl_values);
  } else {
    const float row_grad_kl = args.grad_kl ? args.grad_kl[columns.row] : 0.0f;
#pragma unroll
    for (int e = 0; e < kQuad; ++e) grad_kl_values[e] = row_grad_kl;
  }
#pragma unroll
  for (int e = 0; e < kQuad; ++e) {
    grad_mu_values[e] = 0.0f;
    grad_logvar_values[e] = 0.0f;
    if (e >= columns.count) continue;
    const int64_t col = columns.first + e;
    const int64_t index = columns.index + e;
    if (args.grad_z) {
      const float eps = philox_normal(seed, base + static_cast<uint64_t>(index));
      grad_mu_values[e] += grad_z_values[e];
      grad_logvar_values[e] += grad_z_values[e] * 0.5f * expf(0.5f * logvar_values[e]) * eps;
    }
    if (args.grad_kl) {
      const float prior_mu_value =
          prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, columns.row, col)]) : 0.0f;
      const float prior_logvar_value =
          prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, columns.row, col)])
                       : 0.0f;
      const GaussianKLGrads grads =
          gaussian_kl_grads(mu_values[e], logvar_values[e], prior_mu_value, prior_logvar_value, grad_kl_values[e]);
      grad_mu_values[e] += grads.mu;
      grad_logvar_values[e] += grads.logvar;
      if (args.grad_prior_mu) store_float_as(args.grad_prior_mu, args.grad_prior_mu_dtype, index, grads.prior_mu);
      if (args.grad_prior_logvar) {
        store_float_as(args.grad_prior_logvar, args.grad_prior_logvar_dtype, index, grads.prior_logvar);
      }
    }
  }
  store_quad(static_cast<T*>(args.grad_mu), columns.index, columns.count, vector, grad_mu_values);
  store_quad(static_cast<T*>(args.grad_logvar), columns.index, columns.count, vector, grad_logvar_values);
}

int64_t blocks_for(int64_t tasks) { return ceil_div(tasks, kWarpsPerBlock); }

}  // namespace

void gaussian_latent_forward(const LatentForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_fwd", T, [&] {
    const bool vector = quads_aligned(args.features, {{args.mu, sizeof(T)}, {args.logvar, sizeof(T)}, {args.z, sizeof(T)},
                                                      {args.kl_mode == kKLElement ? args.kl : nullptr, sizeof(float)}});
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_fwd", P, [&] {
      latent_forward_kernel<T, P><<<grid_size(blocks, "gaussian_latent_fwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(
          args, chunks_per_row, vector);
    });
  });
  check_launch("gaussian_latent_fwd");
}

void gaussian_latent_backward(const LatentBackwardArgs& args, cudaStream_t stream) {
  // On a GPU the op is memory-bound and regenerating ε costs no traffic, while reading z
  // would cost a load per element: this kernel always regenerates.
  if (args.z) throw std::invalid_argument("fastvae gaussian_latent_bwd (cuda): regenerates ε and takes no z");
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_bwd", T, [&] {
    const bool vector = quads_aligned(
        args.features, {{args.mu, sizeof(T)}, {args.logvar, sizeof(T)}, {args.grad_z, sizeof(T)},
                        {args.grad_kl && args.grad_kl_per_element ? args.grad_kl : nullptr, sizeof(float)},
                        {args.grad_mu, sizeof(T)}, {args.grad_logvar, sizeof(T)}});
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_bwd", P, [&] {
      latent_backward_kernel<T, P><<<grid_size(blocks, "gaussian_latent_bwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(
          args, chunks_per_row, vector);
    });
  });
  check_launch("gaussian_latent_bwd");
}

}  // namespace cuda
}  // namespace fastvae
