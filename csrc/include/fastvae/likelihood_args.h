// Arguments of the reconstruction likelihood launchers (Bernoulli, continuous Bernoulli,
// Gaussian), shared by the CPU and CUDA bindings.
//
// The parameters (logits, mean) come in `dtype`; x and the Gaussian logvar each in the
// parameters' dtype or float32 (the common mixes: a float32 target or a float32 learned
// logvar with a half-precision decoder), and a Bernoulli x also as 0/1 bytes; the Python
// launchers cast any other mix.  Gradients come back in their input's dtype.
#pragma once

#include "fastvae/latent.h"
#include "fastvae/likelihood.h"

namespace fastvae {

// The dtype code of a Bernoulli x given as 0/1 bytes (uint8, or bool viewed as uint8),
// next to the DType codes of common.h.
constexpr int kTargetUInt8 = 3;

struct BernoulliForwardArgs {
  const void* logits;  // [B, N], dtype
  const void* x;       // [B, N], x_dtype: dtype, float32 or kTargetUInt8
  float* nll;          // [B, N] if per_element, else [B, row_partials] partial row sums
  int64_t batch, features, row_partials;
  int dtype, x_dtype;
  bool continuous, per_element;
};

struct BernoulliBackwardArgs {
  const void* logits;     // [B, N], dtype
  const void* x;          // [B, N], x_dtype
  const float* grad_nll;  // [B, N] if grad_per_element, else [B]
  void* grad_logits;      // [B, N], dtype; null when logits get no gradient
  void* grad_x;           // [B, N], x_dtype (a float dtype); null when x gets no gradient
  int64_t batch, features;
  int dtype, x_dtype;
  bool continuous, grad_per_element;
};

struct GaussianNLLForwardArgs {
  const void* mean;    // [B, N], dtype
  const void* x;       // [B, N], x_dtype: dtype or float32
  const void* logvar;  // broadcast to [B, N] through logvar_layout, logvar_dtype (dtype or float32); null: logvar_value
  float* nll;          // [B, N] if per_element, else [B, row_partials] partial row sums
  int64_t batch, features, row_partials;
  BroadcastLayout logvar_layout;
  InnerSizes sizes;
  float logvar_value;  // the logvar when it is a number (logvar null)
  int dtype, x_dtype, logvar_dtype;
  bool per_element;
};

struct GaussianNLLBackwardArgs {
  const void* mean;       // [B, N], dtype
  const void* x;          // [B, N], x_dtype
  const void* logvar;     // as in the forward
  const float* grad_nll;  // [B, N] if grad_per_element, else [B]
  void* grad_mean;        // [B, N], dtype; null when mean gets no gradient
  void* grad_x;           // [B, N], x_dtype; null when x gets no gradient
  void* grad_logvar;      // [B, N] per element, logvar_dtype (summed to logvar's shape in Python); may be null
  int64_t batch, features;
  BroadcastLayout logvar_layout;
  InnerSizes sizes;
  float logvar_value;
  int dtype, x_dtype, logvar_dtype;
  bool grad_per_element;
};

}  // namespace fastvae
