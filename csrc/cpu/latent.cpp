// Gaussian latent family on the CPU: the per-element math of fastvae/latent.h and the
// Philox normals of fastvae/philox.h, parallel over rows with OpenMP.
//
// A row runs in tiles of kTile columns: the tile's inputs are loaded into float32 arrays
// (the priors gathered through their broadcast strides), then the math runs in SIMD loops
// with csrc/cpu/vector_math.h's elementary functions: Philox's ten rounds in 32-bit lanes
// (csrc/cpu/philox_tile.h: AVX2 intrinsics where the CPU has them), Box–Muller, the KL.
// Those loops take float32 only, so they are compiled once per target (baseline x86-64 and
// AVX2, picked at run time) and not once per dtype.  A row's KL is added up in float64
// lanes (csrc/cpu/row_sum.h), so its error does not grow with the row's length and the
// result does not depend on the number of threads; both targets compile the same source
// without floating-point contraction, so they give the same bits.
//
// GCC if-converts the selects of the branch-free math only when evaluating both sides may
// not trap; nothing here reads the floating-point exception flags.  Before the includes,
// so the inlined header functions are compiled alike.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "fastvae/dispatch.h"
#include "fastvae/latent_args.h"
#include "philox_tile.h"
#include "row_sum.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {


constexpr int kTile = 256;  // columns per SIMD loop
static_assert(kTile % 8 == 0, "philox_words_run_avx2 fills whole groups of eight");

// One tile of a row in float32.  Absent priors are zeros (the standard normal).  words0
// and words1: the first two Philox words of each column's counter, for Box–Muller.
struct LatentTile {
  uint32_t words0[kTile], words1[kTile];
  float mu[kTile], logvar[kTile], prior_mu[kTile], prior_logvar[kTile];
  float z[kTile], kl[kTile];                           // forward
  float grad_z[kTile], grad_kl[kTile];                 // backward: incoming
  float grad_mu[kTile], grad_logvar[kTile];            // backward: outgoing
  float grad_prior_mu[kTile], grad_prior_logvar[kTile];
};

// ---------------------------------------------------------------------------------------
// The SIMD loops
// ---------------------------------------------------------------------------------------

inline float tile_normal(const LatentTile& tile, int i) {
  return box_muller<VectorMath>(PhiloxWords{{tile.words0[i], tile.words1[i], 0u, 0u}});
}

// z = mu + e^(logvar/2)·ε, ε from the tile's Philox words.
inline void sample_body(LatentTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    tile.z[i] = tile.mu[i] + VectorMath::exp(0.5f * tile.logvar[i]) * tile_normal(tile, i);
  }
}

// kStandardPrior: the prior is N(0, I), its zeros constants rather than loaded, so that
// e^(−prior_logvar) folds away: one exp per element fewer, and the same bits.
template <bool kStandardPrior>
inline void kl_body(LatentTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float prior_mu = kStandardPrior ? 0.0f : tile.prior_mu[i];
    const float prior_logvar = kStandardPrior ? 0.0f : tile.prior_logvar[i];
    tile.kl[i] = gaussian_kl<VectorMath>(tile.mu[i], tile.logvar[i], prior_mu, prior_logvar);
  }
}

// dz/dmu = 1, dz/dlogvar = σ·ε/2, with ε regenerated (from the tile's Philox words)
// rather than stored.
inline void sample_grads_body(LatentTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float eps = tile_normal(tile, i);
    tile.grad_mu[i] += tile.grad_z[i];
    tile.grad_logvar[i] += tile.grad_z[i] * 0.5f * VectorMath::exp(0.5f * tile.logvar[i]) * eps;
  }
}

// The same from the sample: σ·ε = z − mu.  Philox's ten rounds of 32-bit products are
// most of the backward's time on a CPU; this reads one more tensor instead.  z − mu is
// σ·ε up to half an ulp of z.
inline void sample_grads_from_z_body(LatentTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    tile.grad_mu[i] += tile.grad_z[i];
    tile.grad_logvar[i] += tile.grad_z[i] * 0.5f * (tile.z[i] - tile.mu[i]);
  }
}

