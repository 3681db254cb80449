// Gaussian latent family on CUDA: reparameterized sampling fused with the KL, forward and
// backward, one pass each over the [B, N] view of the latent.
//
// Each warp takes one (row, chunk of kLatentChunk columns) task; lane l handles columns
// chunk·128 + l + 32·e (e = 0..3), so loads are coalesced.  A row's KL is reduced inside
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

template <typename T, typename P>
__global__ void latent_forward_kernel(LatentForwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (task >= args.batch * chunks_per_row) return;  // the whole warp shares the task
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  T* z = static_cast<T*>(args.z);
  const uint64_t seed = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  float row_kl = 0.0f;
#pragma unroll
  for (int e = 0; e < kElementsPerLane; ++e) {
    const int64_t col = chunk * kLatentChunk + e * kWarpSize + lane;
    if (col >= args.features) break;
    const int64_t index = row * args.features + col;
    const float mu_value = to_float(mu[index]);
    const float logvar_value = to_float(logvar[index]);
    if (z) {
      const float eps = philox_normal(seed, base + static_cast<uint64_t>(index));
      z[index] = from_float<T>(mu_value + expf(0.5f * logvar_value) * eps);
    }
    if (args.kl_mode == kKLNone) continue;
    const float prior_mu_value =
        prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, row, col)]) : 0.0f;
    const float prior_logvar_value =
        prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, row, col)]) : 0.0f;
    const float kl = gaussian_kl(mu_value, logvar_value, prior_mu_value, prior_logvar_value);
    if (args.kl_mode == kKLElement) {
      args.kl[index] = kl;
    } else {
      row_kl += kl;
    }
  }
  if (args.kl_mode == kKLRow) {
    row_kl = warp_sum(row_kl);
    if (lane == 0) args.kl[row * args.row_partials + chunk] = row_kl;
  }
}

template <typename T, typename P>
__global__ void latent_backward_kernel(LatentBackwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (task >= args.batch * chunks_per_row) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_mu = static_cast<T*>(args.grad_mu);
  T* grad_logvar = static_cast<T*>(args.grad_logvar);
  const uint64_t seed = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = args.seed_offset ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  const float row_grad_kl = (args.grad_kl && !args.grad_kl_per_element) ? args.grad_kl[row] : 0.0f;
#pragma unroll
  for (int e = 0; e < kElementsPerLane; ++e) {
    const int64_t col = chunk * kLatentChunk + e * kWarpSize + lane;
    if (col >= args.features) break;
    const int64_t index = row * args.features + col;
    const float mu_value = to_float(mu[index]);
    const float logvar_value = to_float(logvar[index]);
    float d_mu = 0.0f, d_logvar = 0.0f;
    if (grad_z) {
      const float upstream = to_float(grad_z[index]);
      const float eps = philox_normal(seed, base + static_cast<uint64_t>(index));
      d_mu += upstream;
      d_logvar += upstream * 0.5f * expf(0.5f * logvar_value) * eps;
    }
    if (args.grad_kl) {
      const float upstream = args.grad_kl_per_element ? args.grad_kl[index] : row_grad_kl;
      const float prior_mu_value =
          prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, row, col)]) : 0.0f;
      const float prior_logvar_value =
          prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, row, col)]) : 0.0f;
      const GaussianKLGrads grads = gaussian_kl_grads(mu_value, logvar_value, prior_mu_value, prior_logvar_value, upstream);
      d_mu += grads.mu;
      d_logvar += grads.logvar;
      if (args.grad_prior_mu) args.grad_prior_mu[index] = grads.prior_mu;
      if (args.grad_prior_logvar) args.grad_prior_logvar[index] = grads.prior_logvar;
    }
    grad_mu[index] = from_float<T>(d_mu);
    grad_logvar[index] = from_float<T>(d_logvar);
  }
}

int64_t blocks_for(int64_t tasks) { return ceil_div(tasks, kWarpsPerBlock); }

}  // namespace

void gaussian_latent_forward(const LatentForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_fwd", P, [&] {
      latent_forward_kernel<T, P><<<grid_size(blocks, "gaussian_latent_fwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(args, chunks_per_row);
    });
  });
  check_launch("gaussian_latent_fwd");
}

void gaussian_latent_backward(const LatentBackwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_bwd", P, [&] {
      latent_backward_kernel<T, P><<<grid_size(blocks, "gaussian_latent_bwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(args, chunks_per_row);
    });
  });
  check_launch("gaussian_latent_bwd");
}

}  // namespace cuda
}  // namespace fastvae
