// The CPU launchers, one per kernel of csrc/cuda/ (same names, same argument structs).
#pragma once

#include "fastvae/diffusion_args.h"
#include "fastvae/discrete_args.h"
#include "fastvae/iwae_args.h"
#include "fastvae/latent_args.h"
#include "fastvae/likelihood_args.h"
#include "fastvae/location_scale_args.h"
#include "fastvae/logistic_args.h"
#include "fastvae/truncated_normal_args.h"

namespace fastvae {
namespace cpu {

void gaussian_latent_forward(const LatentForwardArgs& args);
void gaussian_latent_backward(const LatentBackwardArgs& args);
// The benchmark's floor of the sampling loops: count normals of (seed, offset + i) into
// out, with the Philox and Box–Muller code of the latent loops and nothing else.
void philox_normal_floor(float* out, int64_t count, uint64_t seed, uint64_t offset);

void sample_gaussian_k_forward(const SampleKForwardArgs& args);
void sample_gaussian_k_backward(const SampleKBackwardArgs& args);
// log_mean_exp and iwae_bound (the log-mean-exp of the IWAE log weights).
void log_mean_exp_forward(const LogMeanExpForwardArgs& args);
void log_mean_exp_backward(const LogMeanExpBackwardArgs& args);

// sample_categorical: Gumbel-softmax sample and categorical KL.
void categorical_forward(const CategoricalForwardArgs& args);
void categorical_backward(const CategoricalBackwardArgs& args);

// Reconstruction likelihoods: Bernoulli and continuous Bernoulli, Gaussian.  Columns per
// task (and per partial row sum of the nll, added in a fixed order in Python), so a small
// batch of large samples still spreads over the threads.
constexpr int64_t kLikelihoodChunk = 8192;
void bernoulli_nll_forward(const BernoulliForwardArgs& args);
void bernoulli_nll_backward(const BernoulliBackwardArgs& args);
void gaussian_nll_forward(const GaussianNLLForwardArgs& args);
void gaussian_nll_backward(const GaussianNLLBackwardArgs& args);

// Discretized logistic and its mixture.  Columns (pixels) per task and per partial row sum
// of the nll, added in a fixed order in Python.
constexpr int64_t kLogisticRowPartialWidth = 4096;
constexpr int64_t kMixtureRowPartialWidth = 64;
void discretized_logistic_forward(const LogisticForwardArgs& args);
void discretized_logistic_backward(const LogisticBackwardArgs& args);
void logistic_mixture_forward(const LogisticMixtureForwardArgs& args);
void logistic_mixture_backward(const LogisticMixtureBackwardArgs& args);

// Location-scale latents (Laplace, logistic, Cauchy): each row's log q and KL summed whole.
void location_scale_forward(const LocationScaleForwardArgs& args);
void location_scale_backward(const LocationScaleBackwardArgs& args);

// sample_truncated_normal: the truncated-normal latent (sample, log q, KL estimate).
void truncated_normal_forward(const TruncatedNormalForwardArgs& args);
void truncated_normal_backward(const TruncatedNormalBackwardArgs& args);

// diffuse and diffusion_loss.  Columns per task and per partial row sum (Σ(ε − ε̂)², ∂γ),
// added in a fixed order in Python, so a small batch of long rows still spreads over the
// threads.
constexpr int64_t kDiffusionRowPartialWidth = 8192;
void diffuse_forward(const DiffuseForwardArgs& args);
void diffuse_backward(const DiffuseBackwardArgs& args);
void diffusion_loss_forward(const DiffusionLossForwardArgs& args);
void diffusion_loss_backward(const DiffusionLossBackwardArgs& args);

}  // namespace cpu
}  // namespace fastvae
