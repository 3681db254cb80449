// Reconstruction likelihoods on CUDA (Bernoulli, continuous Bernoulli, Gaussian): one pass
// forward and one backward over the [B, N] view, the backward recomputing everything from
// the inputs, so the forward saves nothing.
//
// Each warp takes one task: kRowsPerTask rows × one chunk of kLikelihoodChunk columns; lane
// l handles the four columns chunk·128 + 4l + (0..3) of each row, loaded as one vector where
// alignment allows (16 bytes of float32), so a warp reads 512 contiguous bytes at once.  A task first
// loads all its inputs (many loads in flight per thread), then computes.  A broadcast
// logvar's inner offset of each column is computed once per task and reused across its
// rows, which keeps the index divisions off the per-element cost.  A row's nll is reduced
// in the warp in a fixed butterfly order and written as one partial per chunk, added by the
// Python launcher in a fixed order: no atomics, bitwise repeatable.  Indices are int64.
#include <type_traits>

#include "fastvae/dispatch.h"
#include "fastvae/likelihood_args.h"
#include "fastvae/likelihood_dispatch.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpsPerBlock * kWarpSize;
constexpr int kElementsPerLane = kLikelihoodChunk / kWarpSize;
constexpr int kRowsPerTask = 4;
static_assert(kElementsPerLane == kQuad, "a lane takes one quad of each row");

// Whether a companion type can hold a gradient (a float x can; 0/1 bytes never need one).
template <typename X>
constexpr bool kFloatTarget = !std::is_same<X, uint8_t>::value;

// One warp's task: rows [row0, row0 + kRowsPerTask) × the columns of `chunk`.
struct WarpTask {
  int64_t row0, chunk;
  int lane;
};

__device__ __forceinline__ bool warp_task(int64_t batch, int64_t chunks_per_row, WarpTask& task) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int64_t row_groups = (batch + kRowsPerTask - 1) / kRowsPerTask;
  if (index >= row_groups * chunks_per_row) return false;  // the whole warp shares the task
  task.row0 = index / chunks_per_row * kRowsPerTask;
  task.chunk = index % chunks_per_row;
  task.lane = threadIdx.x % kWarpSize;
  return true;
}

__device__ __forceinline__ int64_t task_col(const WarpTask& task, int e) {
  return task.chunk * kLikelihoodChunk + static_cast<int64_t>(task.lane) * kQuad + e;
}

// This lane's four columns of `row` in float32, zeros outside the tensor: one vector load
// where alignment allows (`vector`: checked on the host for every row).
template <typename T>
__device__ __forceinline__ void load_lane(const T* data, int64_t row, const WarpTask& task, int64_t batch,
                                          int64_t features, bool vector, float (&out)[kElementsPerLane]) {
  const int64_t first = task_col(task, 0);
  const int64_t left = row < batch ? features - first : 0;
  const int count = left <= 0 ? 0 : (left < kQuad ? static_cast<int>(left) : kQuad);
  load_quad(data, row * features + first, count, vector && count == kQuad, out);
}

template <typename T>
__device__ __forceinline__ float load_or_zero(const T* data, int64_t index, bool valid) {
  return valid ? to_float(data[index]) : 0.0f;
}

// The offset of column col of a tensor broadcast to [B, N], without the batch term, in
// 32-bit arithmetic when the row fits (int64 division is emulated and slow on the GPU).
__device__ __forceinline__ int64_t inner_offset(const BroadcastLayout& layout, const InnerSizes& sizes, int64_t col,
                                                bool narrow) {
  if (narrow) {
    const uint32_t column = static_cast<uint32_t>(col);
    const uint32_t size1 = static_cast<uint32_t>(sizes.size1), size2 = static_cast<uint32_t>(sizes.size2);
    const uint32_t quotient = column / size2;
    const uint32_t i0 = quotient / size1;
    return static_cast<int64_t>(i0) * layout.stride0 + static_cast<int64_t>(quotient - i0 * size1) * layout.stride1 +
           static_cast<int64_t>(column - quotient * size2) * layout.stride2;
  }
  return broadcast_offset(layout, sizes, 0, col);
}

