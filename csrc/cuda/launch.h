// Host helpers of the CUDA launchers: grid sizes, and CUDA errors as exceptions that name
// the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "fastvae/common.h"

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

// ---------------------------------------------------------------------------------------
// Four consecutive elements per lane, loaded and stored as one vector (16 bytes of float32,
// 8 of a 16-bit type) where alignment allows: a warp then moves 512 contiguous bytes of
// float32 per instruction.
// ---------------------------------------------------------------------------------------

constexpr int kQuad = 4;

template <typename T>
struct alignas(kQuad * sizeof(T)) Quad {
  T value[kQuad];
};

// The kernels over a [B, N] matrix that give each warp one (row, chunk of kWarpSize·kQuad
// = 128 columns) task: lane l takes the four consecutive columns chunk·128 + 4l + (0..3).
struct LaneColumns {
  int64_t row, chunk, first, index;  // first column, and its element index in [B, N]
  int count;                         // how many of the four lie in the row (0..4)
};

// The task of this thread's warp, for blocks of kWarpsPerBlock warps; false past the last
// task (the whole warp shares it).
template <int kWarpsPerBlock>
__device__ __forceinline__ bool lane_columns(int64_t batch, int64_t features, int64_t chunks_per_row,
                                             LaneColumns& columns) {
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (task >= batch * chunks_per_row) return false;
  const int lane = threadIdx.x % kWarpSize;
  columns.row = task / chunks_per_row;
  columns.chunk = task % chunks_per_row;
  columns.first = columns.chunk * (kWarpSize * kQuad) + static_cast<int64_t>(lane) * kQuad;
  columns.index = columns.row * features + columns.first;
  const int64_t left = features - columns.first;
  columns.count = left <= 0 ? 0 : (left < kQuad ? static_cast<int>(left) : kQuad);
  return true;
}

// Whether every row of `features` elements starts four-element aligned in each tensor:
// rows a multiple of four long and each (pointer, element size) pair aligned to four
// elements.  Null pointers (absent tensors) pass.
inline bool quads_aligned(int64_t features, std::initializer_list<std::pair<const void*, size_t>> tensors) {
  if (features % kQuad != 0) return false;
  for (const auto& tensor : tensors) {
    if (tensor.first && reinterpret_cast<uintptr_t>(tensor.first) % (kQuad * tensor.second) != 0) return false;
  }
  return true;
}

// data[index + i] for i < count (≤ 4) in float32, zeros past count: one vector load when
// `vector` (the caller checked alignment, and count is then 4).
template <typename T>
__device__ __forceinline__ void load_quad(const T* data, int64_t index, int count, bool vector, float (&out)[kQuad]) {
  if (vector) {
    const Quad<T> quad = *reinterpret_cast<const Quad<T>*>(data + index);
#pragma unroll
    for (int i = 0; i < kQuad; ++i) out[i] = to_float(quad.value[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kQuad; ++i) out[i] = i < count ? to_float(data[index + i]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store_quad(T* data, int64_t index, int count, bool vector, const float (&in)[kQuad]) {
  if (vector) {
    Quad<T> quad;
#pragma unroll
    for (int i = 0; i < kQuad; ++i) quad.value[i] = from_float<T>(in[i]);
    *reinterpret_cast<Quad<T>*>(data + index) = quad;
  } else {
#pragma unroll
    for (int i = 0; i < kQuad; ++i) {
      if (i < count) data[index + i] = from_float<T>(in[i]);
    }
  }
}

}  // namespace cuda
}  // namespace fastvae
