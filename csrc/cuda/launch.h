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

// Sum over a warp in a fixed butterfly order: the same result on every run.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

}  // namespace cuda
}  // namespace fastvae
