// Host-only: the diffusion launchers' argument structs from Python's arguments, with the
// checks that keep a wrong call from becoming a bad read; shared by fastvae._C and
// fastvae._C_cuda (fastvae/native/diffusion.py calls both).
#pragma once

#include <stdexcept>
#include <string>

#include "fastvae/bindings.h"
#include "fastvae/diffusion_args.h"

namespace fastvae {
namespace bindings {

inline void check_diffusion_dtype(const char* kernel, const char* name, int dtype) {
  if (dtype != kFloat32 && dtype != kBFloat16 && dtype != kFloat16) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": " + name + " has unsupported dtype code " +
                                std::to_string(dtype));
  }
}

inline void check_diffusion_sizes(const char* kernel, int64_t batch, int64_t features, int64_t row_partials) {
  const std::string name = std::string("fastvae ") + kernel;
  if (batch < 0 || features < 0) throw std::invalid_argument(name + ": batch and features must be >= 0");
  if (row_partials < 1) throw std::invalid_argument(name + ": row_partials must be >= 1");
}

// A pointer the kernel reads whenever there is an element to read it for.
inline void check_present(const char* kernel, const char* name, Address data, int64_t batch, int64_t features) {
  if (data == 0 && batch > 0 && features > 0) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": " + name + " is missing");
  }
}

inline DiffuseForwardArgs diffuse_forward_args(Address x, Address gamma, Address seed_offset, Address z, int64_t batch,
                                               int64_t features, int x_dtype, int gamma_dtype, int z_dtype) {
  const char* kernel = "diffuse_fwd";
  check_diffusion_sizes(kernel, batch, features, 1);
  check_diffusion_dtype(kernel, "x", x_dtype);
  check_diffusion_dtype(kernel, "gamma", gamma_dtype);
  check_diffusion_dtype(kernel, "z", z_dtype);
  check_present(kernel, "x", x, batch, features);
  check_present(kernel, "gamma", gamma, batch, features);
  check_present(kernel, "seed_offset", seed_offset, batch, features);
  check_present(kernel, "z", z, batch, features);
  return DiffuseForwardArgs{pointer<const void>(x), pointer<const void>(gamma), pointer<const int64_t>(seed_offset),
                            pointer<void>(z), batch, features, x_dtype, gamma_dtype, z_dtype};
}

inline DiffuseBackwardArgs diffuse_backward_args(Address grad_z, Address x, Address gamma, Address seed_offset,
                                                 Address grad_x, Address grad_gamma, int64_t batch, int64_t features,
                                                 int64_t row_partials, int grad_z_dtype, int x_dtype,
                                                 int gamma_dtype) {
  const char* kernel = "diffuse_bwd";
  check_diffusion_sizes(kernel, batch, features, row_partials);
  check_diffusion_dtype(kernel, "grad_z", grad_z_dtype);
  check_diffusion_dtype(kernel, "x", x_dtype);
  check_diffusion_dtype(kernel, "gamma", gamma_dtype);
  if (grad_x != 0 || grad_gamma != 0) {
    check_present(kernel, "grad_z", grad_z, batch, features);
    check_present(kernel, "gamma", gamma, batch, features);
  }
  if (grad_gamma != 0) {
    check_present(kernel, "x", x, batch, features);
    check_present(kernel, "seed_offset", seed_offset, batch, features);
  }
  return DiffuseBackwardArgs{pointer<const void>(grad_z), pointer<const void>(x), pointer<const void>(gamma),
                             pointer<const int64_t>(seed_offset), pointer<void>(grad_x), pointer<float>(grad_gamma),
                             batch, features, row_partials, grad_z_dtype, x_dtype, gamma_dtype};
}

inline DiffusionLossForwardArgs diffusion_loss_forward_args(Address eps_hat, Address seed_offset, Address weight,
                                                            Address loss, Address squared_error, int64_t batch,
                                                            int64_t features, int64_t row_partials, int eps_hat_dtype,
                                                            int weight_dtype) {
  const char* kernel = "diffusion_loss_fwd";
  check_diffusion_sizes(kernel, batch, features, row_partials);
  check_diffusion_dtype(kernel, "eps_hat", eps_hat_dtype);
  check_diffusion_dtype(kernel, "weight", weight_dtype);
  if (loss != 0 || squared_error != 0) {
    check_present(kernel, "eps_hat", eps_hat, batch, features);
    check_present(kernel, "seed_offset", seed_offset, batch, features);
  }
  if (loss != 0) check_present(kernel, "weight", weight, batch, features);
  return DiffusionLossForwardArgs{pointer<const void>(eps_hat), pointer<const int64_t>(seed_offset),
                                  pointer<const void>(weight), pointer<float>(loss), pointer<float>(squared_error),
                                  batch, features, row_partials, eps_hat_dtype, weight_dtype};
}

inline DiffusionLossBackwardArgs diffusion_loss_backward_args(Address grad_loss, Address eps_hat, Address seed_offset,
                                                              Address weight, Address grad_eps_hat, int64_t batch,
                                                              int64_t features, int eps_hat_dtype, int weight_dtype) {
  const char* kernel = "diffusion_loss_bwd";
  check_diffusion_sizes(kernel, batch, features, 1);
  check_diffusion_dtype(kernel, "eps_hat", eps_hat_dtype);
  check_diffusion_dtype(kernel, "weight", weight_dtype);
  if (grad_eps_hat != 0) {
    check_present(kernel, "grad_loss", grad_loss, batch, features);
    check_present(kernel, "eps_hat", eps_hat, batch, features);
    check_present(kernel, "seed_offset", seed_offset, batch, features);
    check_present(kernel, "weight", weight, batch, features);
  }
  return DiffusionLossBackwardArgs{pointer<const float>(grad_loss), pointer<const void>(eps_hat),
                                   pointer<const int64_t>(seed_offset), pointer<const void>(weight),
                                   pointer<void>(grad_eps_hat), batch, features, eps_hat_dtype, weight_dtype};
}

// The partial sums a row sum's output holds must be the chunks of the backend's width.
inline void check_row_partials(const char* kernel, int64_t features, int64_t row_partials, int64_t width) {
  const int64_t chunks = features == 0 ? 1 : (features + width - 1) / width;
  if (row_partials != chunks) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": row_partials must be " + std::to_string(chunks) +
                                " (one per " + std::to_string(width) + " columns of " + std::to_string(features) +
                                "), got " + std::to_string(row_partials));
  }
}

}  // namespace bindings
}  // namespace fastvae
