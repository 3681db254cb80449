// Truncated-normal latent on the CPU: the per-element math of fastvae/truncated_normal.h
// with the C library's float32 functions, one element after another, rows in parallel
// with OpenMP.  The uniform of element i is word 0 of Philox at base + i (the backward
// regenerates it); a row's log q and KL are added up in float64 lanes (row_sum.h), so
// the result does not depend on the row's length or the number of threads.
#include <cmath>

#include "fastvae/dispatch.h"
#include "fastvae/philox.h"
#include "fastvae/truncated_normal_args.h"
#include "ops.h"
#include "row_sum.h"

namespace fastvae {
namespace cpu {

namespace {

namespace tn = ::fastvae::truncated_normal;

// Below this many elements a call runs on one thread (the team costs more than the loop).
constexpr int64_t kParallelMinimum = 4096;

template <typename P>
float prior_value(const void* prior, const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row,
                  int64_t col) {
  return prior ? to_float(static_cast<const P*>(prior)[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

float element_uniform(const int64_t* seed_offset, int64_t index) {
  const float u = philox_uniform(static_cast<uint64_t>(seed_offset[0]),
                                 static_cast<uint64_t>(seed_offset[1]) + static_cast<uint64_t>(index));
  return tn::clamp_to(u, tn::kUniformMin, tn::kUniformMax);
}

template <typename T, typename P>
void forward(const TruncatedNormalForwardArgs& args) {
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  T* z = static_cast<T*>(args.z);
#pragma omp parallel for schedule(static) if (args.batch * args.features >= kParallelMinimum)
  for (int64_t row = 0; row < args.batch; ++row) {
    RowSum row_log_q, row_kl;
    for (int64_t col = 0; col < args.features; ++col) {
      const int64_t index = row * args.features + col;
      const tn::TruncatedNormalState s = tn::truncated_normal_state<LibraryMath>(
          to_float(loc[index]), to_float(log_scale[index]),
          prior_value<P>(args.prior_loc, args.prior_loc_layout, args.sizes, row, col),
          prior_value<P>(args.prior_log_scale, args.prior_log_scale_layout, args.sizes, row, col),
          element_uniform(args.seed_offset, index), args.bounds);
      z[index] = from_float<T>(s.z);
      if (args.per_element) {
        args.log_q[index] = s.log_q;
        args.kl[index] = s.kl;
      } else {
        row_log_q.add(&s.log_q, 1);
        row_kl.add(&s.kl, 1);
      }
    }
    if (!args.per_element) {
      args.log_q[row] = row_log_q.total();
      args.kl[row] = row_kl.total();
    }
  }
}

template <typename T, typename P>
void backward(const TruncatedNormalBackwardArgs& args) {
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_loc = static_cast<T*>(args.grad_loc);
  T* grad_log_scale = static_cast<T*>(args.grad_log_scale);
#pragma omp parallel for schedule(static) if (args.batch * args.features >= kParallelMinimum)
  for (int64_t row = 0; row < args.batch; ++row) {
    for (int64_t col = 0; col < args.features; ++col) {
      const int64_t index = row * args.features + col;
      const int64_t grad_index = args.grad_per_element ? index : row;
      const tn::TruncatedNormalState s = tn::truncated_normal_state<LibraryMath>(
          to_float(loc[index]), to_float(log_scale[index]),
          prior_value<P>(args.prior_loc, args.prior_loc_layout, args.sizes, row, col),
          prior_value<P>(args.prior_log_scale, args.prior_log_scale_layout, args.sizes, row, col),
          element_uniform(args.seed_offset, index), args.bounds);
      const tn::TruncatedNormalGrads grads = tn::truncated_normal_grads<LibraryMath>(
          s, grad_z ? to_float(grad_z[index]) : 0.0f, args.grad_log_q ? args.grad_log_q[grad_index] : 0.0f,
          args.grad_kl ? args.grad_kl[grad_index] : 0.0f);
      grad_loc[index] = from_float<T>(grads.loc);
      grad_log_scale[index] = from_float<T>(grads.log_scale);
      if (args.grad_prior_loc) store_float_as(args.grad_prior_loc, args.grad_prior_loc_dtype, index, grads.prior_loc);
      if (args.grad_prior_log_scale) {
        store_float_as(args.grad_prior_log_scale, args.grad_prior_log_scale_dtype, index, grads.prior_log_scale);
      }
    }
  }
}

}  // namespace

void truncated_normal_forward(const TruncatedNormalForwardArgs& args) {
  if (args.batch == 0 || args.features == 0) return;
  FASTVAE_DISPATCH(args.dtype, "truncated_normal_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "truncated_normal_fwd", P, [&] { forward<T, P>(args); });
  });
}

void truncated_normal_backward(const TruncatedNormalBackwardArgs& args) {
  if (args.batch == 0 || args.features == 0) return;
  FASTVAE_DISPATCH(args.dtype, "truncated_normal_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "truncated_normal_bwd", P, [&] { backward<T, P>(args); });
  });
}

}  // namespace cpu
}  // namespace fastvae
