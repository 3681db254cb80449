// IWAE family on CUDA: K reparameterized samples fused with their log densities, and the
// log-mean-exp over samples (alone, or of the IWAE log weights), forward and backward, one
// pass each.  Indices are int64 throughout; no float atomics, so results are bitwise
// repeatable.
//
// Sampling forward: the samples are the [K·B, N] rows of z.  Each warp takes one
// (sample row, chunk of kSampleKChunk columns) task, lane l handling columns
// chunk·128 + l + 32·e, so loads are coalesced; a row's log q and log p are reduced in the
// warp in a fixed butterfly order and written as one partial per chunk (added by the
// Python launcher in a fixed order).  Sampling backward: a thread per element of the
// [B, N] latent loops over the K samples, so the gradients of mu, logvar and the priors
// sum in registers in k order.  ε is regenerated from (seed, base offset), never stored.
//
// Log-mean-exp forward: an online max-shifted logsumexp over K per column, with a thread
// per column when a column's neighbours are contiguous (inner >= 32: a warp reads 32
// consecutive columns at each k) or K is small, else a warp per column (its lanes stride
// over k, then merge in a fixed butterfly order).  The backward is elementwise, a thread per element.
#include "fastvae/dispatch.h"
#include "fastvae/iwae.h"
#include "fastvae/iwae_args.h"
#include "fastvae/philox.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpsPerBlock * kWarpSize;
constexpr int kElementsPerLane = kSampleKChunk / kWarpSize;

