// The CPU launchers, one per kernel of csrc/cuda/ (same names, same argument structs).
#pragma once

#include "fastvae/latent_args.h"

namespace fastvae {
namespace cpu {

void gaussian_latent_forward(const LatentForwardArgs& args);
void gaussian_latent_backward(const LatentBackwardArgs& args);

}  // namespace cpu
}  // namespace fastvae