// ---------------------------------------------------------------------------------------
// Bernoulli and continuous Bernoulli
// ---------------------------------------------------------------------------------------

template <typename T, typename X, bool kContinuous>
__global__ void bernoulli_forward_kernel(BernoulliForwardArgs args, int64_t chunks_per_row, bool vector) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* logits = static_cast<const T*>(args.logits);
  const X* x = static_cast<const X*>(args.x);
  float logits_values[kRowsPerTask][kElementsPerLane], x_values[kRowsPerTask][kElementsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    load_lane(logits, task.row0 + r, task, args.batch, args.features, vector, logits_values[r]);
    load_lane(x, task.row0 + r, task, args.batch, args.features, vector, x_values[r]);
  }
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    if (row >= args.batch) break;  // uniform over the warp
    float partial = 0.0f;
#pragma unroll
    for (int e = 0; e < kElementsPerLane; ++e) {
      const int64_t col = task_col(task, e);
      if (col >= args.features) continue;
      const float nll = bernoulli_family_nll<kContinuous>(logits_values[r][e], x_values[r][e]);
      if (args.per_element) {
        args.nll[row * args.features + col] = nll;
      } else {
        partial += nll;
      }
    }
    if (!args.per_element) {
      partial = warp_sum(partial);
      if (task.lane == 0) args.nll[row * args.row_partials + task.chunk] = partial;
    }
  }
}

