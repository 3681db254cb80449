// Host-only: how Python arguments (raw addresses as ints, sizes, dtype codes) become the
// launchers' argument structs.  Shared by fastvae._C (CPU) and fastvae._C_cuda (CUDA), so
// both modules take exactly the same arguments (the CUDA one adds the stream).
#pragma once

#include <array>
#include <cstdint>

#include "fastvae/latent_args.h"

namespace fastvae {
namespace bindings {

using Address = uintptr_t;
using Layout = std::array<int64_t, 4>;
using Sizes = std::array<int64_t, 2>;

template <typename T>
inline T* pointer(Address address) {
  return reinterpret_cast<T*>(address);
}

inline BroadcastLayout layout(const Layout& strides) { return BroadcastLayout{strides[0], strides[1], strides[2], strides[3]}; }

inline LatentForwardArgs latent_forward_args(Address mu, Address logvar, Address prior_mu, Address prior_logvar,
                                             Address seed_offset, Address z, Address kl, int64_t batch,
                                             int64_t features, int64_t row_partials, const Layout& prior_mu_layout,
                                             const Layout& prior_logvar_layout, const Sizes& sizes, int dtype,
                                             int prior_dtype, int kl_mode) {
  return LatentForwardArgs{pointer<const void>(mu), pointer<const void>(logvar), pointer<const void>(prior_mu),
                           pointer<const void>(prior_logvar), pointer<const int64_t>(seed_offset), pointer<void>(z),
                           pointer<float>(kl), batch, features, row_partials, layout(prior_mu_layout),
                           layout(prior_logvar_layout), InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype, kl_mode};
}

inline LatentBackwardArgs latent_backward_args(Address mu, Address logvar, Address prior_mu, Address prior_logvar,
                                               Address seed_offset, Address grad_z, Address grad_kl, Address grad_mu,
                                               Address grad_logvar, Address grad_prior_mu, Address grad_prior_logvar,
                                               int64_t batch, int64_t features, const Layout& prior_mu_layout,
                                               const Layout& prior_logvar_layout, const Sizes& sizes, int dtype,
                                               int prior_dtype, bool grad_kl_per_element) {
  return LatentBackwardArgs{pointer<const void>(mu), pointer<const void>(logvar), pointer<const void>(prior_mu),
                            pointer<const void>(prior_logvar), pointer<const int64_t>(seed_offset),
                            pointer<const void>(grad_z), pointer<const float>(grad_kl), pointer<void>(grad_mu),
                            pointer<void>(grad_logvar), pointer<float>(grad_prior_mu),
                            pointer<float>(grad_prior_logvar), batch, features, layout(prior_mu_layout),
                            layout(prior_logvar_layout), InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype,
                            grad_kl_per_element};
}

}  // namespace bindings
}  // namespace fastvae
