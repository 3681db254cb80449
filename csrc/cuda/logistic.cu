// Discretized logistic family on CUDA: the single logistic over [B, N] rows and the mixture
// over [B, P, S] params, forward and backward, with the math of fastvae/logistic.h.
//
// Single logistic: a block of kLogisticThreads threads takes kLogisticChunk columns of one
// row; thread t handles columns t, t + kLogisticThreads, ... of the chunk, so loads are
// coalesced.  Mixture: a thread per pixel, looping over the K components and C channels;
// a block takes kMixtureChunk consecutive pixels of one row, so each parameter slot is read
// coalesced across the block (contiguous params; channels_last ones are read in place
// through their strides).  The mixture backward makes two passes over k: the first finds
// both logsumexps and keeps each component's Σ_c log P_c,k in a per-thread array, the
// second recomputes the component's derivatives (the compiler drops the logarithms it
// does not need) and writes grad_params, each slot once.
//
// Row sums ('batch', 'sum', 'mean'): a block's sum, reduced in a fixed order (warp
// butterflies, then warps in order), is written as one partial per (row, chunk), and
// Python adds the partials in a fixed order.  No atomics: bitwise repeatable.  Indices are
// int64 throughout.
#include <climits>
#include <stdexcept>
#include <string>

#include "fastvae/dispatch.h"
#include "fastvae/logistic_args.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kLogisticThreads = 256;
constexpr int kLogisticColumnsPerThread = kLogisticChunk / kLogisticThreads;
static_assert(kLogisticChunk % kLogisticThreads == 0, "a chunk is a whole number of columns per thread");
constexpr int kMixtureThreads = kMixtureChunk;
static_assert(kMixtureThreads % kWarpSize == 0, "whole warps");

// The sum of `value` over the block, in a fixed order; valid in thread 0.  Every thread of
// the block must call it.
template <int kThreads>
__device__ float block_sum(float value) {
  __shared__ float warp_totals[kThreads / kWarpSize];
  value = warp_sum(value);
  if (threadIdx.x % kWarpSize == 0) warp_totals[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x == 0) {
    for (int warp = 0; warp < kThreads / kWarpSize; ++warp) total += warp_totals[warp];
  }
  return total;
}

// ---------------------------------------------------------------------------------------
// The single logistic
// ---------------------------------------------------------------------------------------

template <typename T, typename X>
__global__ void __launch_bounds__(kLogisticThreads)
    logistic_forward_kernel(LogisticForwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x);
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const T* mean = static_cast<const T*>(args.mean) + row * args.mean_stride_b;
  const T* log_scale = static_cast<const T*>(args.log_scale) + row * args.log_scale_stride_b;
  const X* x = static_cast<const X*>(args.x) + row * args.x_stride_b;
  float partial = 0.0f;
#pragma unroll
  for (int e = 0; e < kLogisticColumnsPerThread; ++e) {
    const int64_t col = chunk * kLogisticChunk + e * kLogisticThreads + threadIdx.x;
    if (col < args.features) {
      const float nll = -discretized_logistic_log_prob(to_float(mean[col]), to_float(log_scale[col]),
                                                       grid_point(x[col], args.grid), args.grid);
      if (args.per_element) {
        args.nll[row * args.features + col] = nll;
      } else {
        partial += nll;
      }
    }
  }
  if (!args.per_element) {  // uniform over the block: every thread reaches block_sum
    const float total = block_sum<kLogisticThreads>(partial);
    if (threadIdx.x == 0) args.nll[row * chunks_per_row + chunk] = total;
  }
}

template <typename T, typename X>
__global__ void __launch_bounds__(kLogisticThreads)
    logistic_backward_kernel(LogisticBackwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x);
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const T* mean = static_cast<const T*>(args.mean) + row * args.mean_stride_b;
  const T* log_scale = static_cast<const T*>(args.log_scale) + row * args.log_scale_stride_b;
  const X* x = static_cast<const X*>(args.x) + row * args.x_stride_b;
  T* grad_mean = static_cast<T*>(args.grad_mean) + row * args.features;
  T* grad_log_scale = static_cast<T*>(args.grad_log_scale) + row * args.features;
  const float row_grad_nll = args.grad_per_element ? 0.0f : args.grad_nll[row];