template <bool kStandardPrior>
inline void kl_grads_body(LatentTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float prior_mu = kStandardPrior ? 0.0f : tile.prior_mu[i];
    const float prior_logvar = kStandardPrior ? 0.0f : tile.prior_logvar[i];
    const GaussianKLGrads grads =
        gaussian_kl_grads<VectorMath>(tile.mu[i], tile.logvar[i], prior_mu, prior_logvar, tile.grad_kl[i]);
    tile.grad_mu[i] += grads.mu;
    tile.grad_logvar[i] += grads.logvar;
    tile.grad_prior_mu[i] = grads.prior_mu;
    tile.grad_prior_logvar[i] = grads.prior_logvar;
  }
}

// Each loop for this CPU, chosen once per call.
struct LatentMath {
  void (*sample)(LatentTile&, int, uint64_t, uint64_t);
  void (*sample_grads)(LatentTile&, int, uint64_t, uint64_t);
  void (*sample_grads_from_z)(LatentTile&, int);
  // Indexed by whether the prior is the standard normal.
  void (*kl[2])(LatentTile&, int);
  void (*kl_grads[2])(LatentTile&, int);
};

// The loops compiled for one target: PHILOX_WORDS fills the tile's Philox words.
#define FASTVAE_LATENT_LOOPS(SUFFIX, TARGET, PHILOX_WORDS)                                                    \
  TARGET void sample_##SUFFIX(LatentTile& tile, int width, uint64_t seed, uint64_t first_offset) {           \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                        \
    sample_body(tile, width);                                                                                 \
  }                                                                                                           \
  TARGET void sample_grads_##SUFFIX(LatentTile& tile, int width, uint64_t seed, uint64_t first_offset) {     \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                        \
    sample_grads_body(tile, width);                                                                           \
  }                                                                                                           \
  TARGET void sample_grads_from_z_##SUFFIX(LatentTile& tile, int width) {                                   \
    sample_grads_from_z_body(tile, width);                                                                    \
  }                                                                                                           \
  TARGET void kl_##SUFFIX(LatentTile& tile, int width) { kl_body<false>(tile, width); }                       \
  TARGET void standard_kl_##SUFFIX(LatentTile& tile, int width) { kl_body<true>(tile, width); }               \
  TARGET void kl_grads_##SUFFIX(LatentTile& tile, int width) { kl_grads_body<false>(tile, width); }           \
  TARGET void standard_kl_grads_##SUFFIX(LatentTile& tile, int width) { kl_grads_body<true>(tile, width); }   \
  constexpr LatentMath latent_math_##SUFFIX = {sample_##SUFFIX,                                               \
                                               sample_grads_##SUFFIX,                                         \
                                               sample_grads_from_z_##SUFFIX,                                  \
                                               {kl_##SUFFIX, standard_kl_##SUFFIX},                           \
                                               {kl_grads_##SUFFIX, standard_kl_grads_##SUFFIX}};

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_LATENT_LOOPS(avx2, FASTVAE_AVX2_TARGET, philox_words_run_avx2)
#endif
FASTVAE_LATENT_LOOPS(baseline, FASTVAE_BASELINE_TARGET, philox_words_run)
#undef FASTVAE_LATENT_LOOPS

LatentMath latent_math() { return FASTVAE_FOR_THIS_CPU(latent_math); }

// ---------------------------------------------------------------------------------------
// Loads and stores around them
// ---------------------------------------------------------------------------------------

template <typename T>
inline void load_floats(const T* data, int width, float* out) {
  for (int i = 0; i < width; ++i) out[i] = to_float(data[i]);
}

template <typename T>
inline void store_floats(const float* in, int width, T* data) {
  for (int i = 0; i < width; ++i) data[i] = from_float<T>(in[i]);
}

// Columns [begin, begin + width) of a prior broadcast to [B, N], or zeros when absent.
template <typename P>
inline void gather_prior(const P* prior, const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row,
                         int64_t begin, int width, float* out) {
  if (!prior) {
    for (int i = 0; i < width; ++i) out[i] = 0.0f;
    return;
  }
  for (int i = 0; i < width; ++i) out[i] = to_float(prior[broadcast_offset(layout, sizes, row, begin + i)]);
}

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
  const LatentMath math = latent_math();
  const bool standard_prior = !prior_mu && !prior_logvar;
#pragma omp parallel
  {
    LatentTile tile;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.batch; ++row) {
      RowSum row_kl;
      for (int64_t begin = 0; begin < features; begin += kTile) {
        const int width = static_cast<int>(features - begin < kTile ? features - begin : kTile);
        const int64_t first = row * features + begin;
        load_floats(mu + first, width, tile.mu);
        load_floats(logvar + first, width, tile.logvar);
        if (z) {
          math.sample(tile, width, seed, base + static_cast<uint64_t>(first));
          store_floats(tile.z, width, z + first);
        }
        if (args.kl_mode == kKLNone) continue;
        if (!standard_prior) {
          gather_prior(prior_mu, args.prior_mu_layout, args.sizes, row, begin, width, tile.prior_mu);
          gather_prior(prior_logvar, args.prior_logvar_layout, args.sizes, row, begin, width, tile.prior_logvar);
        }
        math.kl[standard_prior](tile, width);
        if (args.kl_mode == kKLElement) {
          for (int i = 0; i < width; ++i) args.kl[first + i] = tile.kl[i];
        } else {
          row_kl.add(tile.kl, width);
        }
      }
      if (args.kl_mode == kKLRow) args.kl[row] = row_kl.total();
    }
  }
}

