// Location-scale latent family (Laplace, logistic, Cauchy) on CUDA: reparameterized
// sampling fused with log q and the KL, forward and backward, one pass each over the
// [B, N] view of the latent, with the per-element math of fastvae/location_scale.h.
//
// As csrc/cuda/latent.cu: each warp takes one (row, chunk of kLatentChunk columns) task;
// lane l handles the four columns chunk·128 + 4l + (0..3), read and written as one vector
// where alignment allows.  A row's log q and KL are reduced inside the warp in a fixed
// butterfly order and written as one partial per chunk: no atomics, bitwise repeatable.
// The noise is regenerated in the backward from (seed, base offset) where it is needed,
// never stored; indices are int64 throughout.
#include "fastvae/dispatch.h"
#include "fastvae/location_scale_args.h"
#include "fastvae/philox.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
static_assert(kLatentChunk / kWarpSize == kQuad, "a lane takes one quad of its chunk");

template <typename P>
__device__ __forceinline__ float prior_value(const P* prior, const BroadcastLayout& layout, const InnerSizes& sizes,
                                             int64_t row, int64_t col) {
  return prior ? to_float(prior[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

template <int kFamily, typename T, typename P>
__global__ void location_scale_forward_kernel(LocationScaleForwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns)) return;
  const P* prior_loc = static_cast<const P*>(args.prior_loc);
  const P* prior_log_scale = static_cast<const P*>(args.prior_log_scale);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
  float row_log_q = 0.0f, row_kl = 0.0f;
  if (columns.count > 0) {  // lanes past the row's end still join the warp's sums below
    float loc_values[kQuad], log_scale_values[kQuad], z_values[kQuad], log_q_values[kQuad], kl_values[kQuad];
    load_quad(static_cast<const T*>(args.loc), columns.index, columns.count, vector, loc_values);
    load_quad(static_cast<const T*>(args.log_scale), columns.index, columns.count, vector, log_scale_values);
#pragma unroll
    for (int e = 0; e < kQuad; ++e) {
      z_values[e] = log_q_values[e] = kl_values[e] = 0.0f;
      if (e >= columns.count) continue;
      const int64_t col = columns.first + e;
      const float x = location_scale_noise_at<kFamily>(seed, base + static_cast<uint64_t>(columns.index + e));
      const LocationScaleOutputs out = location_scale_element_forward<kFamily>(
          x, loc_values[e], log_scale_values[e],
          prior_value(prior_loc, args.prior_loc_layout, args.sizes, columns.row, col),
          prior_value(prior_log_scale, args.prior_log_scale_layout, args.sizes, columns.row, col));
      z_values[e] = out.z;
      log_q_values[e] = out.log_q;
      kl_values[e] = out.kl;
      row_log_q += out.log_q;
      row_kl += out.kl;
    }
    store_quad(static_cast<T*>(args.z), columns.index, columns.count, vector, z_values);
    if (args.log_q_mode == kKLElement) store_quad(args.log_q, columns.index, columns.count, vector, log_q_values);
    if (args.kl_mode == kKLElement) store_quad(args.kl, columns.index, columns.count, vector, kl_values);
  }
  const int64_t partial = columns.row * args.row_partials + columns.chunk;
  if (args.log_q_mode == kKLRow) {
    row_log_q = warp_sum(row_log_q);
    if (threadIdx.x % kWarpSize == 0) args.log_q[partial] = row_log_q;
  }
  if (args.kl_mode == kKLRow) {
    row_kl = warp_sum(row_kl);
    if (threadIdx.x % kWarpSize == 0) args.kl[partial] = row_kl;
  }
}

template <int kFamily, typename T, typename P>
__global__ void location_scale_backward_kernel(LocationScaleBackwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns) || columns.count == 0) return;
  const P* prior_loc = static_cast<const P*>(args.prior_loc);
  const P* prior_log_scale = static_cast<const P*>(args.prior_log_scale);
  const bool has_grad_z = args.grad_z != nullptr;
  const bool has_grad_kl = args.grad_kl != nullptr;
  const bool needs_noise = backward_needs_noise<kFamily>(has_grad_z, has_grad_kl);
  const uint64_t seed = needs_noise ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = needs_noise ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  float loc_values[kQuad], log_scale_values[kQuad], grad_z_values[kQuad];
  float grad_loc_values[kQuad], grad_log_scale_values[kQuad];
  load_quad(static_cast<const T*>(args.loc), columns.index, columns.count, vector, loc_values);
  load_quad(static_cast<const T*>(args.log_scale), columns.index, columns.count, vector, log_scale_values);
  if (has_grad_z) load_quad(static_cast<const T*>(args.grad_z), columns.index, columns.count, vector, grad_z_values);