#pragma unroll
  for (int e = 0; e < kLogisticColumnsPerThread; ++e) {
    const int64_t col = chunk * kLogisticChunk + e * kLogisticThreads + threadIdx.x;
    if (col < args.features) {
      const LogisticLogProbGrads grads = discretized_logistic_log_prob_grads(
          to_float(mean[col]), to_float(log_scale[col]), grid_point(x[col], args.grid), args.grid);
      // nll = −log P.
      const float upstream = args.grad_per_element ? args.grad_nll[row * args.features + col] : row_grad_nll;
      grad_mean[col] = from_float<T>(-upstream * grads.mean);
      grad_log_scale[col] = from_float<T>(-upstream * grads.log_scale);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The mixture
// ---------------------------------------------------------------------------------------

template <typename T, typename X, int C>
__global__ void __launch_bounds__(kMixtureThreads)
    mixture_forward_kernel(LogisticMixtureForwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x);
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const int64_t pixel = chunk * kMixtureChunk + threadIdx.x;
  float nll = 0.0f;
  if (pixel < args.pixels) {
    GridPoint points[C];
    load_grid_points<C>(static_cast<const X*>(args.x) + row * args.x_strides.batch + pixel * args.x_strides.spatial,
                        args.x_strides.channel, args.grid, points);
    const T* params_pixel =
        static_cast<const T*>(args.params) + row * args.params_strides.batch + pixel * args.params_strides.spatial;
    // −log p(x) = logsumexp_k(logits) − logsumexp_k(logits + Σ_c log P_c,k).
    StreamingLogSumExp logits = StreamingLogSumExp::empty();
    StreamingLogSumExp joint = StreamingLogSumExp::empty();
    for (int64_t k = 0; k < args.components; ++k) {
      const MixtureComponent<C> component =
          load_mixture_component<C>(params_pixel, args.params_strides.channel, args.components, k);
      logits.add(component.logit);
      joint.add(component.logit + mixture_component_log_prob<C>(component, points, args.grid));
    }
    nll = logits.result() - joint.result();
    if (args.per_pixel) args.nll[row * args.pixels + pixel] = nll;
  }
  if (!args.per_pixel) {  // uniform over the block: every thread reaches block_sum
    const float total = block_sum<kMixtureThreads>(nll);
    if (threadIdx.x == 0) args.nll[row * chunks_per_row + chunk] = total;
  }
}

template <typename T, typename X, int C>
__global__ void __launch_bounds__(kMixtureThreads)
    mixture_backward_kernel(LogisticMixtureBackwardArgs args, int64_t chunks_per_row) {
  const int64_t task = static_cast<int64_t>(blockIdx.x);
  const int64_t row = task / chunks_per_row;
  const int64_t pixel = (task % chunks_per_row) * kMixtureChunk + threadIdx.x;
  if (pixel >= args.pixels) return;
  const int64_t components = args.components;
  GridPoint points[C];
  load_grid_points<C>(static_cast<const X*>(args.x) + row * args.x_strides.batch + pixel * args.x_strides.spatial,
                      args.x_strides.channel, args.grid, points);
  const T* params_pixel =
      static_cast<const T*>(args.params) + row * args.params_strides.batch + pixel * args.params_strides.spatial;
  const int64_t stride_p = args.params_strides.channel;
  T* grad_pixel = static_cast<T*>(args.grad_params) + row * args.grad_strides.batch + pixel * args.grad_strides.spatial;
  const int64_t grad_stride_p = args.grad_strides.channel;
  const float upstream = args.grad_per_pixel ? args.grad_nll[row * args.pixels + pixel] : args.grad_nll[row];

  float joint_values[kMaxMixtureComponents];  // logit_k + Σ_c log P_c,k
  StreamingLogSumExp logits = StreamingLogSumExp::empty();
  StreamingLogSumExp joint = StreamingLogSumExp::empty();
  for (int64_t k = 0; k < components; ++k) {
    const MixtureComponent<C> component = load_mixture_component<C>(params_pixel, stride_p, components, k);
    joint_values[k] = component.logit + mixture_component_log_prob<C>(component, points, args.grid);
    logits.add(component.logit);
    joint.add(joint_values[k]);
  }
  // nll = logsumexp(logits) − logsumexp(logits + Σ_c log P_c): with π = softmax(logits) and
  // the responsibilities r = softmax(logits + Σ_c log P_c), ∂nll/∂logit_k = π_k − r_k and
  // ∂nll/∂log P_c,k = −r_k.
  for (int64_t k = 0; k < components; ++k) {
    const MixtureComponent<C> component = load_mixture_component<C>(params_pixel, stride_p, components, k);
    const MixtureComponentGrads<C> grads = mixture_component_grads<C>(component, points, args.grid);
    const float pi = logits.weight(component.logit);
    const float responsibility = joint.weight(joint_values[k]);
    const float weight = -upstream * responsibility;
    grad_pixel[k * grad_stride_p] = from_float<T>(upstream * (pi - responsibility));
#pragma unroll
    for (int c = 0; c < C; ++c) {
      grad_pixel[MixtureSlots<C>::mean(components, c, k) * grad_stride_p] = from_float<T>(weight * grads.mean[c]);
      grad_pixel[MixtureSlots<C>::log_scale(components, c, k) * grad_stride_p] =
          from_float<T>(weight * grads.log_scale[c]);
      if (C == 3) {
        grad_pixel[MixtureSlots<C>::coefficient(components, c, k) * grad_stride_p] =
            from_float<T>(weight * grads.coefficient[c]);
      }
    }
  }
}

// Blocks of a 1-D grid over (row, chunk) tasks; CUDA's limit on grid.x is 2^31 − 1.
unsigned int grid_blocks(int64_t tasks, const char* kernel) {
  if (tasks > INT_MAX) throw std::invalid_argument(std::string("fastvae ") + kernel + ": too many blocks for one launch");
  return static_cast<unsigned int>(tasks);
}

}  // namespace

