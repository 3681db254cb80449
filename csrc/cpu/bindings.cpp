// fastvae._C: the CPU backend.  Functions take raw addresses, sizes and dtype codes (no
// libtorch, so one build serves any torch version) and release the GIL while they run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "fastvae/bindings.h"
#include "fastvae/philox.h"
#include "ops.h"

namespace py = pybind11;
using namespace fastvae::bindings;

PYBIND11_MODULE(_C, module) {
  module.doc() = "fastvae CPU backend (C++ loops, OpenMP)";
  // Columns per partial row sum of the latent KL: 0, the CPU sums each row whole.
  module.attr("LATENT_ROW_PARTIAL_WIDTH") = 0;
  module.def(
      "gaussian_latent_fwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address z, Address kl,
         int64_t batch, int64_t features, int64_t row_partials, const Layout& prior_mu_layout,
         const Layout& prior_logvar_layout, const Sizes& sizes, int dtype, int prior_dtype, int kl_mode) {
        fastvae::cpu::gaussian_latent_forward(latent_forward_args(mu, logvar, prior_mu, prior_logvar, seed_offset, z,
                                                                  kl, batch, features, row_partials, prior_mu_layout,
                                                                  prior_logvar_layout, sizes, dtype, prior_dtype,
                                                                  kl_mode));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "gaussian_latent_bwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address grad_z,
         Address grad_kl, Address grad_mu, Address grad_logvar, Address grad_prior_mu, Address grad_prior_logvar,
         int64_t batch, int64_t features, const Layout& prior_mu_layout, const Layout& prior_logvar_layout,
         const Sizes& sizes, int dtype, int prior_dtype, bool grad_kl_per_element) {
        fastvae::cpu::gaussian_latent_backward(latent_backward_args(
            mu, logvar, prior_mu, prior_logvar, seed_offset, grad_z, grad_kl, grad_mu, grad_logvar, grad_prior_mu,
            grad_prior_logvar, batch, features, prior_mu_layout, prior_logvar_layout, sizes, dtype, prior_dtype,
            grad_kl_per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  // The noise stream itself, for tests that hold every backend to the same numbers.
  module.def(
      "philox_normal",
      [](int64_t seed, int64_t base, int64_t count, Address out) {
        float* values = pointer<float>(out);
        for (int64_t i = 0; i < count; ++i)
          values[i] = fastvae::philox_normal(static_cast<uint64_t>(seed), static_cast<uint64_t>(base + i));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "philox_uniform",
      [](int64_t seed, int64_t base, int64_t count, Address out) {
        float* values = pointer<float>(out);
        for (int64_t i = 0; i < count; ++i)
          values[i] = fastvae::philox_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(base + i));
      },
      py::call_guard<py::gil_scoped_release>());
}
