// Host-only: how Python arguments (raw addresses as ints, sizes, dtype codes) become the
// launchers' argument structs.  Shared by fastvae._C (CPU) and fastvae._C_cuda (CUDA), so
// both modules take exactly the same arguments (the CUDA one adds the stream).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastvae/discrete_args.h"
#include "fastvae/iwae_args.h"
#include "fastvae/latent_args.h"
#include "fastvae/likelihood_args.h"
#include "fastvae/location_scale_args.h"
#include "fastvae/logistic_args.h"

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

// An output written through store_float_as: its dtype code must be one the kernels know.
inline void check_output_dtype(const char* kernel, const char* name, Address data, int dtype) {
  if (data != 0 && dtype != kFloat32 && dtype != kBFloat16 && dtype != kFloat16) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": " + name + " has unsupported dtype code " +
                                std::to_string(dtype));
  }
}

inline LatentBackwardArgs latent_backward_args(Address mu, Address logvar, Address prior_mu, Address prior_logvar,
                                               Address seed_offset, Address z, Address grad_z, Address grad_kl,
                                               Address grad_mu, Address grad_logvar, Address grad_prior_mu,
                                               Address grad_prior_logvar, int64_t batch, int64_t features,
                                               const Layout& prior_mu_layout, const Layout& prior_logvar_layout,
                                               const Sizes& sizes, int dtype, int prior_dtype, int grad_prior_mu_dtype,
                                               int grad_prior_logvar_dtype, bool grad_kl_per_element) {
  check_output_dtype("gaussian_latent_bwd", "grad_prior_mu", grad_prior_mu, grad_prior_mu_dtype);
  check_output_dtype("gaussian_latent_bwd", "grad_prior_logvar", grad_prior_logvar, grad_prior_logvar_dtype);
  return LatentBackwardArgs{pointer<const void>(mu), pointer<const void>(logvar), pointer<const void>(prior_mu),
                            pointer<const void>(prior_logvar), pointer<const int64_t>(seed_offset),
                            pointer<const void>(z), pointer<const void>(grad_z), pointer<const float>(grad_kl),
                            pointer<void>(grad_mu), pointer<void>(grad_logvar), pointer<void>(grad_prior_mu),
                            pointer<void>(grad_prior_logvar), batch, features, layout(prior_mu_layout),
                            layout(prior_logvar_layout), InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype,
                            grad_prior_mu_dtype, grad_prior_logvar_dtype, grad_kl_per_element};
}

inline SampleKForwardArgs sample_gaussian_k_forward_args(Address mu, Address logvar, Address prior_mu,
                                                         Address prior_logvar, Address seed_offset, Address z,
                                                         Address log_q, Address log_p, int64_t num_samples,
                                                         int64_t batch, int64_t features, int64_t row_partials,
                                                         const Layout& prior_mu_layout,
                                                         const Layout& prior_logvar_layout, const Sizes& sizes,
                                                         int dtype, int prior_dtype) {
  return SampleKForwardArgs{pointer<const void>(mu), pointer<const void>(logvar), pointer<const void>(prior_mu),
                            pointer<const void>(prior_logvar), pointer<const int64_t>(seed_offset), pointer<void>(z),
                            pointer<float>(log_q), pointer<float>(log_p), num_samples, batch, features,
                            row_partials, layout(prior_mu_layout), layout(prior_logvar_layout),
                            InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype};
}

inline SampleKBackwardArgs sample_gaussian_k_backward_args(
    Address mu, Address logvar, Address prior_mu, Address prior_logvar, Address seed_offset, Address grad_z,
    Address grad_log_q, Address grad_log_p, Address grad_mu, Address grad_logvar, Address grad_prior_mu,
    Address grad_prior_logvar, int64_t num_samples, int64_t batch, int64_t features, const Layout& prior_mu_layout,
    const Layout& prior_logvar_layout, const Sizes& sizes, int dtype, int prior_dtype, int grad_prior_mu_dtype,
    int grad_prior_logvar_dtype) {
  check_output_dtype("sample_gaussian_k_bwd", "grad_prior_mu", grad_prior_mu, grad_prior_mu_dtype);
  check_output_dtype("sample_gaussian_k_bwd", "grad_prior_logvar", grad_prior_logvar, grad_prior_logvar_dtype);
  return SampleKBackwardArgs{pointer<const void>(mu), pointer<const void>(logvar), pointer<const void>(prior_mu),
                             pointer<const void>(prior_logvar), pointer<const int64_t>(seed_offset),
                             pointer<const void>(grad_z), pointer<const float>(grad_log_q),
                             pointer<const float>(grad_log_p), pointer<void>(grad_mu), pointer<void>(grad_logvar),
                             pointer<void>(grad_prior_mu), pointer<void>(grad_prior_logvar), num_samples, batch,
                             features, layout(prior_mu_layout), layout(prior_logvar_layout),
                             InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype, grad_prior_mu_dtype,
                             grad_prior_logvar_dtype};
}

