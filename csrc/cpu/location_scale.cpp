// Location-scale latent family (Laplace, logistic, Cauchy) on the CPU: the per-element math
// of fastvae/location_scale.h and the Philox words of fastvae/philox.h, parallel over rows
// with OpenMP.
//
// Each element runs the header's formulas with the C library's functions (the Cauchy's
// quantile needs sinf, which csrc/cpu/vector_math.h does not have), one element after
// another.  A row's log q and KL are added up in float64 lanes (csrc/cpu/row_sum.h), so
// their error does not grow with the row's length and the result does not depend on the
// number of threads.  The backward regenerates each element's noise from (seed, base
// offset) where it needs it (fastvae::backward_needs_noise); nothing is stored.
#include <cmath>

#include "fastvae/dispatch.h"
#include "fastvae/location_scale_args.h"
#include "ops.h"
#include "row_sum.h"

namespace fastvae {
namespace cpu {

namespace {

constexpr int kTile = 256;  // columns whose log q and KL go to the row sums at once

// Below this many elements a call runs on one thread: starting the OpenMP team costs more
// than the loop.  Each row's sums follow the shape, not the threads, so the bits are the
// same either way.
constexpr int64_t kParallelMinimum = 32768;

template <typename P>
inline float prior_value(const P* prior, const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row,
                         int64_t col) {
  return prior ? to_float(prior[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

// A per-row or per-element incoming gradient (null: none, 0).
inline float incoming(const float* grad, bool per_element, int64_t index, int64_t row) {
  return grad ? grad[per_element ? index : row] : 0.0f;
}

template <int kFamily, typename T, typename P>
void forward(const LocationScaleForwardArgs& args) {
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  const P* prior_loc = static_cast<const P*>(args.prior_loc);
  const P* prior_log_scale = static_cast<const P*>(args.prior_log_scale);
  T* z = static_cast<T*>(args.z);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
  const int64_t features = args.features;
  const bool log_q_rows = args.log_q_mode == kKLRow;
  const bool kl_rows = args.kl_mode == kKLRow;
#pragma omp parallel for schedule(static) if (args.batch * features >= kParallelMinimum)
  for (int64_t row = 0; row < args.batch; ++row) {
    RowSum row_log_q, row_kl;
    float log_q_tile[kTile], kl_tile[kTile];
    for (int64_t begin = 0; begin < features; begin += kTile) {
      const int width = static_cast<int>(features - begin < kTile ? features - begin : kTile);
      const int64_t first = row * features + begin;
      for (int i = 0; i < width; ++i) {
        const int64_t index = first + i;
        const PhiloxWords words = philox4x32_10(seed, base + static_cast<uint64_t>(index));
        const float x = location_scale_noise<kFamily>(words.word[0], words.word[1]);
        const LocationScaleOutputs out = location_scale_element_forward<kFamily>(
            x, to_float(loc[index]), to_float(log_scale[index]),
            prior_value(prior_loc, args.prior_loc_layout, args.sizes, row, begin + i),
            prior_value(prior_log_scale, args.prior_log_scale_layout, args.sizes, row, begin + i));
        z[index] = from_float<T>(out.z);
        log_q_tile[i] = out.log_q;
        kl_tile[i] = out.kl;
      }
      if (log_q_rows) {
        row_log_q.add(log_q_tile, width);
      } else {
        for (int i = 0; i < width; ++i) args.log_q[first + i] = log_q_tile[i];
      }
      if (kl_rows) {
        row_kl.add(kl_tile, width);
      } else {
        for (int i = 0; i < width; ++i) args.kl[first + i] = kl_tile[i];
      }
    }
    if (log_q_rows) args.log_q[row] = row_log_q.total();
    if (kl_rows) args.kl[row] = row_kl.total();
  }
}

template <int kFamily, typename T, typename P>
void backward(const LocationScaleBackwardArgs& args) {
  const T* loc = static_cast<const T*>(args.loc);
  const T* log_scale = static_cast<const T*>(args.log_scale);
  const P* prior_loc = static_cast<const P*>(args.prior_loc);
  const P* prior_log_scale = static_cast<const P*>(args.prior_log_scale);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_loc = static_cast<T*>(args.grad_loc);
  T* grad_log_scale = static_cast<T*>(args.grad_log_scale);
  const bool has_grad_z = grad_z != nullptr;
  const bool has_grad_kl = args.grad_kl != nullptr;
  const bool needs_noise = backward_needs_noise<kFamily>(has_grad_z, has_grad_kl);
  const uint64_t seed = needs_noise ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = needs_noise ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  const int64_t features = args.features;
#pragma omp parallel for schedule(static) if (args.batch * features >= kParallelMinimum)
  for (int64_t row = 0; row < args.batch; ++row) {
    for (int64_t col = 0; col < features; ++col) {
      const int64_t index = row * features + col;
      float x = 0.0f;
      if (needs_noise) {
        const PhiloxWords words = philox4x32_10(seed, base + static_cast<uint64_t>(index));
        x = location_scale_noise<kFamily>(words.word[0], words.word[1]);
      }
      const LocationScaleGrads grads = location_scale_element_backward<kFamily>(
          x, to_float(loc[index]), to_float(log_scale[index]),
          prior_value(prior_loc, args.prior_loc_layout, args.sizes, row, col),
          prior_value(prior_log_scale, args.prior_log_scale_layout, args.sizes, row, col),
          has_grad_z ? to_float(grad_z[index]) : 0.0f,
          incoming(args.grad_log_q, args.grad_log_q_per_element, index, row),
          incoming(args.grad_kl, args.grad_kl_per_element, index, row), has_grad_z, has_grad_kl);
      grad_loc[index] = from_float<T>(grads.loc);
      grad_log_scale[index] = from_float<T>(grads.log_scale);
      if (args.grad_prior_loc) store_float_as(args.grad_prior_loc, args.grad_prior_loc_dtype, index, grads.prior_loc);
      if (args.grad_prior_log_scale) {
        store_float_as(args.grad_prior_log_scale, args.grad_prior_log_scale_dtype, index, grads.prior_log_scale);
      }
    }
  }
}

// The family code (checked by the bindings) as a template argument.
template <typename T, typename P>
void forward_family(const LocationScaleForwardArgs& args) {
  if (args.family == kLaplace) {
    forward<kLaplace, T, P>(args);
  } else if (args.family == kLogistic) {
    forward<kLogistic, T, P>(args);
  } else {
    forward<kCauchy, T, P>(args);
  }
}

template <typename T, typename P>
void backward_family(const LocationScaleBackwardArgs& args) {
  if (args.family == kLaplace) {
    backward<kLaplace, T, P>(args);
  } else if (args.family == kLogistic) {
    backward<kLogistic, T, P>(args);
  } else {
    backward<kCauchy, T, P>(args);
  }
}

}  // namespace

void location_scale_forward(const LocationScaleForwardArgs& args) {
  if (args.batch == 0 || args.features == 0) return;
  FASTVAE_DISPATCH(args.dtype, "location_scale_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "location_scale_fwd", P, [&] {
      forward_family<T, P>(args);
    });
  });
}

void location_scale_backward(const LocationScaleBackwardArgs& args) {
  if (args.batch == 0 || args.features == 0) return;
  FASTVAE_DISPATCH(args.dtype, "location_scale_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "location_scale_bwd", P, [&] {
      backward_family<T, P>(args);
    });
  });
}

}  // namespace cpu
}  // namespace fastvae