template <typename T, typename X, bool kContinuous>
__global__ void bernoulli_backward_kernel(BernoulliBackwardArgs args, int64_t chunks_per_row, bool vector) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* logits = static_cast<const T*>(args.logits);
  const X* x = static_cast<const X*>(args.x);
  T* grad_logits = static_cast<T*>(args.grad_logits);
  X* grad_x = static_cast<X*>(args.grad_x);
  float logits_values[kRowsPerTask][kElementsPerLane], x_values[kRowsPerTask][kElementsPerLane];
  float upstream[kRowsPerTask][kElementsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    const float row_grad = load_or_zero(args.grad_nll, row, !args.grad_per_element && row < args.batch);
    load_lane(logits, row, task, args.batch, args.features, vector, logits_values[r]);
    // Only d/dl reads x.
    load_lane(x, grad_logits ? row : args.batch, task, args.batch, args.features, vector, x_values[r]);
    if (args.grad_per_element) {
      load_lane(args.grad_nll, row, task, args.batch, args.features, vector, upstream[r]);
    } else {
#pragma unroll
      for (int e = 0; e < kElementsPerLane; ++e) upstream[r][e] = row_grad;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    if (row >= args.batch) break;
#pragma unroll
    for (int e = 0; e < kElementsPerLane; ++e) {
      const int64_t col = task_col(task, e), index = row * args.features + col;
      if (col >= args.features) continue;
      if (grad_logits) {
        const float d_logits = bernoulli_family_logits_grad<kContinuous>(logits_values[r][e], x_values[r][e]);
        grad_logits[index] = from_float<T>(upstream[r][e] * d_logits);
      }
      if constexpr (kFloatTarget<X>) {
        // A soft target's gradient: d/dx = −l (log C does not depend on x).
        if (grad_x) grad_x[index] = from_float<X>(-upstream[r][e] * logits_values[r][e]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Gaussian
// ---------------------------------------------------------------------------------------

// The logvar of each (row, column) of a task: a number, or a tensor broadcast through
// strides, its inner offsets computed once per task.
template <typename L>
__device__ __forceinline__ void load_logvar(const L* logvar, float logvar_value, const BroadcastLayout& layout,
                                            const InnerSizes& sizes, int64_t batch, int64_t features,
                                            const WarpTask& task, float (&values)[kRowsPerTask][kElementsPerLane]) {
  if (!logvar) {
#pragma unroll
    for (int r = 0; r < kRowsPerTask; ++r)
#pragma unroll
      for (int e = 0; e < kElementsPerLane; ++e) values[r][e] = logvar_value;
    return;
  }
  const bool narrow = features <= static_cast<int64_t>(UINT32_MAX);
  int64_t offsets[kElementsPerLane];
#pragma unroll
  for (int e = 0; e < kElementsPerLane; ++e) {
    const int64_t col = task_col(task, e);
    offsets[e] = col < features ? inner_offset(layout, sizes, col, narrow) : 0;
  }
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
#pragma unroll
    for (int e = 0; e < kElementsPerLane; ++e) {
      const bool valid = row < batch && task_col(task, e) < features;
      values[r][e] = load_or_zero(logvar, row * layout.stride_b + offsets[e], valid);
    }
  }
}

template <typename T, typename X, typename L>
__global__ void gaussian_forward_kernel(GaussianNLLForwardArgs args, int64_t chunks_per_row, bool vector) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* mean = static_cast<const T*>(args.mean);
  const X* x = static_cast<const X*>(args.x);
  float mean_values[kRowsPerTask][kElementsPerLane], x_values[kRowsPerTask][kElementsPerLane];
  float logvar_values[kRowsPerTask][kElementsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    load_lane(mean, task.row0 + r, task, args.batch, args.features, vector, mean_values[r]);
    load_lane(x, task.row0 + r, task, args.batch, args.features, vector, x_values[r]);
  }
  load_logvar(static_cast<const L*>(args.logvar), args.logvar_value, args.logvar_layout, args.sizes, args.batch,
              args.features, task, logvar_values);
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    if (row >= args.batch) break;
    float partial = 0.0f;
#pragma unroll
    for (int e = 0; e < kElementsPerLane; ++e) {
      const int64_t col = task_col(task, e);
      if (col >= args.features) continue;
      const float nll = gaussian_nll(mean_values[r][e], x_values[r][e], logvar_values[r][e]);
      if (args.per_element) {
        args.nll[row * args.features + col] = nll;
      } else {
        partial += nll;
      }
    }
    if (!args.per_element) {
      partial = warp_sum(partial);
      if (task.lane == 0) args.nll[row * args.row_partials + task.chunk] = partial;
    }
  }
}

template <typename T, typename X, typename L>
__global__ void gaussian_backward_kernel(GaussianNLLBackwardArgs args, int64_t chunks_per_row, bool vector) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* mean = static_cast<const T*>(args.mean);
  const X* x = static_cast<const X*>(args.x);
  T* grad_mean = static_cast<T*>(args.grad_mean);
  X* grad_x = static_cast<X*>(args.grad_x);
  L* grad_logvar = static_cast<L*>(args.grad_logvar);
  float mean_values[kRowsPerTask][kElementsPerLane], x_values[kRowsPerTask][kElementsPerLane];
  float logvar_values[kRowsPerTask][kElementsPerLane], upstream[kRowsPerTask][kElementsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    const float row_grad = load_or_zero(args.grad_nll, row, !args.grad_per_element && row < args.batch);
    load_lane(mean, row, task, args.batch, args.features, vector, mean_values[r]);
    load_lane(x, row, task, args.batch, args.features, vector, x_values[r]);
    if (args.grad_per_element) {
      load_lane(args.grad_nll, row, task, args.batch, args.features, vector, upstream[r]);
    } else {
#pragma unroll
      for (int e = 0; e < kElementsPerLane; ++e) upstream[r][e] = row_grad;
    }
  }
  load_logvar(static_cast<const L*>(args.logvar), args.logvar_value, args.logvar_layout, args.sizes, args.batch,
              args.features, task, logvar_values);
#pragma unroll
  for (int r = 0; r < kRowsPerTask; ++r) {
    const int64_t row = task.row0 + r;
    if (row >= args.batch) break;
#pragma unroll
    for (int e = 0; e < kElementsPerLane; ++e) {
      const int64_t col = task_col(task, e), index = row * args.features + col;
      if (col >= args.features) continue;
      const GaussianNLLGrads grads =
          gaussian_nll_grads(mean_values[r][e], x_values[r][e], logvar_values[r][e], upstream[r][e]);
      if (grad_mean) grad_mean[index] = from_float<T>(grads.mean);
      if (grad_x) grad_x[index] = from_float<X>(grads.x);
      if (grad_logvar) grad_logvar[index] = from_float<L>(grads.logvar);
    }
  }
}

struct Grid {
  int64_t chunks_per_row;
  unsigned int blocks;
};

Grid grid_for(int64_t batch, int64_t features) {
  const int64_t chunks_per_row = ceil_div(features, kLikelihoodChunk);
  const int64_t tasks = ceil_div(batch, kRowsPerTask) * chunks_per_row;
  return Grid{chunks_per_row, static_cast<unsigned int>(ceil_div(tasks, kWarpsPerBlock))};
}

}  // namespace