// The kernels read log_q whenever log_p is given, and index columns modulo inner.
inline void check_log_mean_exp_args(const char* kernel, Address log_p, Address log_q, int64_t columns,
                                    int64_t inner) {
  if ((log_p == 0) != (log_q == 0)) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": log_p and log_q are given together or not at all");
  }
  if (columns > 0 && inner <= 0) throw std::invalid_argument(std::string("fastvae ") + kernel + ": inner must be positive");
}

inline LogMeanExpForwardArgs log_mean_exp_forward_args(Address x, Address log_p, Address log_q, Address out,
                                                       Address lse_parts, int64_t num_samples, int64_t columns,
                                                       int64_t inner, float log_num_samples, int dtype) {
  check_log_mean_exp_args("log_mean_exp_fwd", log_p, log_q, columns, inner);
  return LogMeanExpForwardArgs{pointer<const void>(x), pointer<const void>(log_p), pointer<const void>(log_q),
                               pointer<float>(out), pointer<float>(lse_parts), num_samples, columns, inner,
                               log_num_samples, dtype};
}

inline LogMeanExpBackwardArgs log_mean_exp_backward_args(Address x, Address log_p, Address log_q, Address lse_parts,
                                                         Address grad_out, Address grad_x, Address grad_log_p,
                                                         Address grad_log_q, int64_t num_samples, int64_t columns,
                                                         int64_t inner, int dtype) {
  check_log_mean_exp_args("log_mean_exp_bwd", log_p, log_q, columns, inner);
  return LogMeanExpBackwardArgs{pointer<const void>(x), pointer<const void>(log_p), pointer<const void>(log_q),
                                pointer<const float>(lse_parts), pointer<const float>(grad_out), pointer<void>(grad_x),
                                pointer<void>(grad_log_p), pointer<void>(grad_log_q), num_samples, columns, inner,
                                dtype};
}

// Discrete family.  A categorical prior layout is (stride0, stride1, category stride, size1).
inline CategoricalPriorLayout categorical_layout(const Layout& layout) {
  return CategoricalPriorLayout{layout[0], layout[1], layout[2], layout[3]};
}

// What the kernels rely on and a wrong call would turn into a bad read or a division by 0.
inline void check_categorical_args(const char* kernel, Address prior_logits, const Layout& prior_layout,
                                   int64_t rows, int64_t categories, bool needs_seed, Address seed_offset) {
  const std::string name = std::string("fastvae ") + kernel;
  if (rows < 0 || categories < 0) throw std::invalid_argument(name + ": rows and categories must be >= 0");
  if (prior_logits != 0 && prior_layout[3] <= 0) throw std::invalid_argument(name + ": the prior's size1 must be positive");
  if (needs_seed && seed_offset == 0) throw std::invalid_argument(name + ": the seed_offset tensor is missing");
}

inline CategoricalForwardArgs categorical_forward_args(Address logits, Address prior_logits, Address seed_offset,
                                                       Address z, Address kl, int64_t rows, int64_t categories,
                                                       const Layout& prior_layout, float tau, float log_uniform,
                                                       int dtype, int prior_dtype, bool hard) {
  check_categorical_args("categorical_fwd", prior_logits, prior_layout, rows, categories, true, seed_offset);
  return CategoricalForwardArgs{pointer<const void>(logits), pointer<const void>(prior_logits),
                                pointer<const int64_t>(seed_offset), pointer<void>(z), pointer<float>(kl), rows,
                                categories, categorical_layout(prior_layout), tau, log_uniform, dtype, prior_dtype,
                                hard};
}