template <typename T, typename P>
void latent_backward(const LatentBackwardArgs& args) {
  const T* mu = static_cast<const T*>(args.mu);
  const T* logvar = static_cast<const T*>(args.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  const T* z = static_cast<const T*>(args.z);
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_mu = static_cast<T*>(args.grad_mu);
  T* grad_logvar = static_cast<T*>(args.grad_logvar);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[0] : 0);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset ? args.seed_offset[1] : 0);
  const int64_t features = args.features;
  const LatentMath math = latent_math();
  const bool standard_prior = !prior_mu && !prior_logvar;
#pragma omp parallel
  {
    LatentTile tile;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.batch; ++row) {
      for (int64_t begin = 0; begin < features; begin += kTile) {
        const int width = static_cast<int>(features - begin < kTile ? features - begin : kTile);
        const int64_t first = row * features + begin;
        load_floats(mu + first, width, tile.mu);
        load_floats(logvar + first, width, tile.logvar);
        for (int i = 0; i < width; ++i) tile.grad_mu[i] = tile.grad_logvar[i] = 0.0f;
        if (grad_z) {
          load_floats(grad_z + first, width, tile.grad_z);
          if (z) {
            load_floats(z + first, width, tile.z);
            math.sample_grads_from_z(tile, width);
          } else {
            math.sample_grads(tile, width, seed, base + static_cast<uint64_t>(first));
          }
        }
        if (args.grad_kl) {
          if (args.grad_kl_per_element) {
            load_floats(args.grad_kl + first, width, tile.grad_kl);
          } else {
            for (int i = 0; i < width; ++i) tile.grad_kl[i] = args.grad_kl[row];
          }
          if (!standard_prior) {
            gather_prior(prior_mu, args.prior_mu_layout, args.sizes, row, begin, width, tile.prior_mu);
            gather_prior(prior_logvar, args.prior_logvar_layout, args.sizes, row, begin, width, tile.prior_logvar);
          }
          math.kl_grads[standard_prior](tile, width);
          if (args.grad_prior_mu) {
            for (int i = 0; i < width; ++i) {
              store_float_as(args.grad_prior_mu, args.grad_prior_mu_dtype, first + i, tile.grad_prior_mu[i]);
            }
          }
          if (args.grad_prior_logvar) {
            for (int i = 0; i < width; ++i) {
              store_float_as(args.grad_prior_logvar, args.grad_prior_logvar_dtype, first + i,
                             tile.grad_prior_logvar[i]);
            }
          }
        }
        store_floats(tile.grad_mu, width, grad_mu + first);
        store_floats(tile.grad_logvar, width, grad_logvar + first);
      }
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