void bernoulli_nll_forward(const BernoulliForwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "bernoulli_nll_fwd", T, [&] {
    dispatch_companion_dtype<T, true>(args.x_dtype, args.dtype, "bernoulli_nll_fwd", "x", [&](auto x_tag) {
      using X = typename decltype(x_tag)::type;
      const bool vector = quads_aligned(args.features, {{args.logits, sizeof(T)}, {args.x, sizeof(X)}});
      if (args.continuous) {
        bernoulli_forward_kernel<T, X, true><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      } else {
        bernoulli_forward_kernel<T, X, false><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      }
    });
  });
  check_launch("bernoulli_nll_fwd");
}

void bernoulli_nll_backward(const BernoulliBackwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "bernoulli_nll_bwd", T, [&] {
    dispatch_companion_dtype<T, true>(args.x_dtype, args.dtype, "bernoulli_nll_bwd", "x", [&](auto x_tag) {
      using X = typename decltype(x_tag)::type;
      const bool vector = quads_aligned(
          args.features, {{args.logits, sizeof(T)}, {args.x, sizeof(X)},
                          {args.grad_per_element ? args.grad_nll : nullptr, sizeof(float)}});
      if (args.continuous) {
        bernoulli_backward_kernel<T, X, true><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      } else {
        bernoulli_backward_kernel<T, X, false><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      }
    });
  });
  check_launch("bernoulli_nll_bwd");
}

void gaussian_nll_forward(const GaussianNLLForwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_nll_fwd", T, [&] {
    dispatch_companion_dtype<T, false>(args.x_dtype, args.dtype, "gaussian_nll_fwd", "x", [&](auto x_tag) {
      dispatch_companion_dtype<T, false>(args.logvar_dtype, args.dtype, "gaussian_nll_fwd", "logvar", [&](auto logvar_tag) {
        using X = typename decltype(x_tag)::type;
        using L = typename decltype(logvar_tag)::type;
        const bool vector = quads_aligned(args.features, {{args.mean, sizeof(T)}, {args.x, sizeof(X)}});
        gaussian_forward_kernel<T, X, L><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      });
    });
  });
  check_launch("gaussian_nll_fwd");
}

void gaussian_nll_backward(const GaussianNLLBackwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "gaussian_nll_bwd", T, [&] {
    dispatch_companion_dtype<T, false>(args.x_dtype, args.dtype, "gaussian_nll_bwd", "x", [&](auto x_tag) {
      dispatch_companion_dtype<T, false>(args.logvar_dtype, args.dtype, "gaussian_nll_bwd", "logvar", [&](auto logvar_tag) {
        using X = typename decltype(x_tag)::type;
        using L = typename decltype(logvar_tag)::type;
        const bool vector = quads_aligned(
            args.features, {{args.mean, sizeof(T)}, {args.x, sizeof(X)},
                            {args.grad_per_element ? args.grad_nll : nullptr, sizeof(float)}});
        gaussian_backward_kernel<T, X, L><<<grid.blocks, kThreadsPerBlock, 0, stream>>>(args, grid.chunks_per_row, vector);
      });
    });
  });
  check_launch("gaussian_nll_bwd");
}

}  // namespace cuda
}  // namespace fastvae