inline CategoricalBackwardArgs categorical_backward_args(Address logits, Address prior_logits, Address seed_offset,
                                                         Address grad_z, Address grad_kl, Address grad_logits,
                                                         Address grad_prior, int64_t rows, int64_t categories,
                                                         const Layout& prior_layout, float tau, float log_uniform,
                                                         int dtype, int prior_dtype, int grad_prior_dtype) {
  check_categorical_args("categorical_bwd", prior_logits, prior_layout, rows, categories, grad_z != 0, seed_offset);
  if (grad_prior != 0 && (prior_logits == 0 || grad_kl == 0)) {
    throw std::invalid_argument("fastvae categorical_bwd: grad_prior needs prior_logits and grad_kl");
  }
  if (grad_prior != 0 && grad_prior_dtype != kFloat32 && grad_prior_dtype != prior_dtype) {
    throw std::invalid_argument("fastvae categorical_bwd: grad_prior is float32 or in the prior's dtype");
  }
  return CategoricalBackwardArgs{pointer<const void>(logits), pointer<const void>(prior_logits),
                                 pointer<const int64_t>(seed_offset), pointer<const void>(grad_z),
                                 pointer<const float>(grad_kl), pointer<void>(grad_logits), pointer<void>(grad_prior),
                                 rows, categories, categorical_layout(prior_layout), tau, log_uniform, dtype,
                                 prior_dtype, grad_prior_dtype};
}

// Likelihood family.  What the kernels rely on and a wrong call would turn into a bad read
// or a division by 0.
inline void check_likelihood_args(const char* kernel, int64_t batch, int64_t features, int64_t row_partials,
                                  const Sizes& sizes) {
  const std::string name = std::string("fastvae ") + kernel;
  if (batch < 0 || features < 0) throw std::invalid_argument(name + ": batch and features must be >= 0");
  if (row_partials < 1) throw std::invalid_argument(name + ": row_partials must be >= 1");
  if (sizes[0] <= 0 || sizes[1] <= 0) throw std::invalid_argument(name + ": the inner sizes must be positive");
}

inline BernoulliForwardArgs bernoulli_nll_forward_args(Address logits, Address x, Address nll, int64_t batch,
                                                       int64_t features, int64_t row_partials, int dtype,
                                                       int x_dtype, bool continuous, bool per_element) {
  check_likelihood_args("bernoulli_nll_fwd", batch, features, row_partials, Sizes{1, 1});
  return BernoulliForwardArgs{pointer<const void>(logits), pointer<const void>(x), pointer<float>(nll), batch,
                              features, row_partials, dtype, x_dtype, continuous, per_element};
}

inline BernoulliBackwardArgs bernoulli_nll_backward_args(Address logits, Address x, Address grad_nll,
                                                         Address grad_logits, Address grad_x, int64_t batch,
                                                         int64_t features, int dtype, int x_dtype, bool continuous,
                                                         bool grad_per_element) {
  check_likelihood_args("bernoulli_nll_bwd", batch, features, 1, Sizes{1, 1});
  if (grad_nll == 0) throw std::invalid_argument("fastvae bernoulli_nll_bwd: grad_nll is missing");
  if (grad_x != 0 && x_dtype == kTargetUInt8) {
    throw std::invalid_argument("fastvae bernoulli_nll_bwd: a uint8 x has no gradient");
  }
  return BernoulliBackwardArgs{pointer<const void>(logits), pointer<const void>(x), pointer<const float>(grad_nll),
                               pointer<void>(grad_logits), pointer<void>(grad_x), batch, features, dtype, x_dtype,
                               continuous, grad_per_element};
}

inline GaussianNLLForwardArgs gaussian_nll_forward_args(Address mean, Address x, Address logvar, Address nll,
                                                        int64_t batch, int64_t features, int64_t row_partials,
                                                        const Layout& logvar_layout, const Sizes& sizes,
                                                        float logvar_value, int dtype, int x_dtype, int logvar_dtype,
                                                        bool per_element) {
  check_likelihood_args("gaussian_nll_fwd", batch, features, row_partials, sizes);
  return GaussianNLLForwardArgs{pointer<const void>(mean), pointer<const void>(x), pointer<const void>(logvar),
                                pointer<float>(nll), batch, features, row_partials, layout(logvar_layout),
                                InnerSizes{sizes[0], sizes[1]}, logvar_value, dtype, x_dtype, logvar_dtype,
                                per_element};
}

