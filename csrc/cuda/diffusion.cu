// diffuse and diffusion_loss on CUDA: one pass forward and one backward over the [B, N]
// data, with the per-element math of fastvae/diffusion.h and ε regenerated from (seed,
// base offset) wherever it is needed, never stored.
//
// As csrc/cuda/location_scale.cu: each warp takes one (row, chunk of kDiffusionChunk
// columns) task; lane l handles the four columns chunk·128 + 4l + (0..3), read and written
// as one vector where alignment allows.  A chunk's Σ(ε − ε̂)² and ∂γ are reduced inside the
// warp in a fixed butterfly order and written as one partial per chunk, which the launcher
// adds in float64 (fastvae/row_sums.py): no atomics, bitwise repeatable.  γ and the weight
// are one value per row, read by their dtype code (fastvae::diffusion::load_as_float), so
// only the [B, N] tensors' dtypes are template arguments.  Indices are int64 throughout.
#include "fastvae/diffusion_args.h"
#include "fastvae/dispatch.h"
#include "fastvae/philox.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

namespace df = ::fastvae::diffusion;

constexpr int kWarpsPerBlock = 8;
static_assert(kDiffusionChunk / kWarpSize == kQuad, "a lane takes one quad of its chunk");

__device__ __forceinline__ float noise_at(const int64_t* seed_offset, int64_t index) {
  return philox_normal(static_cast<uint64_t>(seed_offset[0]),
                       static_cast<uint64_t>(seed_offset[1]) + static_cast<uint64_t>(index));
}

template <typename X, typename Z>
__global__ void diffuse_forward_kernel(DiffuseForwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns) || columns.count == 0) return;
  const df::Scales scales = df::scales(df::load_as_float(args.gamma, args.gamma_dtype, columns.row));
  float x_values[kQuad], z_values[kQuad];
  load_quad(static_cast<const X*>(args.x), columns.index, columns.count, vector, x_values);
#pragma unroll
  for (int e = 0; e < kQuad; ++e) {
    z_values[e] = e < columns.count ? df::diffuse(x_values[e], noise_at(args.seed_offset, columns.index + e), scales)
                                    : 0.0f;
  }
  store_quad(static_cast<Z*>(args.z), columns.index, columns.count, vector, z_values);
}

// grad_x = α·grad_z, and (grad_gamma given) the chunk's Σ grad_z·(∂α/∂γ·x + ∂σ/∂γ·ε).
template <typename X, typename G>
__global__ void diffuse_backward_kernel(DiffuseBackwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns)) return;
  const df::Scales scales = df::scales(df::load_as_float(args.gamma, args.gamma_dtype, columns.row));
  const bool gamma_grad = args.grad_gamma != nullptr;
  float gamma_sum = 0.0f;
  if (columns.count > 0) {  // lanes past the row's end still join the warp's sum below
    float grad_z_values[kQuad], grad_x_values[kQuad];
    load_quad(static_cast<const G*>(args.grad_z), columns.index, columns.count, vector, grad_z_values);
    if (gamma_grad) {
      const df::Slopes slopes = df::slopes(scales);
      float x_values[kQuad];
      load_quad(static_cast<const X*>(args.x), columns.index, columns.count, vector, x_values);
#pragma unroll
      for (int e = 0; e < kQuad; ++e) {
        if (e < columns.count) {
          gamma_sum += df::gamma_grad_term(grad_z_values[e], x_values[e],
                                           noise_at(args.seed_offset, columns.index + e), slopes);
        }
      }
    }
    if (args.grad_x) {
#pragma unroll
      for (int e = 0; e < kQuad; ++e) grad_x_values[e] = scales.alpha * grad_z_values[e];
      store_quad(static_cast<X*>(args.grad_x), columns.index, columns.count, vector, grad_x_values);
    }
  }
  if (gamma_grad) {
    gamma_sum = warp_sum(gamma_sum);
    if (threadIdx.x % kWarpSize == 0) args.grad_gamma[columns.row * args.row_partials + columns.chunk] = gamma_sum;
  }
}

// The chunk's Σ(ε − ε̂)² and ½·w·Σ(ε − ε̂)².
template <typename E>
__global__ void diffusion_loss_forward_kernel(DiffusionLossForwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns)) return;
  float sum = 0.0f;
  if (columns.count > 0) {
    float eps_hat_values[kQuad];
    load_quad(static_cast<const E*>(args.eps_hat), columns.index, columns.count, vector, eps_hat_values);
#pragma unroll
    for (int e = 0; e < kQuad; ++e) {
      if (e < columns.count) sum += df::squared_error(noise_at(args.seed_offset, columns.index + e), eps_hat_values[e]);
    }
  }
  sum = warp_sum(sum);
  if (threadIdx.x % kWarpSize == 0) {
    const int64_t partial = columns.row * args.row_partials + columns.chunk;
    if (args.squared_error) args.squared_error[partial] = sum;
    if (args.loss) args.loss[partial] = 0.5f * df::load_as_float(args.weight, args.weight_dtype, columns.row) * sum;
  }
}

