// fastvae._C: the CPU backend.  Functions take raw addresses, sizes and dtype codes (no
// libtorch, so one build serves any torch version) and release the GIL while they run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "fastvae/bindings.h"
#include "fastvae/diffusion_bindings.h"
#include "fastvae/truncated_normal_bindings.h"
#include "fastvae/philox.h"
#include "ops.h"
#include "vector_math.h"

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
  // Named arguments: the launcher (fastvae/native/latent.py) passes each by name.
  module.def(
      "gaussian_latent_bwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address z,
         Address grad_z, Address grad_kl, Address grad_mu, Address grad_logvar, Address grad_prior_mu,
         Address grad_prior_logvar, int64_t batch, int64_t features, const Layout& prior_mu_layout,
         const Layout& prior_logvar_layout, const Sizes& sizes, int dtype, int prior_dtype, int grad_prior_mu_dtype,
         int grad_prior_logvar_dtype, bool grad_kl_per_element) {
        fastvae::cpu::gaussian_latent_backward(latent_backward_args(
            mu, logvar, prior_mu, prior_logvar, seed_offset, z, grad_z, grad_kl, grad_mu, grad_logvar, grad_prior_mu,
            grad_prior_logvar, batch, features, prior_mu_layout, prior_logvar_layout, sizes, dtype, prior_dtype,
            grad_prior_mu_dtype, grad_prior_logvar_dtype, grad_kl_per_element));
      },
      py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("seed_offset"),
      py::arg("z"), py::arg("grad_z"), py::arg("grad_kl"), py::arg("grad_mu"), py::arg("grad_logvar"),
      py::arg("grad_prior_mu"), py::arg("grad_prior_logvar"), py::arg("batch"), py::arg("features"),
      py::arg("prior_mu_layout"), py::arg("prior_logvar_layout"), py::arg("sizes"), py::arg("dtype"),
      py::arg("prior_dtype"), py::arg("grad_prior_mu_dtype"), py::arg("grad_prior_logvar_dtype"),
      py::arg("grad_kl_per_element"), py::call_guard<py::gil_scoped_release>());
  // IWAE family.  Columns per partial row sum of log q and log p: 0, the CPU sums each row whole.
  module.attr("SAMPLE_GAUSSIAN_K_ROW_PARTIAL_WIDTH") = 0;
  module.def(
      "sample_gaussian_k_fwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address z,
         Address log_q, Address log_p, int64_t num_samples, int64_t batch, int64_t features, int64_t row_partials,
         const Layout& prior_mu_layout, const Layout& prior_logvar_layout, const Sizes& sizes, int dtype,
         int prior_dtype) {
        fastvae::cpu::sample_gaussian_k_forward(sample_gaussian_k_forward_args(
            mu, logvar, prior_mu, prior_logvar, seed_offset, z, log_q, log_p, num_samples, batch, features,
            row_partials, prior_mu_layout, prior_logvar_layout, sizes, dtype, prior_dtype));
      },
      py::call_guard<py::gil_scoped_release>());
  // Named arguments: the launcher (fastvae/native/iwae.py) passes each by name.
  module.def(
      "sample_gaussian_k_bwd",
      [](Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address grad_z,
         Address grad_log_q, Address grad_log_p, Address grad_mu, Address grad_logvar, Address grad_prior_mu,
         Address grad_prior_logvar, int64_t num_samples, int64_t batch, int64_t features,
         const Layout& prior_mu_layout, const Layout& prior_logvar_layout, const Sizes& sizes, int dtype,
         int prior_dtype, int grad_prior_mu_dtype, int grad_prior_logvar_dtype) {
        fastvae::cpu::sample_gaussian_k_backward(sample_gaussian_k_backward_args(
            mu, logvar, prior_mu, prior_logvar, seed_offset, grad_z, grad_log_q, grad_log_p, grad_mu, grad_logvar,
            grad_prior_mu, grad_prior_logvar, num_samples, batch, features, prior_mu_layout, prior_logvar_layout,
            sizes, dtype, prior_dtype, grad_prior_mu_dtype, grad_prior_logvar_dtype));
      },
      py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("seed_offset"),
      py::arg("grad_z"), py::arg("grad_log_q"), py::arg("grad_log_p"), py::arg("grad_mu"), py::arg("grad_logvar"),
      py::arg("grad_prior_mu"), py::arg("grad_prior_logvar"), py::arg("num_samples"), py::arg("batch"),
      py::arg("features"), py::arg("prior_mu_layout"), py::arg("prior_logvar_layout"), py::arg("sizes"),
      py::arg("dtype"), py::arg("prior_dtype"), py::arg("grad_prior_mu_dtype"), py::arg("grad_prior_logvar_dtype"),
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "log_mean_exp_fwd",
      [](Address x, Address log_p, Address log_q, Address out, Address lse_parts, int64_t num_samples,
         int64_t columns, int64_t inner, float log_num_samples, int dtype) {
        fastvae::cpu::log_mean_exp_forward(log_mean_exp_forward_args(x, log_p, log_q, out, lse_parts, num_samples,
                                                                     columns, inner, log_num_samples, dtype));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "log_mean_exp_bwd",
      [](Address x, Address log_p, Address log_q, Address lse_parts, Address grad_out, Address grad_x,
         Address grad_log_p, Address grad_log_q, int64_t num_samples, int64_t columns, int64_t inner, int dtype) {
        fastvae::cpu::log_mean_exp_backward(log_mean_exp_backward_args(x, log_p, log_q, lse_parts, grad_out, grad_x,
                                                                       grad_log_p, grad_log_q, num_samples, columns,
                                                                       inner, dtype));
      },
      py::call_guard<py::gil_scoped_release>());
  // Discrete family.
  module.def(
      "categorical_fwd",
      [](Address logits, Address prior_logits, Address seed_offset, Address z, Address kl, int64_t rows,
         int64_t categories, const Layout& prior_layout, float tau, float log_uniform, int dtype, int prior_dtype,
         bool hard) {
        fastvae::cpu::categorical_forward(categorical_forward_args(logits, prior_logits, seed_offset, z, kl, rows,
                                                                   categories, prior_layout, tau, log_uniform, dtype,
                                                                   prior_dtype, hard));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "categorical_bwd",
      [](Address logits, Address prior_logits, Address seed_offset, Address grad_z, Address grad_kl,
         Address grad_logits, Address grad_prior, int64_t rows, int64_t categories, const Layout& prior_layout,
         float tau, float log_uniform, int dtype, int prior_dtype, int grad_prior_dtype) {
        fastvae::cpu::categorical_backward(categorical_backward_args(
            logits, prior_logits, seed_offset, grad_z, grad_kl, grad_logits, grad_prior, rows, categories,
            prior_layout, tau, log_uniform, dtype, prior_dtype, grad_prior_dtype));
      },
      py::call_guard<py::gil_scoped_release>());
  // Likelihood family.  Columns per partial row sum of the nll (one task's chunk).
  module.attr("LIKELIHOOD_ROW_PARTIAL_WIDTH") = fastvae::cpu::kLikelihoodChunk;
  module.def(
      "bernoulli_nll_fwd",
      [](Address logits, Address x, Address nll, int64_t batch, int64_t features, int64_t row_partials, int dtype,
         int x_dtype, bool continuous, bool per_element) {
        fastvae::cpu::bernoulli_nll_forward(bernoulli_nll_forward_args(logits, x, nll, batch, features, row_partials,
                                                                       dtype, x_dtype, continuous, per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "bernoulli_nll_bwd",
      [](Address logits, Address x, Address grad_nll, Address grad_logits, Address grad_x, int64_t batch,
         int64_t features, int dtype, int x_dtype, bool continuous, bool grad_per_element) {
        fastvae::cpu::bernoulli_nll_backward(bernoulli_nll_backward_args(
            logits, x, grad_nll, grad_logits, grad_x, batch, features, dtype, x_dtype, continuous, grad_per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "gaussian_nll_fwd",
      [](Address mean, Address x, Address logvar, Address nll, int64_t batch, int64_t features, int64_t row_partials,
         const Layout& logvar_layout, const Sizes& sizes, float logvar_value, int dtype, int x_dtype, int logvar_dtype,
         bool per_element) {
        fastvae::cpu::gaussian_nll_forward(gaussian_nll_forward_args(mean, x, logvar, nll, batch, features,
                                                                     row_partials, logvar_layout, sizes, logvar_value,
                                                                     dtype, x_dtype, logvar_dtype, per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "gaussian_nll_bwd",
      [](Address mean, Address x, Address logvar, Address grad_nll, Address grad_mean, Address grad_x,
         Address grad_logvar, int64_t batch, int64_t features, const Layout& logvar_layout, const Sizes& sizes,
         float logvar_value, int dtype, int x_dtype, int logvar_dtype, bool grad_per_element) {
        fastvae::cpu::gaussian_nll_backward(gaussian_nll_backward_args(
            mean, x, logvar, grad_nll, grad_mean, grad_x, grad_logvar, batch, features, logvar_layout, sizes,
            logvar_value, dtype, x_dtype, logvar_dtype, grad_per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  // Discretized logistic family.  Columns (pixels) per partial row sum of the nll.
  module.attr("LOGISTIC_ROW_PARTIAL_WIDTH") = fastvae::cpu::kLogisticRowPartialWidth;
  module.attr("LOGISTIC_MIXTURE_ROW_PARTIAL_WIDTH") = fastvae::cpu::kMixtureRowPartialWidth;
  module.attr("LOGISTIC_MIXTURE_MAX_COMPONENTS") = fastvae::kMaxMixtureComponents;
  module.def(
      "discretized_logistic_fwd",
      [](Address mean, Address log_scale, Address x, Address nll, int64_t batch, int64_t features,
         int64_t row_partials, const PixelStrideArgs& row_strides, int top_level, float level_scale, float half,
         int dtype, int x_dtype, bool per_element) {
        fastvae::cpu::discretized_logistic_forward(
            discretized_logistic_forward_args(mean, log_scale, x, nll, batch, features, row_partials, row_strides,
                                              top_level, level_scale, half, dtype, x_dtype, per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "discretized_logistic_bwd",
      [](Address mean, Address log_scale, Address x, Address grad_nll, Address grad_mean, Address grad_log_scale,
         int64_t batch, int64_t features, const PixelStrideArgs& row_strides, int top_level, float level_scale,
         float half, int dtype, int x_dtype, bool grad_per_element) {
        fastvae::cpu::discretized_logistic_backward(
            discretized_logistic_backward_args(mean, log_scale, x, grad_nll, grad_mean, grad_log_scale, batch,
                                               features, row_strides, top_level, level_scale, half, dtype, x_dtype,
                                               grad_per_element));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "logistic_mixture_fwd",
      [](Address params, Address x, Address nll, Address grad_params, int64_t batch, int64_t pixels,
         int64_t components, int64_t pixel_partials, const PixelStrideArgs& params_strides,
         const PixelStrideArgs& x_strides, const PixelStrideArgs& grad_strides, int top_level, float level_scale,
         float half, int channels, int dtype, int x_dtype, bool per_pixel) {
        fastvae::cpu::logistic_mixture_forward(
            logistic_mixture_forward_args(params, x, nll, grad_params, batch, pixels, components, pixel_partials,
                                          params_strides, x_strides, grad_strides, top_level, level_scale, half,
                                          channels, dtype, x_dtype, per_pixel));
      },
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "logistic_mixture_bwd",
      [](Address params, Address x, Address grad_nll, Address grad_params, int64_t batch, int64_t pixels,
         int64_t components, const PixelStrideArgs& params_strides, const PixelStrideArgs& x_strides,
         const PixelStrideArgs& grad_strides, int top_level, float level_scale, float half, int channels, int dtype,
         int x_dtype, bool grad_per_pixel) {
        fastvae::cpu::logistic_mixture_backward(
            logistic_mixture_backward_args(params, x, grad_nll, grad_params, batch, pixels, components,
                                           params_strides, x_strides, grad_strides, top_level, level_scale, half,
                                           channels, dtype, x_dtype, grad_per_pixel));
      },
      py::call_guard<py::gil_scoped_release>());
  // Location-scale family.  Columns per partial row sum of log q and the KL: 0, the CPU sums each row whole.
  module.attr("LOCATION_SCALE_ROW_PARTIAL_WIDTH") = 0;
  // Named arguments: the launcher (fastvae/native/location_scale.py) passes each by name.
  module.def(
      "location_scale_fwd",
      [](Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset, Address z,
         Address log_q, Address kl, int64_t batch, int64_t features, int64_t row_partials,
         const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, int dtype,
         int prior_dtype, int family, int log_q_mode, int kl_mode) {
        fastvae::cpu::location_scale_forward(location_scale_forward_args(
            loc, log_scale, prior_loc, prior_log_scale, seed_offset, z, log_q, kl, batch, features, row_partials,
            prior_loc_layout, prior_log_scale_layout, sizes, dtype, prior_dtype, family, log_q_mode, kl_mode));
      },
      py::arg("loc"), py::arg("log_scale"), py::arg("prior_loc"), py::arg("prior_log_scale"), py::arg("seed_offset"),
      py::arg("z"), py::arg("log_q"), py::arg("kl"), py::arg("batch"), py::arg("features"), py::arg("row_partials"),
      py::arg("prior_loc_layout"), py::arg("prior_log_scale_layout"), py::arg("sizes"), py::arg("dtype"),
      py::arg("prior_dtype"), py::arg("family"), py::arg("log_q_mode"), py::arg("kl_mode"),
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "location_scale_bwd",
      [](Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset,
         Address grad_z, Address grad_log_q, Address grad_kl, Address grad_loc, Address grad_log_scale,
         Address grad_prior_loc, Address grad_prior_log_scale, int64_t batch, int64_t features,
         const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, int dtype,
         int prior_dtype, int grad_prior_loc_dtype, int grad_prior_log_scale_dtype, int family,
         bool grad_log_q_per_element, bool grad_kl_per_element) {
        fastvae::cpu::location_scale_backward(location_scale_backward_args(
            loc, log_scale, prior_loc, prior_log_scale, seed_offset, grad_z, grad_log_q, grad_kl, grad_loc,
            grad_log_scale, grad_prior_loc, grad_prior_log_scale, batch, features, prior_loc_layout,
            prior_log_scale_layout, sizes, dtype, prior_dtype, grad_prior_loc_dtype, grad_prior_log_scale_dtype, family,
            grad_log_q_per_element, grad_kl_per_element));
      },
      py::arg("loc"), py::arg("log_scale"), py::arg("prior_loc"), py::arg("prior_log_scale"), py::arg("seed_offset"),
      py::arg("grad_z"), py::arg("grad_log_q"), py::arg("grad_kl"), py::arg("grad_loc"), py::arg("grad_log_scale"),
      py::arg("grad_prior_loc"), py::arg("grad_prior_log_scale"), py::arg("batch"), py::arg("features"),
      py::arg("prior_loc_layout"), py::arg("prior_log_scale_layout"), py::arg("sizes"), py::arg("dtype"),
      py::arg("prior_dtype"), py::arg("grad_prior_loc_dtype"), py::arg("grad_prior_log_scale_dtype"),
      py::arg("family"), py::arg("grad_log_q_per_element"), py::arg("grad_kl_per_element"),
      py::call_guard<py::gil_scoped_release>());
  // The noise stream itself, for tests that hold every backend to the same numbers: the
  // normals with the CPU loops' elementary functions, as the latent family draws them.
  module.def(
      "philox_normal",
      [](int64_t seed, int64_t base, int64_t count, Address out) {
        float* values = pointer<float>(out);
        for (int64_t i = 0; i < count; ++i) {
          values[i] = fastvae::philox_normal<fastvae::cpu::VectorMath>(static_cast<uint64_t>(seed),
                                                                      static_cast<uint64_t>(base + i));
        }
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
  // Truncated-normal latent.  Columns per partial row sum of log q and the KL: 0, the CPU sums each row whole.
  module.attr("TRUNCATED_NORMAL_ROW_PARTIAL_WIDTH") = 0;
  // Named arguments: the launcher (fastvae/native/truncated_normal.py) passes each by name.
  module.def(
      "truncated_normal_fwd",
      [](Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset, Address z,
         Address log_q, Address kl, int64_t batch, int64_t features, int64_t row_partials,
         const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, double low,
         double high, int dtype, int prior_dtype, bool per_element) {
        fastvae::cpu::truncated_normal_forward(truncated_normal_forward_args(
            loc, log_scale, prior_loc, prior_log_scale, seed_offset, z, log_q, kl, batch, features, row_partials,
            prior_loc_layout, prior_log_scale_layout, sizes, low, high, dtype, prior_dtype, per_element));
      },
      py::arg("loc"), py::arg("log_scale"), py::arg("prior_loc"), py::arg("prior_log_scale"), py::arg("seed_offset"),
      py::arg("z"), py::arg("log_q"), py::arg("kl"), py::arg("batch"), py::arg("features"), py::arg("row_partials"),
      py::arg("prior_loc_layout"), py::arg("prior_log_scale_layout"), py::arg("sizes"), py::arg("low"),
      py::arg("high"), py::arg("dtype"), py::arg("prior_dtype"), py::arg("per_element"),
      py::call_guard<py::gil_scoped_release>());
  module.def(
      "truncated_normal_bwd",
      [](Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset,
         Address grad_z, Address grad_log_q, Address grad_kl, Address grad_loc, Address grad_log_scale,
         Address grad_prior_loc, Address grad_prior_log_scale, int64_t batch, int64_t features,
         const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, double low,
         double high, int dtype, int prior_dtype, int grad_prior_loc_dtype, int grad_prior_log_scale_dtype,
         bool grad_per_element) {
        fastvae::cpu::truncated_normal_backward(truncated_normal_backward_args(
            loc, log_scale, prior_loc, prior_log_scale, seed_offset, grad_z, grad_log_q, grad_kl, grad_loc,
            grad_log_scale, grad_prior_loc, grad_prior_log_scale, batch, features, prior_loc_layout,
            prior_log_scale_layout, sizes, low, high, dtype, prior_dtype, grad_prior_loc_dtype,
            grad_prior_log_scale_dtype, grad_per_element));
      },
      py::arg("loc"), py::arg("log_scale"), py::arg("prior_loc"), py::arg("prior_log_scale"), py::arg("seed_offset"),
      py::arg("grad_z"), py::arg("grad_log_q"), py::arg("grad_kl"), py::arg("grad_loc"), py::arg("grad_log_scale"),
      py::arg("grad_prior_loc"), py::arg("grad_prior_log_scale"), py::arg("batch"), py::arg("features"),
      py::arg("prior_loc_layout"), py::arg("prior_log_scale_layout"), py::arg("sizes"), py::arg("low"),
      py::arg("high"), py::arg("dtype"), py::arg("prior_dtype"), py::arg("grad_prior_loc_dtype"),
      py::arg("grad_prior_log_scale_dtype"), py::arg("grad_per_element"),
      py::call_guard<py::gil_scoped_release>());
  // Diffusion ops.  Columns per task and per partial row sum of Σ(ε − ε̂)² and ∂γ.
  module.attr("DIFFUSION_ROW_PARTIAL_WIDTH") = fastvae::cpu::kDiffusionRowPartialWidth;
  // Named arguments: the launcher (fastvae/native/diffusion.py) passes each by name.
  module.def(
      "diffuse_fwd",
      [](Address x, Address gamma, Address seed_offset, Address z, int64_t batch, int64_t features, int x_dtype,
         int gamma_dtype, int z_dtype) {
        fastvae::cpu::diffuse_forward(
            diffuse_forward_args(x, gamma, seed_offset, z, batch, features, x_dtype, gamma_dtype, z_dtype));
      },
      py::arg("x"), py::arg("gamma"), py::arg("seed_offset"), py::arg("z"), py::arg("batch"), py::arg("features"),
      py::arg("x_dtype"), py::arg("gamma_dtype"), py::arg("z_dtype"), py::call_guard<py::gil_scoped_release>());
  module.def(
      "diffuse_bwd",
      [](Address grad_z, Address x, Address gamma, Address seed_offset, Address grad_x, Address grad_gamma,
         int64_t batch, int64_t features, int64_t row_partials, int grad_z_dtype, int x_dtype, int gamma_dtype) {
        check_row_partials("diffuse_bwd", features, row_partials, fastvae::cpu::kDiffusionRowPartialWidth);
        fastvae::cpu::diffuse_backward(diffuse_backward_args(grad_z, x, gamma, seed_offset, grad_x, grad_gamma,
                                                             batch, features, row_partials, grad_z_dtype, x_dtype,
                                                             gamma_dtype));
      },
      py::arg("grad_z"), py::arg("x"), py::arg("gamma"), py::arg("seed_offset"), py::arg("grad_x"),
      py::arg("grad_gamma"), py::arg("batch"), py::arg("features"), py::arg("row_partials"), py::arg("grad_z_dtype"),
      py::arg("x_dtype"), py::arg("gamma_dtype"), py::call_guard<py::gil_scoped_release>());
  module.def(
      "diffusion_loss_fwd",
      [](Address eps_hat, Address seed_offset, Address weight, Address loss, Address squared_error, int64_t batch,
         int64_t features, int64_t row_partials, int eps_hat_dtype, int weight_dtype) {
        check_row_partials("diffusion_loss_fwd", features, row_partials, fastvae::cpu::kDiffusionRowPartialWidth);
        fastvae::cpu::diffusion_loss_forward(diffusion_loss_forward_args(eps_hat, seed_offset, weight, loss,
                                                                         squared_error, batch, features, row_partials,
                                                                         eps_hat_dtype, weight_dtype));
      },
      py::arg("eps_hat"), py::arg("seed_offset"), py::arg("weight"), py::arg("loss"), py::arg("squared_error"),
      py::arg("batch"), py::arg("features"), py::arg("row_partials"), py::arg("eps_hat_dtype"),
      py::arg("weight_dtype"), py::call_guard<py::gil_scoped_release>());
  module.def(
      "diffusion_loss_bwd",
      [](Address grad_loss, Address eps_hat, Address seed_offset, Address weight, Address grad_eps_hat,
         int64_t batch, int64_t features, int eps_hat_dtype, int weight_dtype) {
        fastvae::cpu::diffusion_loss_backward(diffusion_loss_backward_args(
            grad_loss, eps_hat, seed_offset, weight, grad_eps_hat, batch, features, eps_hat_dtype, weight_dtype));
      },
      py::arg("grad_loss"), py::arg("eps_hat"), py::arg("seed_offset"), py::arg("weight"), py::arg("grad_eps_hat"),
      py::arg("batch"), py::arg("features"), py::arg("eps_hat_dtype"), py::arg("weight_dtype"),
      py::call_guard<py::gil_scoped_release>());
}