inline GaussianNLLBackwardArgs gaussian_nll_backward_args(Address mean, Address x, Address logvar, Address grad_nll,
                                                          Address grad_mean, Address grad_x, Address grad_logvar,
                                                          int64_t batch, int64_t features, const Layout& logvar_layout,
                                                          const Sizes& sizes, float logvar_value, int dtype,
                                                          int x_dtype, int logvar_dtype, bool grad_per_element) {
  check_likelihood_args("gaussian_nll_bwd", batch, features, 1, sizes);
  if (grad_nll == 0) throw std::invalid_argument("fastvae gaussian_nll_bwd: grad_nll is missing");
  if (grad_logvar != 0 && logvar == 0) {
    throw std::invalid_argument("fastvae gaussian_nll_bwd: grad_logvar needs a logvar tensor");
  }
  return GaussianNLLBackwardArgs{pointer<const void>(mean), pointer<const void>(x), pointer<const void>(logvar),
                                 pointer<const float>(grad_nll), pointer<void>(grad_mean), pointer<void>(grad_x),
                                 pointer<void>(grad_logvar), batch, features, layout(logvar_layout),
                                 InnerSizes{sizes[0], sizes[1]}, logvar_value, dtype, x_dtype, logvar_dtype,
                                 grad_per_element};
}

// Logistic family.  Strides of a [B, channel, S] view, and the checks that keep a wrong
// call from turning into a bad read.
using PixelStrideArgs = std::array<int64_t, 3>;

inline PixelStrides pixel_strides(const PixelStrideArgs& strides) {
  return PixelStrides{strides[0], strides[1], strides[2]};
}

inline LogisticGrid logistic_grid(const char* kernel, int top_level, float level_scale, float half) {
  if (top_level < 1) throw std::invalid_argument(std::string("fastvae ") + kernel + ": num_bins must be >= 2");
  return LogisticGrid{top_level, level_scale, half};
}

inline void check_logistic_sizes(const char* kernel, int64_t batch, int64_t features) {
  if (batch < 0 || features < 0) throw std::invalid_argument(std::string("fastvae ") + kernel + ": sizes must be >= 0");
}

// Each pixel keeps one value per component in a fixed-size array (fastvae/logistic.h).
inline void check_mixture_components(const char* kernel, int64_t components) {
  if (components < 1 || components > kMaxMixtureComponents) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": discretized_logistic_mixture_nll takes 1 to " +
                                std::to_string(kMaxMixtureComponents) + " mixture components on the C++ backends, got " +
                                std::to_string(components));
  }
}

inline LogisticForwardArgs discretized_logistic_forward_args(Address mean, Address log_scale, Address x, Address nll,
                                                             int64_t batch, int64_t features, int64_t row_partials,
                                                             const PixelStrideArgs& row_strides, int top_level,
                                                             float level_scale, float half, int dtype, int x_dtype,
                                                             bool per_element) {
  check_logistic_sizes("discretized_logistic_fwd", batch, features);
  return LogisticForwardArgs{pointer<const void>(mean), pointer<const void>(log_scale), pointer<const void>(x),
                             pointer<float>(nll), batch, features, row_partials, row_strides[0], row_strides[1],
                             row_strides[2], logistic_grid("discretized_logistic_fwd", top_level, level_scale, half),
                             dtype, x_dtype, per_element};
}

inline LogisticBackwardArgs discretized_logistic_backward_args(Address mean, Address log_scale, Address x,
                                                               Address grad_nll, Address grad_mean,
                                                               Address grad_log_scale, int64_t batch, int64_t features,
                                                               const PixelStrideArgs& row_strides, int top_level,
                                                               float level_scale, float half, int dtype, int x_dtype,
                                                               bool grad_per_element) {
  check_logistic_sizes("discretized_logistic_bwd", batch, features);
  return LogisticBackwardArgs{pointer<const void>(mean), pointer<const void>(log_scale), pointer<const void>(x),
                              pointer<const float>(grad_nll), pointer<void>(grad_mean), pointer<void>(grad_log_scale),
                              batch, features, row_strides[0], row_strides[1], row_strides[2],
                              logistic_grid("discretized_logistic_bwd", top_level, level_scale, half), dtype, x_dtype,
                              grad_per_element};
}

inline LogisticMixtureForwardArgs logistic_mixture_forward_args(
    Address params, Address x, Address nll, Address grad_params, int64_t batch, int64_t pixels, int64_t components,
    int64_t pixel_partials, const PixelStrideArgs& params_strides, const PixelStrideArgs& x_strides,
    const PixelStrideArgs& grad_strides, int top_level, float level_scale, float half, int channels, int dtype,
    int x_dtype, bool per_pixel) {
  check_logistic_sizes("logistic_mixture_fwd", batch, pixels);
  check_mixture_components("logistic_mixture_fwd", components);
  return LogisticMixtureForwardArgs{pointer<const void>(params), pointer<const void>(x), pointer<float>(nll),
                                    pointer<void>(grad_params), batch, pixels, components, pixel_partials,
                                    pixel_strides(params_strides), pixel_strides(x_strides),
                                    pixel_strides(grad_strides),
                                    logistic_grid("logistic_mixture_fwd", top_level, level_scale, half), channels,
                                    dtype, x_dtype, per_pixel};
}

