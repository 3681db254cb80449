// Arguments of the discretized logistic launchers (the single logistic and the mixture),
// shared by the CPU and CUDA bindings.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "fastvae/logistic.h"

namespace fastvae {

// How x comes: float data in [−1, 1] in one of the float dtypes (their DType codes), or
// uint8 level indices (fastvae/native/logistic.py uses the same codes).
enum GridDataCode : int {
  kGridFloat32 = kFloat32,
  kGridBFloat16 = kBFloat16,
  kGridFloat16 = kFloat16,
  kGridLevelsUInt8 = 3,
};

// Strides of a [B, channel, S] view of a tensor whose spatial dimensions form one evenly
// strided run (contiguous and channels_last tensors both do).
struct PixelStrides {
  int64_t batch, channel, spatial;
};

struct LogisticForwardArgs {
  const void* mean;       // [B, N], rows mean_stride_b apart, each row contiguous; dtype
  const void* log_scale;  // [B, N], rows log_scale_stride_b apart; dtype
  const void* x;          // [B, N], rows x_stride_b apart; x_dtype (a GridDataCode)
  float* nll;             // [B, N] contiguous if per_element, else [B, row_partials] partial row sums
  int64_t batch, features, row_partials;
  int64_t mean_stride_b, log_scale_stride_b, x_stride_b;
  LogisticGrid grid;
  int dtype, x_dtype;
  bool per_element;
};

struct LogisticBackwardArgs {
  const void* mean;        // as in the forward
  const void* log_scale;
  const void* x;
  const float* grad_nll;   // [B, N] contiguous if grad_per_element, else [B]
  void* grad_mean;         // [B, N] contiguous, dtype
  void* grad_log_scale;    // [B, N] contiguous, dtype
  int64_t batch, features;
  int64_t mean_stride_b, log_scale_stride_b, x_stride_b;
  LogisticGrid grid;
  int dtype, x_dtype;
  bool grad_per_element;
};

struct LogisticMixtureForwardArgs {
  const void* params;  // [B, P, S] through params_strides, dtype; P = 3K (C = 1) or 10K (C = 3)
  const void* x;       // [B, C, S] through x_strides, x_dtype (a GridDataCode)
  float* nll;          // [B, S] contiguous if per_pixel, else [B, pixel_partials] partial row sums
  void* grad_params;   // null, or [B, P, S] through grad_strides, dtype: ∂nll/∂params written by the
                       // forward itself (an upstream gradient of 1), for a backward that only
                       // scales it (CPU only)
  int64_t batch, pixels, components, pixel_partials;
  PixelStrides params_strides, x_strides, grad_strides;
  LogisticGrid grid;
  int channels, dtype, x_dtype;
  bool per_pixel;
};

struct LogisticMixtureBackwardArgs {
  const void* params;     // as in the forward
  const void* x;
  const float* grad_nll;  // [B, S] contiguous if grad_per_pixel, else [B]
  void* grad_params;      // [B, P, S] through grad_strides, dtype; every slot written once
  int64_t batch, pixels, components;
  PixelStrides params_strides, x_strides, grad_strides;
  LogisticGrid grid;
  int channels, dtype, x_dtype;
  bool grad_per_pixel;
};

// Host-only: calls run(X{}) with the C++ type x comes in.
template <typename Run>
inline void dispatch_grid_data(int x_dtype, const char* op, Run&& run) {
  switch (x_dtype) {
    case kGridFloat32: run(float{}); break;
    case kGridBFloat16: run(bfloat16{}); break;
    case kGridFloat16: run(float16{}); break;
    case kGridLevelsUInt8: run(uint8_t{}); break;
    default:
      throw std::invalid_argument(std::string("fastvae ") + op + ": unsupported x dtype code " + std::to_string(x_dtype));
  }
}

// Host-only: calls run(std::integral_constant<int, C>{}) for C = 1 or 3.
template <typename Run>
inline void dispatch_mixture_channels(int channels, const char* op, Run&& run) {
  if (channels == 1) {
    run(std::integral_constant<int, 1>{});
  } else if (channels == 3) {
    run(std::integral_constant<int, 3>{});
  } else {
    throw std::invalid_argument(std::string("fastvae ") + op + ": x must have 1 or 3 channels, got " +
                                std::to_string(channels));
  }
}

}  // namespace fastvae
