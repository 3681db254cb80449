// Host-only: the truncated-normal launchers' argument structs from Python's arguments,
// shared by fastvae._C and fastvae._C_cuda (fastvae/native/truncated_normal.py calls both).
#pragma once

#include "fastvae/bindings.h"
#include "fastvae/truncated_normal_args.h"

namespace fastvae {
namespace bindings {

inline truncated_normal::TruncatedNormalBounds truncated_normal_bounds(double low, double high) {
  return truncated_normal::TruncatedNormalBounds{static_cast<float>(low), static_cast<float>(high)};
}

inline TruncatedNormalForwardArgs truncated_normal_forward_args(
    Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset, Address z,
    Address log_q, Address kl, int64_t batch, int64_t features, int64_t row_partials, const Layout& prior_loc_layout,
    const Layout& prior_log_scale_layout, const Sizes& sizes, double low, double high, int dtype, int prior_dtype,
    bool per_element) {
  return TruncatedNormalForwardArgs{
      pointer<const void>(loc), pointer<const void>(log_scale), pointer<const void>(prior_loc),
      pointer<const void>(prior_log_scale), pointer<const int64_t>(seed_offset), pointer<void>(z),
      pointer<float>(log_q), pointer<float>(kl), batch, features, row_partials, layout(prior_loc_layout),
      layout(prior_log_scale_layout), InnerSizes{sizes[0], sizes[1]}, truncated_normal_bounds(low, high), dtype,
      prior_dtype, per_element};
}

inline TruncatedNormalBackwardArgs truncated_normal_backward_args(
    Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset, Address grad_z,
    Address grad_log_q, Address grad_kl, Address grad_loc, Address grad_log_scale, Address grad_prior_loc,
    Address grad_prior_log_scale, int64_t batch, int64_t features, const Layout& prior_loc_layout,
    const Layout& prior_log_scale_layout, const Sizes& sizes, double low, double high, int dtype, int prior_dtype,
    int grad_prior_loc_dtype, int grad_prior_log_scale_dtype, bool grad_per_element) {
  return TruncatedNormalBackwardArgs{
      pointer<const void>(loc), pointer<const void>(log_scale), pointer<const void>(prior_loc),
      pointer<const void>(prior_log_scale), pointer<const int64_t>(seed_offset), pointer<const void>(grad_z),
      pointer<const float>(grad_log_q), pointer<const float>(grad_kl), pointer<void>(grad_loc),
      pointer<void>(grad_log_scale), pointer<void>(grad_prior_loc), pointer<void>(grad_prior_log_scale), batch,
      features, layout(prior_loc_layout), layout(prior_log_scale_layout), InnerSizes{sizes[0], sizes[1]},
      truncated_normal_bounds(low, high), dtype, prior_dtype, grad_prior_loc_dtype, grad_prior_log_scale_dtype,
      grad_per_element};
}

}  // namespace bindings
}  // namespace fastvae