template <typename P>
__device__ __forceinline__ float prior_value(const P* prior, const BroadcastLayout& layout, const InnerSizes& sizes,
                                             int64_t row, int64_t col) {
  return prior ? to_float(prior[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

// ---------------------------------------------------------------------------------------
// K samples with log q and log p
// ---------------------------------------------------------------------------------------

template <typename T, typename P>
__global__ void sample_k_forward_kernel(SampleKForwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (task >= args.num_samples * args.batch * chunks_per_row) return;  // the whole warp shares the task
  const int lane = threadIdx.x % kWarpSize;
  const int64_t sample_row = task / chunks_per_row;  // k·B + b
  const int64_t chunk = task % chunks_per_row;
  const int64_t row = sample_row % args.batch;
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  T* z = static_cast<T*>(args.z);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
  float row_log_q = 0.0f, row_log_p = 0.0f;
#pragma unroll
  for (int e = 0; e < kElementsPerLane; ++e) {
    const int64_t col = chunk * kSampleKChunk + e * kWarpSize + lane;
    if (col >= args.features) break;
    const int64_t latent_index = row * args.features + col;
    const int64_t sample_index = sample_row * args.features + col;
    const float eps = philox_normal(seed, base + static_cast<uint64_t>(sample_index));
    const SampleLogDensities sample = sample_with_log_densities(
        to_float(mu[latent_index]), to_float(logvar[latent_index]),
        prior_value(prior_mu, args.prior_mu_layout, args.sizes, row, col),
        prior_value(prior_logvar, args.prior_logvar_layout, args.sizes, row, col), eps);
    z[sample_index] = from_float<T>(sample.z);
    row_log_q += sample.log_q;
    row_log_p += sample.log_p;
  }
  row_log_q = warp_sum(row_log_q);
  row_log_p = warp_sum(row_log_p);
  if (lane == 0) {
    args.log_q[sample_row * args.row_partials + chunk] = row_log_q;
    args.log_p[sample_row * args.row_partials + chunk] = row_log_p;
  }
}

template <typename T, typename P>
__global__ void sample_k_backward_kernel(SampleKBackwardArgs args) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  if (index >= args.batch * args.features) return;
  const int64_t row = index / args.features;
  const int64_t col = index % args.features;
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  const bool needs_noise = grad_z || args.grad_log_p;
  const uint64_t seed = needs_noise ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = needs_noise ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  const float mu_value = to_float(mu[index]);
  const float sigma = expf(0.5f * to_float(logvar[index]));
  const float prior_mu_value = prior_value(prior_mu, args.prior_mu_layout, args.sizes, row, col);
  const float prior_precision = expf(-prior_value(prior_logvar, args.prior_logvar_layout, args.sizes, row, col));
  SampleGradSums sums{0.0f, 0.0f, 0.0f, 0.0f};
  float grad_log_q_sum = 0.0f;
  for (int64_t k = 0; k < args.num_samples; ++k) {
    const int64_t sample_row = k * args.batch + row;
    if (args.grad_log_q) grad_log_q_sum += args.grad_log_q[sample_row];
    if (!needs_noise) continue;
    const int64_t sample_index = sample_row * args.features + col;
    const float eps = philox_normal(seed, base + static_cast<uint64_t>(sample_index));
    const float upstream = grad_z ? to_float(grad_z[sample_index]) : 0.0f;
    const float grad_log_p = args.grad_log_p ? args.grad_log_p[sample_row] : 0.0f;
    add_sample_grads(sums, mu_value, sigma, eps, prior_mu_value, prior_precision, upstream,
                     args.grad_log_p != nullptr, grad_log_p);
  }
  static_cast<T*>(args.grad_mu)[index] = from_float<T>(sums.mu);
  static_cast<T*>(args.grad_logvar)[index] = from_float<T>(sums.logvar - 0.5f * grad_log_q_sum);
  if (args.grad_prior_mu) store_float_as(args.grad_prior_mu, args.grad_prior_mu_dtype, index, sums.prior_mu);
  if (args.grad_prior_logvar) {
    store_float_as(args.grad_prior_logvar, args.grad_prior_logvar_dtype, index, sums.prior_logvar);
  }
}

// ---------------------------------------------------------------------------------------
// Log-mean-exp over samples
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ void store_log_mean_exp(const LogMeanExpForwardArgs& args, int64_t column,
                                                   const OnlineLogSumExp& state) {
  const float log_total = logf(state.total);
  args.out[column] = (log_total + state.shift) - args.log_num_samples;
  args.lse_parts[column] = state.shift;
  args.lse_parts[args.columns + column] = log_total;
}

// The first element of column m = o·inner + j: o·K·inner + j; term k is inner further on.
__device__ __forceinline__ int64_t column_start(int64_t column, int64_t num_samples, int64_t inner) {
  return (column / inner) * num_samples * inner + column % inner;
}

// A thread per column.
template <typename T>
__global__ void log_mean_exp_column_kernel(LogMeanExpForwardArgs args) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  if (column >= args.columns) return;
  const T* x = static_cast<const T*>(args.x);
  const T* log_p = static_cast<const T*>(args.log_p);
  const T* log_q = static_cast<const T*>(args.log_q);
  const int64_t start = column_start(column, args.num_samples, args.inner);
  OnlineLogSumExp state = online_logsumexp_start();
  for (int64_t k = 0; k < args.num_samples; ++k) {
    online_logsumexp_add(state, load_log_weight(x, log_p, log_q, start + k * args.inner));
  }
  store_log_mean_exp(args, column, state);
}

// Merge the lanes' partial logsumexps in a fixed butterfly order (the merge is commutative,
// so every lane ends with the same value).
__device__ __forceinline__ OnlineLogSumExp warp_logsumexp(OnlineLogSumExp state) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const OnlineLogSumExp other{__shfl_xor_sync(0xffffffffu, state.max, offset),
                                __shfl_xor_sync(0xffffffffu, state.shift, offset),
                                __shfl_xor_sync(0xffffffffu, state.total, offset)};
    state = online_logsumexp_merge(state, other);
  }
  return state;
}