// grad_eps_hat = grad_loss·w·(ε̂ − ε).
template <typename E>
__global__ void diffusion_loss_backward_kernel(DiffusionLossBackwardArgs args, int64_t chunks_per_row, bool vector) {
  LaneColumns columns;
  if (!lane_columns<kWarpsPerBlock>(args.batch, args.features, chunks_per_row, columns) || columns.count == 0) return;
  const float scale = args.grad_loss[columns.row] * df::load_as_float(args.weight, args.weight_dtype, columns.row);
  float eps_hat_values[kQuad], grad_values[kQuad];
  load_quad(static_cast<const E*>(args.eps_hat), columns.index, columns.count, vector, eps_hat_values);
#pragma unroll
  for (int e = 0; e < kQuad; ++e) {
    grad_values[e] = e < columns.count ? df::noise_prediction_grad(noise_at(args.seed_offset, columns.index + e),
                                                                   eps_hat_values[e], scale)
                                       : 0.0f;
  }
  store_quad(static_cast<E*>(args.grad_eps_hat), columns.index, columns.count, vector, grad_values);
}

// The grid of a call: one warp per (row, chunk) task.
struct Grid {
  int64_t chunks_per_row, blocks;
};

Grid grid_for(int64_t batch, int64_t features) {
  const int64_t chunks_per_row = ceil_div(features, kDiffusionChunk);
  return Grid{chunks_per_row, ceil_div(batch * chunks_per_row, kWarpsPerBlock)};
}

constexpr int kThreads = kWarpsPerBlock * kWarpSize;

}  // namespace

void diffuse_forward(const DiffuseForwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0) return;
  const unsigned int blocks = grid_size(grid.blocks, "diffuse_fwd");
  FASTVAE_DISPATCH(args.x_dtype, "diffuse_fwd", X, [&] {
    FASTVAE_DISPATCH(args.z_dtype, "diffuse_fwd", Z, [&] {
      const bool vector = quads_aligned(args.features, {{args.x, sizeof(X)}, {args.z, sizeof(Z)}});
      diffuse_forward_kernel<X, Z><<<blocks, kThreads, 0, stream>>>(args, grid.chunks_per_row, vector);
    });
  });
  check_launch("diffuse_fwd");
}

void diffuse_backward(const DiffuseBackwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0 || (!args.grad_x && !args.grad_gamma)) return;
  const unsigned int blocks = grid_size(grid.blocks, "diffuse_bwd");
  FASTVAE_DISPATCH(args.x_dtype, "diffuse_bwd", X, [&] {
    FASTVAE_DISPATCH(args.grad_z_dtype, "diffuse_bwd", G, [&] {
      const bool vector = quads_aligned(
          args.features, {{args.grad_z, sizeof(G)}, {args.grad_gamma ? args.x : nullptr, sizeof(X)},
                          {args.grad_x, sizeof(X)}});
      diffuse_backward_kernel<X, G><<<blocks, kThreads, 0, stream>>>(args, grid.chunks_per_row, vector);
    });
  });
  check_launch("diffuse_bwd");
}

void diffusion_loss_forward(const DiffusionLossForwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0 || (!args.loss && !args.squared_error)) return;
  const unsigned int blocks = grid_size(grid.blocks, "diffusion_loss_fwd");
  FASTVAE_DISPATCH(args.eps_hat_dtype, "diffusion_loss_fwd", E, [&] {
    const bool vector = quads_aligned(args.features, {{args.eps_hat, sizeof(E)}});
    diffusion_loss_forward_kernel<E><<<blocks, kThreads, 0, stream>>>(args, grid.chunks_per_row, vector);
  });
  check_launch("diffusion_loss_fwd");
}

void diffusion_loss_backward(const DiffusionLossBackwardArgs& args, cudaStream_t stream) {
  const Grid grid = grid_for(args.batch, args.features);
  if (grid.blocks == 0 || !args.grad_eps_hat) return;
  const unsigned int blocks = grid_size(grid.blocks, "diffusion_loss_bwd");
  FASTVAE_DISPATCH(args.eps_hat_dtype, "diffusion_loss_bwd", E, [&] {
    const bool vector = quads_aligned(args.features, {{args.eps_hat, sizeof(E)}, {args.grad_eps_hat, sizeof(E)}});
    diffusion_loss_backward_kernel<E><<<blocks, kThreads, 0, stream>>>(args, grid.chunks_per_row, vector);
  });
  check_launch("diffusion_loss_bwd");
}

}  // namespace cuda
}  // namespace fastvae
