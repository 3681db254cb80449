// fastvae._C_cuda: the CUDA backend.  Functions take raw addresses, sizes and dtype codes (no
// libtorch, so one build serves any torch version) and release the GIL while they run;
// kernels go on the stream given (PyTorch's current stream), so calls are asynchronous.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "fastvae/bindings.h"
#include "ops.h"
#include <cuda_runtime.h>

namespace py = pybind11;
using namespace fastvae::bindings;

PYBIND11_MODULE(_C_cuda, module) {
  module.doc() = "fastvae CUDA backend (CUDA C++ kernels on the current stream)";
  // Columns per partial row sum of the latent KL (one warp's chunk).
  module.attr("LATENT_ROW_PARTIAL_WIDTH") = fastvae::cuda::kLatentChunk;
  module.def(
      "gaussian_latent_fwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address z, Address kl,
         int64_t batch, int64_t features, int64_t row_partials, const Layout& prior_mu_layout,
         const Layout& prior_logvar_layout, const Sizes& sizes, int dtype, int prior_dtype, int kl_mode, Address stream) {
        fastvae::cuda::gaussian_latent_forward(latent_forward_args(mu, logvar, prior_mu, prior_logvar, seed_offset, z,
                                                                  kl, batch, features, row_partials, prior_mu_layout,
                                                                  prior_logvar_layout, sizes, dtype, prior_dtype,
                                                                  kl_mode),
                                              reinterpret_cast<cudaStream_t>(stream));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "gaussian_latent_bwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address grad_z,
         Address grad_kl, Address grad_mu, Address grad_logvar, Address grad_prior_mu, Address grad_prior_logvar,
         int64_t batch, int64_t features, const Layout& prior_mu_layout, const Layout& prior_logvar_layout,
         const Sizes& sizes, int dtype, int prior_dtype, bool grad_kl_per_element, Address stream) {
        fastvae::cuda::gaussian_latent_backward(latent_backward_args(
            mu, logvar, prior_mu, prior_logvar, seed_offset, grad_z, grad_kl, grad_mu, grad_logvar, grad_prior_mu,
            grad_prior_logvar, batch, features, prior_mu_layout, prior_logvar_layout, sizes, dtype, prior_dtype,
            grad_kl_per_element),
        reinterpret_cast<cudaStream_t>(stream));
      },
      py::call_guard<py::gil_scoped_release>());
}