inline LogisticMixtureBackwardArgs logistic_mixture_backward_args(
    Address params, Address x, Address grad_nll, Address grad_params, int64_t batch, int64_t pixels,
    int64_t components, const PixelStrideArgs& params_strides, const PixelStrideArgs& x_strides,
    const PixelStrideArgs& grad_strides, int top_level, float level_scale, float half, int channels, int dtype,
    int x_dtype, bool grad_per_pixel) {
  check_logistic_sizes("logistic_mixture_bwd", batch, pixels);
  check_mixture_components("logistic_mixture_bwd", components);
  return LogisticMixtureBackwardArgs{pointer<const void>(params), pointer<const void>(x),
                                     pointer<const float>(grad_nll), pointer<void>(grad_params), batch, pixels,
                                     components, pixel_strides(params_strides), pixel_strides(x_strides),
                                     pixel_strides(grad_strides),
                                     logistic_grid("logistic_mixture_bwd", top_level, level_scale, half), channels,
                                     dtype, x_dtype, grad_per_pixel};
}

// The location-scale family code must be one the kernels know.
inline void check_location_scale_family(const char* kernel, int family) {
  if (family != kLaplace && family != kLogistic && family != kCauchy) {
    throw std::invalid_argument(std::string("fastvae ") + kernel + ": unknown location-scale family code " +
                                std::to_string(family));
  }
}

inline LocationScaleForwardArgs location_scale_forward_args(
    Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset, Address z,
    Address log_q, Address kl, int64_t batch, int64_t features, int64_t row_partials,
    const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, int dtype,
    int prior_dtype, int family, int log_q_mode, int kl_mode) {
  check_location_scale_family("location_scale_fwd", family);
  return LocationScaleForwardArgs{pointer<const void>(loc), pointer<const void>(log_scale),
                                  pointer<const void>(prior_loc), pointer<const void>(prior_log_scale),
                                  pointer<const int64_t>(seed_offset), pointer<void>(z), pointer<float>(log_q),
                                  pointer<float>(kl), batch, features, row_partials, layout(prior_loc_layout),
                                  layout(prior_log_scale_layout), InnerSizes{sizes[0], sizes[1]}, dtype,
                                  prior_dtype, family, log_q_mode, kl_mode};
}

inline LocationScaleBackwardArgs location_scale_backward_args(
    Address loc, Address log_scale, Address prior_loc, Address prior_log_scale, Address seed_offset,
    Address grad_z, Address grad_log_q, Address grad_kl, Address grad_loc, Address grad_log_scale,
    Address grad_prior_loc, Address grad_prior_log_scale, int64_t batch, int64_t features,
    const Layout& prior_loc_layout, const Layout& prior_log_scale_layout, const Sizes& sizes, int dtype,
    int prior_dtype, int grad_prior_loc_dtype, int grad_prior_log_scale_dtype, int family,
    bool grad_log_q_per_element, bool grad_kl_per_element) {
  check_location_scale_family("location_scale_bwd", family);
  check_output_dtype("location_scale_bwd", "grad_prior_loc", grad_prior_loc, grad_prior_loc_dtype);
  check_output_dtype("location_scale_bwd", "grad_prior_log_scale", grad_prior_log_scale, grad_prior_log_scale_dtype);
  return LocationScaleBackwardArgs{pointer<const void>(loc), pointer<const void>(log_scale),
                                   pointer<const void>(prior_loc), pointer<const void>(prior_log_scale),
                                   pointer<const int64_t>(seed_offset), pointer<const void>(grad_z),
                                   pointer<const float>(grad_log_q), pointer<const float>(grad_kl),
                                   pointer<void>(grad_loc), pointer<void>(grad_log_scale),
                                   pointer<void>(grad_prior_loc), pointer<void>(grad_prior_log_scale), batch,
                                   features, layout(prior_loc_layout), layout(prior_log_scale_layout),
                                   InnerSizes{sizes[0], sizes[1]}, dtype, prior_dtype, grad_prior_loc_dtype,
                                   grad_prior_log_scale_dtype, family, grad_log_q_per_element,
                                   grad_kl_per_element};
}

}  // namespace bindings
}  // namespace fastvae
