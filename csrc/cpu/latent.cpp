// Gaussian latent family on the CPU: the per-element math of fastvae/latent.h in loops
// over rows, parallel over rows with OpenMP.  Each row's KL is summed in column order, so
// results do not depend on the number of threads.
#include "fastvae/dispatch.h"
#include "fastvae/latent_args.h"
#include "fastvae/philox.h"

namespace fastvae {
namespace cpu {

namespace {

template <typename T, typename P>
void latent_forward(const LatentForwardArgs& args) {
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  T* z = static_cast<T*>(args.z);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[0] : 0);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[1] : 0);
  const int64_t features = args.features;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < args.batch; ++row) {
    float row_kl = 0.0f;
    for (int64_t col = 0; col < features; ++col) {
      const int64_t index = row * features + col;
      const float mu_value = to_float(mu[index]);
      const float logvar_value = to_float(logvar[index]);
      if (z) {
        const float eps = philox_normal(seed, base + static_cast<uint64_t>(index));
        z[index] = from_float<T>(mu_value + expf(0.5f * logvar_value) * eps);
      }
      if (args.kl_mode == kKLNone) continue;
      const float prior_mu_value =
          prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, row, col)]) : 0.0f;
      const float prior_logvar_value =
          prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, row, col)]) : 0.0f;
      const float kl = gaussian_kl(mu_value, logvar_value, prior_mu_value, prior_logvar_value);
      if (args.kl_mode == kKLElement) {
        args.kl[index] = kl;
      } else {
        row_kl += kl;
      }
    }
    if (args.kl_mode == kKLRow) args.kl[row] = row_kl;
  }
}

template <typename T, typename P>
void latent_backward(const LatentBackwardArgs& args) {
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_mu = static_cast<T*>(args.grad_mu);
  T* grad_logvar = static_cast<T*>(args.grad_logvar);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[0] : 0);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[1] : 0);
  const int64_t features = args.features;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < args.batch; ++row) {
    for (int64_t col = 0; col < features; ++col) {
      const int64_t index = row * features + col;
      const float mu_value = to_float(mu[index]);
      const float logvar_value = to_float(logvar[index]);
      float d_mu = 0.0f, d_logvar = 0.0f;
      if (grad_z) {
        // dz/dmu = 1, dz/dlogvar = σ·ε/2, with ε regenerated rather than stored.
        const float upstream = to_float(grad_z[index]);
        const float eps = philox_normal(seed, base + static_cast<uint64_t>(index));
        d_mu += upstream;
        d_logvar += upstream * 0.5f * expf(0.5f * logvar_value) * eps;
      }
      if (args.grad_kl) {
        const float upstream = args.grad_kl_per_element ? args.grad_kl[index] : args.grad_kl[row];
        const float prior_mu_value =
            prior_mu ? to_float(prior_mu[broadcast_offset(args.prior_mu_layout, args.sizes, row, col)]) : 0.0f;
        const float prior_logvar_value =
            prior_logvar ? to_float(prior_logvar[broadcast_offset(args.prior_logvar_layout, args.sizes, row, col)]) : 0.0f;
        const GaussianKLGrads grads = gaussian_kl_grads(mu_value, logvar_value, prior_mu_value, prior_logvar_value, upstream);
        d_mu += grads.mu;
        d_logvar += grads.logvar;
        if (args.grad_prior_mu) args.grad_prior_mu[index] = grads.prior_mu;
        if (args.grad_prior_logvar) args.grad_prior_logvar[index] = grads.prior_logvar;
      }
      grad_mu[index] = from_float<T>(d_mu);
      grad_logvar[index] = from_float<T>(d_logvar);
    }
  }
}

}  // namespace

void gaussian_latent_forward(const LatentForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_fwd", P, [&] { latent_forward<T, P>(args); });
  });
}

void gaussian_latent_backward(const LatentBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "gaussian_latent_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "gaussian_latent_bwd", P, [&] { latent_backward<T, P>(args); });
  });
}

}  // namespace cpu
}  // namespace fastvae
