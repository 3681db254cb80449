// Host helpers of the CUDA launchers: grid sizes, and CUDA errors as exceptions that name
// the kernel.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fastvae {
namespace cuda {

constexpr int kWarpSize = 32;

inline void check_launch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("fastvae._C_cuda: kernel ") + kernel + " failed: " + cudaGetErrorString(error));
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A one-dimensional grid size, refused past the hardware limit rather than truncated.
inline unsigned int grid_size(int64_t blocks, const char* kernel) {
  if (blocks > 2147483647LL) {
    throw std::invalid_argument(std::string("fastvae._C_cuda: kernel ") + kernel + ": " + std::to_string(blocks) +
                                " blocks exceed the grid limit of 2**31 - 1");
  }
  return static_cast<unsigned int>(blocks);
}

// Sum over a warp in a fixed butterfly order: the same result on every run.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

}  // namespace cuda
}  // namespace fastvae