#pragma unroll
  for (int e = 0; e < kQuad; ++e) {
    grad_loc_values[e] = grad_log_scale_values[e] = 0.0f;
    if (e >= columns.count) continue;
    const int64_t col = columns.first + e;
    const int64_t index = columns.index + e;
    const float x = needs_noise ? location_scale_noise_at<kFamily>(seed, base + static_cast<uint64_t>(index)) : 0.0f;
    const float grad_log_q =
        args.grad_log_q ? args.grad_log_q[args.grad_log_q_per_element ? index : columns.row] : 0.0f;
    const float grad_kl = has_grad_kl ? args.grad_kl[args.grad_kl_per_element ? index : columns.row] : 0.0f;
    const LocationScaleGrads grads = location_scale_element_backward<kFamily>(
        x, loc_values[e], log_scale_values[e],
        prior_value(prior_loc, args.prior_loc_layout, args.sizes, columns.row, col),
        prior_value(prior_log_scale, args.prior_log_scale_layout, args.sizes, columns.row, col),
        has_grad_z ? grad_z_values[e] : 0.0f, grad_log_q, grad_kl, has_grad_z, has_grad_kl);
    grad_loc_values[e] = grads.loc;
    grad_log_scale_values[e] = grads.log_scale;
    if (args.grad_prior_loc) store_float_as(args.grad_prior_loc, args.grad_prior_loc_dtype, index, grads.prior_loc);
    if (args.grad_prior_log_scale) {
      store_float_as(args.grad_prior_log_scale, args.grad_prior_log_scale_dtype, index, grads.prior_log_scale);
    }
  }
  store_quad(static_cast<T*>(args.grad_loc), columns.index, columns.count, vector, grad_loc_values);
  store_quad(static_cast<T*>(args.grad_log_scale), columns.index, columns.count, vector, grad_log_scale_values);
}

int64_t blocks_for(int64_t tasks) { return ceil_div(tasks, kWarpsPerBlock); }

template <typename T, typename P>
void launch_forward(const LocationScaleForwardArgs& args, int64_t chunks_per_row, int64_t blocks, bool vector,
                    cudaStream_t stream) {
  const unsigned int grid = grid_size(blocks, "location_scale_fwd");
  const int threads = kWarpsPerBlock * kWarpSize;
  if (args.family == kLaplace) {
    location_scale_forward_kernel<kLaplace, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  } else if (args.family == kLogistic) {
    location_scale_forward_kernel<kLogistic, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  } else {
    location_scale_forward_kernel<kCauchy, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  }
}

template <typename T, typename P>
void launch_backward(const LocationScaleBackwardArgs& args, int64_t chunks_per_row, int64_t blocks, bool vector,
                     cudaStream_t stream) {
  const unsigned int grid = grid_size(blocks, "location_scale_bwd");
  const int threads = kWarpsPerBlock * kWarpSize;
  if (args.family == kLaplace) {
    location_scale_backward_kernel<kLaplace, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  } else if (args.family == kLogistic) {
    location_scale_backward_kernel<kLogistic, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  } else {
    location_scale_backward_kernel<kCauchy, T, P><<<grid, threads, 0, stream>>>(args, chunks_per_row, vector);
  }
}

}  // namespace

void location_scale_forward(const LocationScaleForwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "location_scale_fwd", T, [&] {
    const bool vector = quads_aligned(
        args.features, {{args.loc, sizeof(T)}, {args.log_scale, sizeof(T)}, {args.z, sizeof(T)},
                        {args.log_q_mode == kKLElement ? args.log_q : nullptr, sizeof(float)},
                        {args.kl_mode == kKLElement ? args.kl : nullptr, sizeof(float)}});
    FASTVAE_DISPATCH(args.prior_dtype, "location_scale_fwd", P,
                     [&] { launch_forward<T, P>(args, chunks_per_row, blocks, vector, stream); });
  });
  check_launch("location_scale_fwd");
}

void location_scale_backward(const LocationScaleBackwardArgs& args, cudaStream_t stream) {
  const int64_t chunks_per_row = ceil_div(args.features, kLatentChunk);
  const int64_t blocks = blocks_for(args.batch * chunks_per_row);
  if (blocks == 0) return;
  FASTVAE_DISPATCH(args.dtype, "location_scale_bwd", T, [&] {
    const bool vector = quads_aligned(args.features, {{args.loc, sizeof(T)}, {args.log_scale, sizeof(T)},
                                                      {args.grad_z, sizeof(T)}, {args.grad_loc, sizeof(T)},
                                                      {args.grad_log_scale, sizeof(T)}});
    FASTVAE_DISPATCH(args.prior_dtype, "location_scale_bwd", P,
                     [&] { launch_backward<T, P>(args, chunks_per_row, blocks, vector, stream); });
  });
  check_launch("location_scale_bwd");
}

}  // namespace cuda
}  // namespace fastvae
