// The CUDA launchers, one per kernel (same names and argument structs as csrc/cpu/ops.h).
#pragma once

#include <cuda_runtime.h>

#include "fastvae/diffusion_args.h"
#include "fastvae/discrete_args.h"
#include "fastvae/iwae_args.h"
#include "fastvae/latent_args.h"
#include "fastvae/likelihood_args.h"
#include "fastvae/location_scale_args.h"
#include "fastvae/logistic_args.h"
#include "fastvae/truncated_normal_args.h"

namespace fastvae {
namespace cuda {

// Columns each warp covers in the latent kernels; the KL of a row comes back as one
// partial sum per such chunk, added by the Python launcher in a fixed order.
constexpr int kLatentChunk = 128;

void gaussian_latent_forward(const LatentForwardArgs& args, cudaStream_t stream);
void gaussian_latent_backward(const LatentBackwardArgs& args, cudaStream_t stream);

// Columns each warp covers in the sample_gaussian_k forward; log q and log p of a sample
// row come back as one partial sum per such chunk, added in a fixed order in Python.
constexpr int kSampleKChunk = 128;

void sample_gaussian_k_forward(const SampleKForwardArgs& args, cudaStream_t stream);
void sample_gaussian_k_backward(const SampleKBackwardArgs& args, cudaStream_t stream);
// log_mean_exp and iwae_bound (the log-mean-exp of the IWAE log weights).
void log_mean_exp_forward(const LogMeanExpForwardArgs& args, cudaStream_t stream);
void log_mean_exp_backward(const LogMeanExpBackwardArgs& args, cudaStream_t stream);

// sample_categorical: Gumbel-softmax sample and categorical KL.
void categorical_forward(const CategoricalForwardArgs& args, cudaStream_t stream);
void categorical_backward(const CategoricalBackwardArgs& args, cudaStream_t stream);

// Discretized logistic and its mixture: columns (pixels) each block covers; a row's nll
// comes back as one partial sum per such chunk, added in a fixed order in Python.
constexpr int kLogisticChunk = 1024;
constexpr int kMixtureChunk = 128;

void discretized_logistic_forward(const LogisticForwardArgs& args, cudaStream_t stream);
void discretized_logistic_backward(const LogisticBackwardArgs& args, cudaStream_t stream);
void logistic_mixture_forward(const LogisticMixtureForwardArgs& args, cudaStream_t stream);
void logistic_mixture_backward(const LogisticMixtureBackwardArgs& args, cudaStream_t stream);

// Reconstruction likelihoods: Bernoulli and continuous Bernoulli, Gaussian.  Columns each
// warp covers; a row's nll comes back as one partial sum per such chunk, added in a fixed
// order in Python.
constexpr int kLikelihoodChunk = 128;

void bernoulli_nll_forward(const BernoulliForwardArgs& args, cudaStream_t stream);
void bernoulli_nll_backward(const BernoulliBackwardArgs& args, cudaStream_t stream);
void gaussian_nll_forward(const GaussianNLLForwardArgs& args, cudaStream_t stream);
void gaussian_nll_backward(const GaussianNLLBackwardArgs& args, cudaStream_t stream);

// Location-scale latents (Laplace, logistic, Cauchy): log q and the KL of a row come back
// as one partial sum per kLatentChunk columns, added in a fixed order in Python.
void location_scale_forward(const LocationScaleForwardArgs& args, cudaStream_t stream);
void location_scale_backward(const LocationScaleBackwardArgs& args, cudaStream_t stream);

// sample_truncated_normal: the truncated-normal latent (sample, log q, KL estimate).
// Columns per partial row sum of log q and the KL (one warp's chunk), added in a fixed
// order in Python.
constexpr int kTruncatedNormalChunk = 256;
void truncated_normal_forward(const TruncatedNormalForwardArgs& args, cudaStream_t stream);
void truncated_normal_backward(const TruncatedNormalBackwardArgs& args, cudaStream_t stream);

// diffuse and diffusion_loss.  Columns each warp covers; Σ(ε − ε̂)² and ∂γ of a row come
// back as one partial sum per such chunk, added in a fixed order in Python.
constexpr int kDiffusionChunk = 128;
void diffuse_forward(const DiffuseForwardArgs& args, cudaStream_t stream);
void diffuse_backward(const DiffuseBackwardArgs& args, cudaStream_t stream);
void diffusion_loss_forward(const DiffusionLossForwardArgs& args, cudaStream_t stream);
void diffusion_loss_backward(const DiffusionLossBackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastvae
