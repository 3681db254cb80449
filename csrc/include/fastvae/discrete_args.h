// Arguments of the discrete (categorical) launchers, shared by the CPU and CUDA bindings.
#pragma once

#include <stdexcept>
#include <string>

#include "fastvae/discrete.h"

namespace fastvae {

struct CategoricalForwardArgs {
  const void* logits;          // [R, C], dtype
  const void* prior_logits;    // broadcast to [R, C] through prior_layout, prior_dtype; null: uniform
  const int64_t* seed_offset;  // [2]: seed, base offset
  void* z;                     // [R, C], dtype
  float* kl;                   // [R]
  int64_t rows, categories;
  CategoricalPriorLayout prior_layout;
  float tau;
  float log_uniform;  // −log C, the uniform prior's log q_c (as float32, like the Triton argument)
  int dtype, prior_dtype;
  bool hard;
};

struct CategoricalBackwardArgs {
  const void* logits;          // [R, C], dtype
  const void* prior_logits;    // as in the forward
  const int64_t* seed_offset;  // [2]; null when z got no gradient (the noise is not needed)
  const void* grad_z;          // [R, C], dtype; null when z got no gradient
  const float* grad_kl;        // [R]; null when the KL got no gradient
  void* grad_logits;           // [R, C], dtype
  void* grad_prior;            // [R, C], grad_prior_dtype (float32 or prior_dtype); null unless wanted
  int64_t rows, categories;
  CategoricalPriorLayout prior_layout;
  float tau, log_uniform;
  int dtype, prior_dtype, grad_prior_dtype;
};

// Host-only: the kernels read the prior logits in the logits' dtype T or in float32 (a
// learned prior under autocast); fastvae/native/discrete.py casts any other mix to float32.
// That is 5 (T, P) pairs to compile instead of 9.  Calls run(P{}) with the prior's type.
template <typename T, typename Run>
inline void dispatch_prior_dtype(int dtype, int prior_dtype, const char* op, Run&& run) {
  if (prior_dtype == kFloat32) {
    run(float{});
  } else if (prior_dtype == dtype) {
    run(T{});
  } else {
    throw std::invalid_argument(std::string("fastvae ") + op + ": the prior must be float32 or in the logits' dtype");
  }
}

}  // namespace fastvae