// A warp per column: lane l takes terms l, l + 32, ...
template <typename T>
__global__ void log_mean_exp_warp_kernel(LogMeanExpForwardArgs args) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (column >= args.columns) return;  // the whole warp shares the column
  const int lane = threadIdx.x % kWarpSize;
  const T* x = static_cast<const T*>(args.x);
  const T* log_p = static_cast<const T*>(args.log_p);
  const T* log_q = static_cast<const T*>(args.log_q);
  const int64_t start = column_start(column, args.num_samples, args.inner);
  OnlineLogSumExp state = online_logsumexp_start();
  for (int64_t k = lane; k < args.num_samples; k += kWarpSize) {
    online_logsumexp_add(state, load_log_weight(x, log_p, log_q, start + k * args.inner));
  }
  state = warp_logsumexp(state);
  if (lane == 0) store_log_mean_exp(args, column, state);
}

template <typename T>
__global__ void log_mean_exp_backward_kernel(LogMeanExpBackwardArgs args) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  if (index >= args.columns * args.num_samples) return;
  // index = (o·K + k)·inner + j, in column m = o·inner + j.
  const int64_t column = (index / (args.num_samples * args.inner)) * args.inner + index % args.inner;
  const float weight =
      log_mean_exp_weight(load_log_weight(static_cast<const T*>(args.x), static_cast<const T*>(args.log_p),
                                          static_cast<const T*>(args.log_q), index),
                          args.lse_parts[column], args.lse_parts[args.columns + column]);
  const float grad = args.grad_out[column] * weight;
  if (args.grad_x) static_cast<T*>(args.grad_x)[index] = from_float<T>(grad);
  if (args.grad_log_p) static_cast<T*>(args.grad_log_p)[index] = from_float<T>(grad);
  if (args.grad_log_q) static_cast<T*>(args.grad_log_q)[index] = from_float<T>(-grad);
}

unsigned int blocks_for(int64_t work, int64_t per_block) { return static_cast<unsigned int>(ceil_div(work, per_block)); }

}  // namespace

void sample_gaussian_k_forward(const SampleKForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kSampleKChunk);
  const unsigned int blocks = blocks_for(args.num_samples * args.batch * chunks_per_row, kWarpsPerBlock);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "sample_gaussian_k_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "sample_gaussian_k_fwd", P, [&] {
      sample_k_forward_kernel<T, P><<<blocks, kThreadsPerBlock, 0, stream>>>(args, chunks_per_row);
    });
  });
  check_launch("sample_gaussian_k_fwd");
}

void sample_gaussian_k_backward(const SampleKBackwardArgs& args, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(args.batch * args.features, kThreadsPerBlock);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "sample_gaussian_k_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "sample_gaussian_k_bwd", P, [&] {
      sample_k_backward_kernel<T, P><<<blocks, kThreadsPerBlock, 0, stream>>>(args);
    });
  });
  check_launch("sample_gaussian_k_bwd");
}

void log_mean_exp_forward(const LogMeanExpForwardArgs& args, cudaStream_t stream) {
  if (args.columns == 0) return;
  // A warp per column pays only when a column is strided (inner < 32) and long enough to
  // give every lane a term; otherwise neighbouring threads read neighbouring columns.
  if (args.inner >= kWarpSize || args.num_samples < kWarpSize) {
    FASTVAE_DISPATCH(args.dtype, "log_mean_exp_fwd", T, [&] {
      log_mean_exp_column_kernel<T><<<blocks_for(args.columns, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(args);
    });
  } else {
    FASTVAE_DISPATCH(args.dtype, "log_mean_exp_fwd", T, [&] {
      log_mean_exp_warp_kernel<T><<<blocks_for(args.columns, kWarpsPerBlock), kThreadsPerBlock, 0, stream>>>(args);
    });
  }
  check_launch("log_mean_exp_fwd");
}

void log_mean_exp_backward(const LogMeanExpBackwardArgs& args, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(args.columns * args.num_samples, kThreadsPerBlock);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "log_mean_exp_bwd", T, [&] {
    log_mean_exp_backward_kernel<T><<<blocks, kThreadsPerBlock, 0, stream>>>(args);
  });
  check_launch("log_mean_exp_bwd");
}

}  // namespace cuda
}  // namespace fastvae