void discretized_logistic_forward(const LogisticForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLogisticChunk);
  if (!args.per_element && args.row_partials != chunks_per_row) {
    throw std::invalid_argument("fastvae discretized_logistic_fwd: row_partials must be ceil(features / " +
                                std::to_string(kLogisticChunk) + ")");
  }
  const unsigned int blocks = grid_blocks(args.batch * chunks_per_row, "discretized_logistic_fwd");
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "discretized_logistic_fwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "discretized_logistic_fwd", [&](auto x_type) {
      logistic_forward_kernel<T, decltype(x_type)><<<blocks, kLogisticThreads, 0, stream>>>(args, chunks_per_row);
    });
  });
  check_launch("discretized_logistic_fwd");
}

void discretized_logistic_backward(const LogisticBackwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLogisticChunk);
  const unsigned int blocks = grid_blocks(args.batch * chunks_per_row, "discretized_logistic_bwd");
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "discretized_logistic_bwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "discretized_logistic_bwd", [&](auto x_type) {
      logistic_backward_kernel<T, decltype(x_type)><<<blocks, kLogisticThreads, 0, stream>>>(args, chunks_per_row);
    });
  });
  check_launch("discretized_logistic_bwd");
}

void logistic_mixture_forward(const LogisticMixtureForwardArgs& args, cudaStream_t stream) {
  // The backward kernel recomputes the gradient, as the Triton kernels do.
  if (args.grad_params) {
    throw std::invalid_argument("fastvae logistic_mixture_fwd (cuda): computes no gradient in the forward");
  }
  const int64_t chunks_per_row = ceil_div(args.pixels, kMixtureChunk);
  if (!args.per_pixel && args.pixel_partials != chunks_per_row) {
    throw std::invalid_argument("fastvae logistic_mixture_fwd: pixel_partials must be ceil(pixels / " +
                                std::to_string(kMixtureChunk) + ")");
  }
  const unsigned int blocks = grid_blocks(args.batch * chunks_per_row, "logistic_mixture_fwd");
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "logistic_mixture_fwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "logistic_mixture_fwd", [&](auto x_type) {
      dispatch_mixture_channels(args.channels, "logistic_mixture_fwd", [&](auto channels) {
        mixture_forward_kernel<T, decltype(x_type), decltype(channels)::value>
            <<<blocks, kMixtureThreads, 0, stream>>>(args, chunks_per_row);
      });
    });
  });
  check_launch("logistic_mixture_fwd");
}

void logistic_mixture_backward(const LogisticMixtureBackwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.pixels, kMixtureChunk);
  const unsigned int blocks = grid_blocks(args.batch * chunks_per_row, "logistic_mixture_bwd");
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "logistic_mixture_bwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "logistic_mixture_bwd", [&](auto x_type) {
      dispatch_mixture_channels(args.channels, "logistic_mixture_bwd", [&](auto channels) {
        mixture_backward_kernel<T, decltype(x_type), decltype(channels)::value>
            <<<blocks, kMixtureThreads, 0, stream>>>(args, chunks_per_row);
      });
    });
  });
  check_launch("logistic_mixture_bwd");
}

}  // namespace cuda
}  // namespace fastvae
