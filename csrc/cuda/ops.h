// The CUDA launchers, one per kernel (same names and argument structs as csrc/cpu/ops.h).
#pragma once

#include <cuda_runtime.h>

#include "fastvae/latent_args.h"

namespace fastvae {
namespace cuda {

// Columns each warp covers in the latent kernels; the KL of a row comes back as one
// partial sum per such chunk, added by the Python launcher in a fixed order.
constexpr int kLatentChunk = 128;

void gaussian_latent_forward(const LatentForwardArgs& args, cudaStream_t stream);
void gaussian_latent_backward(const LatentBackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastvae
