// Truncated-normal latent on CUDA: the sample, log q and the KL estimate in one forward
// pass, every gradient in one backward, with the per-element math of
// fastvae/truncated_normal.h (the CUDA math library's float32 functions).
//
// Each warp takes one (row, chunk of kTruncatedNormalChunk columns) task; lane l handles
// columns chunk·256 + l + 32k, k = 0..7, so a warp's accesses are contiguous.  In row mode
// a lane adds its columns' log q and KL in a fixed order, the warp adds the lanes in a
// fixed butterfly order, and one partial per chunk is written: no atomics, bitwise
// repeatable.  The uniform is regenerated in the backward from (seed, base offset);
// indices are int64 throughout.
#include "fastvae/dispatch.h"
#include "fastvae/philox.h"
#include "fastvae/truncated_normal_args.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

namespace tn = ::fastvae::truncated_normal;

constexpr int kWarpsPerBlock = 4;
constexpr int kColumnsPerLane = kTruncatedNormalChunk / kWarpSize;

struct WarpTask {
  int64_t row, chunk;
  int lane;
};

__device__ __forceinline__ bool warp_task(int64_t batch, int64_t chunks_per_row, WarpTask& task) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (index >= batch * chunks_per_row) return false;  // the whole warp shares the task
  task.row = index / chunks_per_row;
  task.chunk = index % chunks_per_row;
  task.lane = static_cast<int>(threadIdx.x % kWarpSize);
  return true;
}

template <typename P>
__device__ __forceinline__ float prior_value(const void* prior, const BroadcastLayout& layout,
                                             const InnerSizes& sizes, int64_t row, int64_t col) {
  return prior ? to_float(static_cast<const P*>(prior)[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

__device__ __forceinline__ float element_uniform(const int64_t* seed_offset, int64_t index) {
  const float u = philox_uniform(static_cast<uint64_t>(seed_offset[0]),
                                 static_cast<uint64_t>(seed_offset[1]) + static_cast<uint64_t>(index));
  return tn::clamp_to(u, tn::kUniformMin, tn::kUniformMax);
}

template <typename T, typename P>
__global__ void truncated_normal_forward_kernel(TruncatedNormalForwardArgs args, int64_t chunks_per_row) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  T* z = static_cast<T*>(args.z);
  float row_log_q = 0.0f, row_kl = 0.0f;
  for (int k = 0; k < kColumnsPerLane; ++k) {
    const int64_t col = task.chunk * kTruncatedNormalChunk + static_cast<int64_t>(k) * kWarpSize + task.lane;
    if (col >= args.features) break;
    const int64_t index = task.row * args.features + col;
    const tn::TruncatedNormalState s = tn::truncated_normal_state<LibraryMath>(
        to_float(loc[index]), to_float(log_scale[index]),
        prior_value<P>(args.prior_loc, args.prior_loc_layout, args.sizes, task.row, col),
        prior_value<P>(args.prior_log_scale, args.prior_log_scale_layout, args.sizes, task.row, col),
        element_uniform(args.seed_offset, index), args.bounds);
    z[index] = from_float<T>(s.z);
    if (args.per_element) {
      args.log_q[index] = s.log_q;
      args.kl[index] = s.kl;
    } else {
      row_log_q += s.log_q;
      row_kl += s.kl;
    }
  }
  if (!args.per_element) {
    row_log_q = warp_sum(row_log_q);
    row_kl = warp_sum(row_kl);
    if (task.lane == 0) {
      args.log_q[task.row * args.row_partials + task.chunk] = row_log_q;
      args.kl[task.row * args.row_partials + task.chunk] = row_kl;
    }
  }
}

template <typename T, typename P>
__global__ void truncated_normal_backward_kernel(TruncatedNormalBackwardArgs args, int64_t chunks_per_row) {
  WarpTask task;
  if (!warp_task(args.batch, chunks_per_row, task)) return;
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_loc = static_cast<T*>(args.grad_loc);
  T* grad_log_scale = static_cast<T*>(args.grad_log_scale);
  for (int k = 0; k < kColumnsPerLane; ++k) {
    const int64_t col = task.chunk * kTruncatedNormalChunk + static_cast<int64_t>(k) * kWarpSize + task.lane;
    if (col >= args.features) break;
    const int64_t index = task.row * args.features + col;
    const int64_t grad_index = args.grad_per_element ? index : task.row;
    const tn::TruncatedNormalState s = tn::truncated_normal_state<LibraryMath>(
        to_float(loc[index]), to_float(log_scale[index]),
        prior_value<P>(args.prior_loc, args.prior_loc_layout, args.sizes, task.row, col),
        prior_value<P>(args.prior_log_scale, args.prior_log_scale_layout, args.sizes, task.row, col),
        element_uniform(args.seed_offset, index), args.bounds);
    const tn::TruncatedNormalGrads grads = tn::truncated_normal_grads<LibraryMath>(
        s, grad_z ? to_float(grad_z[index]) : 0.0f, args.grad_log_q ? args.grad_log_q[grad_index] : 0.0f,
        args.grad_kl ? args.grad_kl[grad_index] : 0.0f);
    grad_loc[index] = from_float<T>(grads.loc);
    grad_log_scale[index] = from_float<T>(grads.log_scale);
    if (args.grad_prior_loc) store_float_as(args.grad_prior_loc, args.grad_prior_loc_dtype, index, grads.prior_loc);
    if (args.grad_prior_log_scale) {
      store_float_as(args.grad_prior_log_scale, args.grad_prior_log_scale_dtype, index, grads.prior_log_scale);
    }
  }
}

}  // namespace

void truncated_normal_forward(const TruncatedNormalForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kTruncatedNormalChunk);
  const int64_t blocks = ceil_div(args.batch * chunks_per_row, kWarpsPerBlock);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "truncated_normal_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "truncated_normal_fwd", P, [&] {
      truncated_normal_forward_kernel<T, P>
          <<<grid_size(blocks, "truncated_normal_fwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(args,
                                                                                                  chunks_per_row);
    });
  });
  check_launch("truncated_normal_fwd");
}

void truncated_normal_backward(const TruncatedNormalBackwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kTruncatedNormalChunk);
  const int64_t blocks = ceil_div(args.batch * chunks_per_row, kWarpsPerBlock);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "truncated_normal_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "truncated_normal_bwd", P, [&] {
      truncated_normal_backward_kernel<T, P>
          <<<grid_size(blocks, "truncated_normal_bwd"), kWarpsPerBlock * kWarpSize, 0, stream>>>(args,
                                                                                                   chunks_per_row);
    });
  });
  check_launch("truncated_normal_bwd");
}

}  // namespace cuda
}  // namespace fastvae
