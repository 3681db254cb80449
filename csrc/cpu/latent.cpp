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

#include <cmath>
#include <type_traits>

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

// Below this many elements a call runs on one thread: starting and joining the OpenMP
// team costs more than the loop (a 64×16 latent takes microseconds).  Each row's sums
// follow the shape, not the threads, so the results are the same bits either way.
constexpr int64_t kParallelMinimum = 32768;

// One tile of a row in float32: where each SIMD loop reads and writes.  A float32 tensor
// is read and written in place (the pointers point into it, no copy); any other dtype is
// converted into and out of the buffers.  Absent priors are zeros (the standard normal).
// words0 and words1: the first two Philox words of each column's counter, for Box–Muller.
struct LatentTile {
  const float* mu;
  const float* logvar;
  const float* prior_mu;
  const float* prior_logvar;
  const float* sample;   // backward: the forward's z
  const float* grad_z;   // backward: incoming
  const float* grad_kl;  // backward: incoming, per element
  float* z;              // forward
  float* kl;             // forward
  float* grad_mu;        // backward: outgoing
  float* grad_logvar;
  float* grad_prior_mu;
  float* grad_prior_logvar;

  uint32_t words0[kTile], words1[kTile];
  float mu_buffer[kTile], logvar_buffer[kTile], prior_mu_buffer[kTile], prior_logvar_buffer[kTile];
  float z_buffer[kTile], kl_buffer[kTile], grad_z_buffer[kTile], grad_kl_buffer[kTile];
  float grad_mu_buffer[kTile], grad_logvar_buffer[kTile];
  float grad_prior_mu_buffer[kTile], grad_prior_logvar_buffer[kTile];
};

// ---------------------------------------------------------------------------------------
// The SIMD loops
// ---------------------------------------------------------------------------------------

inline float tile_normal(const LatentTile& tile, int i) {
  return box_muller<VectorMath>(PhiloxWords{{tile.words0[i], tile.words1[i], 0u, 0u}});
}

// The tile's normals alone: the benchmark's floor of the sampling loops (philox_normal_floor).
inline void normals_body(const LatentTile& tile, float* __restrict out, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) out[i] = tile_normal(tile, i);
}

// z = mu + e^(logvar/2)·ε, ε from the tile's Philox words.
inline void sample_body(const LatentTile& tile, int width) {
  const float* __restrict mu = tile.mu;
  const float* __restrict logvar = tile.logvar;
  float* __restrict z = tile.z;
#pragma omp simd
  for (int i = 0; i < width; ++i) z[i] = mu[i] + VectorMath::exp(0.5f * logvar[i]) * tile_normal(tile, i);
}

// kStandardPrior: the prior is N(0, I), its zeros constants rather than loaded, so that
// e^(−prior_logvar) folds away: one exp per element fewer, and the same bits.  row_kl:
// where a row's KL is added up ('row' mode), or null ('element' mode), added here so that
// its float64 lanes run at this target's SIMD width too (the same additions, in the same
// order, on every target).
template <bool kStandardPrior>
inline void kl_body(const LatentTile& tile, int width, RowSum* row_kl) {
  const float* __restrict mu = tile.mu;
  const float* __restrict logvar = tile.logvar;
  const float* __restrict prior_mu_in = tile.prior_mu;
  const float* __restrict prior_logvar_in = tile.prior_logvar;
  float* __restrict kl = tile.kl;
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float prior_mu = kStandardPrior ? 0.0f : prior_mu_in[i];
    const float prior_logvar = kStandardPrior ? 0.0f : prior_logvar_in[i];
    kl[i] = gaussian_kl<VectorMath>(mu[i], logvar[i], prior_mu, prior_logvar);
  }
  if (row_kl) row_kl->add(kl, width);
}

// dz/dmu = 1, dz/dlogvar = σ·ε/2, with ε regenerated (from the tile's Philox words)
// rather than stored.  The first term of each gradient: written, not added.
inline void sample_grads_body(const LatentTile& tile, int width) {
  const float* __restrict logvar = tile.logvar;
  const float* __restrict grad_z = tile.grad_z;
  float* __restrict grad_mu = tile.grad_mu;
  float* __restrict grad_logvar = tile.grad_logvar;
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float eps = tile_normal(tile, i);
    grad_mu[i] = grad_z[i];
    grad_logvar[i] = grad_z[i] * 0.5f * VectorMath::exp(0.5f * logvar[i]) * eps;
  }
}

// The same from the sample: σ·ε = z − mu.  Philox's ten rounds of 32-bit products are
// most of the backward's time on a CPU; this reads one more tensor instead.  z − mu is
// σ·ε up to half an ulp of z.
inline void sample_grads_from_z_body(const LatentTile& tile, int width) {
  const float* __restrict mu = tile.mu;
  const float* __restrict sample = tile.sample;
  const float* __restrict grad_z = tile.grad_z;
  float* __restrict grad_mu = tile.grad_mu;
  float* __restrict grad_logvar = tile.grad_logvar;
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    grad_mu[i] = grad_z[i];
    grad_logvar[i] = grad_z[i] * 0.5f * (sample[i] - mu[i]);
  }
}

// kAdd: add to the gradients of mu and logvar (the sample's term wrote them first) or
// write them (no sample, or no gradient of it).  grad_kl_row: the row's ∂KL when the KL
// was summed per row (every column shares it), else NAN and the tile's per-element
// grad_kl is read.
template <bool kStandardPrior, bool kAdd, bool kRowGrad>
inline void kl_grads_body(const LatentTile& tile, int width, float grad_kl_row) {
  const float* __restrict mu = tile.mu;
  const float* __restrict logvar = tile.logvar;
  const float* __restrict prior_mu_in = tile.prior_mu;
  const float* __restrict prior_logvar_in = tile.prior_logvar;
  const float* __restrict grad_kl = tile.grad_kl;
  float* __restrict grad_mu = tile.grad_mu;
  float* __restrict grad_logvar = tile.grad_logvar;
  float* __restrict grad_prior_mu = tile.grad_prior_mu;
  float* __restrict grad_prior_logvar = tile.grad_prior_logvar;
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const float prior_mu = kStandardPrior ? 0.0f : prior_mu_in[i];
    const float prior_logvar = kStandardPrior ? 0.0f : prior_logvar_in[i];
    const GaussianKLGrads grads = gaussian_kl_grads<VectorMath>(mu[i], logvar[i], prior_mu, prior_logvar,
                                                                kRowGrad ? grad_kl_row : grad_kl[i]);
    grad_mu[i] = kAdd ? grad_mu[i] + grads.mu : grads.mu;
    grad_logvar[i] = kAdd ? grad_logvar[i] + grads.logvar : grads.logvar;
    if (!kStandardPrior) {
      grad_prior_mu[i] = grads.prior_mu;
      grad_prior_logvar[i] = grads.prior_logvar;
    }
  }
}

// Each loop for this CPU, chosen once per call.
using KLGradsLoop = void (*)(const LatentTile&, int, float);
struct LatentMath {
  void (*normals)(LatentTile&, float*, int, uint64_t, uint64_t);
  void (*sample)(LatentTile&, int, uint64_t, uint64_t);
  void (*sample_grads)(LatentTile&, int, uint64_t, uint64_t);
  void (*sample_grads_from_z)(const LatentTile&, int);
  // Indexed by whether the prior is the standard normal.
  void (*kl[2])(const LatentTile&, int, RowSum*);
  // Indexed by [standard prior][add to the sample's gradients][∂KL per row].
  KLGradsLoop kl_grads[2][2][2];
};

#define FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, STANDARD, ADD, ROW)                                  \
  TARGET void kl_grads_##STANDARD##ADD##ROW##_##SUFFIX(const LatentTile& tile, int width, float g) { \
    kl_grads_body<STANDARD, ADD, ROW>(tile, width, g);                                              \
  }

// The loops compiled for one target: PHILOX_WORDS fills the tile's Philox words.
#define FASTVAE_LATENT_LOOPS(SUFFIX, TARGET, PHILOX_WORDS)                                                         \
  TARGET void normals_##SUFFIX(LatentTile& tile, float* out, int width, uint64_t seed, uint64_t first_offset) {  \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                             \
    normals_body(tile, out, width);                                                                                \
  }                                                                                                                \
  TARGET void sample_##SUFFIX(LatentTile& tile, int width, uint64_t seed, uint64_t first_offset) {                \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                             \
    sample_body(tile, width);                                                                                      \
  }                                                                                                                \
  TARGET void sample_grads_##SUFFIX(LatentTile& tile, int width, uint64_t seed, uint64_t first_offset) {          \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                             \
    sample_grads_body(tile, width);                                                                                \
  }                                                                                                                \
  TARGET void sample_grads_from_z_##SUFFIX(const LatentTile& tile, int width) { sample_grads_from_z_body(tile, width); } \
  TARGET void kl_##SUFFIX(const LatentTile& tile, int width, RowSum* row_kl) { kl_body<false>(tile, width, row_kl); } \
  TARGET void standard_kl_##SUFFIX(const LatentTile& tile, int width, RowSum* row_kl) {                          \
    kl_body<true>(tile, width, row_kl);                                                                            \
  }                                                                                                                \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, false, false, false)                                                       \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, false, false, true)                                                        \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, false, true, false)                                                        \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, false, true, true)                                                         \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, true, false, false)                                                        \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, true, false, true)                                                         \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, true, true, false)                                                         \
  FASTVAE_KL_GRADS_LOOP(SUFFIX, TARGET, true, true, true)                                                          \
  constexpr LatentMath latent_math_##SUFFIX = {                                                                    \
      normals_##SUFFIX,                                                                                            \
      sample_##SUFFIX,                                                                                             \
      sample_grads_##SUFFIX,                                                                                       \
      sample_grads_from_z_##SUFFIX,                                                                                \
      {kl_##SUFFIX, standard_kl_##SUFFIX},                                                                         \
      {{{kl_grads_falsefalsefalse_##SUFFIX, kl_grads_falsefalsetrue_##SUFFIX},                                      \
        {kl_grads_falsetruefalse_##SUFFIX, kl_grads_falsetruetrue_##SUFFIX}},                                       \
       {{kl_grads_truefalsefalse_##SUFFIX, kl_grads_truefalsetrue_##SUFFIX},                                        \
        {kl_grads_truetruefalse_##SUFFIX, kl_grads_truetruetrue_##SUFFIX}}}};

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_LATENT_LOOPS(avx2, FASTVAE_AVX2_TARGET, philox_words_run_avx2)
#endif
FASTVAE_LATENT_LOOPS(baseline, FASTVAE_BASELINE_TARGET, philox_words_run)
#undef FASTVAE_LATENT_LOOPS
#undef FASTVAE_KL_GRADS_LOOP

LatentMath latent_math() { return FASTVAE_FOR_THIS_CPU(latent_math); }

// ---------------------------------------------------------------------------------------
// Loads and stores around them
// ---------------------------------------------------------------------------------------

// width values of data as float32: data itself for float32 (no copy), else converted
// into buffer.
template <typename T>
inline const float* floats_in(const T* data, int width, float* buffer) {
  if constexpr (std::is_same<T, float>::value) {
    return data;
  } else {
    for (int i = 0; i < width; ++i) buffer[i] = to_float(data[i]);
    return buffer;
  }
}

// Where a loop writes width values of data: data itself for float32, else buffer, which
// floats_out_done converts into data.
template <typename T>
inline float* floats_out(T* data, float* buffer) {
  if constexpr (std::is_same<T, float>::value) {
    return data;
  } else {
    return buffer;
  }
}

template <typename T>
inline void floats_out_done(const float* values, int width, T* data) {
  if constexpr (!std::is_same<T, float>::value) {
    for (int i = 0; i < width; ++i) data[i] = from_float<T>(values[i]);
  }
}

// Columns [begin, begin + width) of a prior broadcast to [B, N].
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
#pragma omp parallel if (args.batch * features >= kParallelMinimum)
  {
    LatentTile tile;
    tile.prior_mu = tile.prior_mu_buffer;
    tile.prior_logvar = tile.prior_logvar_buffer;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.batch; ++row) {
      RowSum row_kl;
      for (int64_t begin = 0; begin < features; begin += kTile) {
        const int width = static_cast<int>(features - begin < kTile ? features - begin : kTile);
        const int64_t first = row * features + begin;
        tile.mu = floats_in(mu + first, width, tile.mu_buffer);
        tile.logvar = floats_in(logvar + first, width, tile.logvar_buffer);
        if (z) {
          tile.z = floats_out(z + first, tile.z_buffer);
          math.sample(tile, width, seed, base + static_cast<uint64_t>(first));
          floats_out_done(tile.z, width, z + first);
        }
        if (args.kl_mode == kKLNone) continue;
        if (!standard_prior) {
          gather_prior(prior_mu, args.prior_mu_layout, args.sizes, row, begin, width, tile.prior_mu_buffer);
          gather_prior(prior_logvar, args.prior_logvar_layout, args.sizes, row, begin, width,
                       tile.prior_logvar_buffer);
        }
        const bool per_element = args.kl_mode == kKLElement;
        tile.kl = per_element ? args.kl + first : tile.kl_buffer;
        math.kl[standard_prior](tile, width, per_element ? nullptr : &row_kl);
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
  // Neither ∂z nor ∂KL: the gradients are zeros.
  const bool zeros = !grad_z && !args.grad_kl;
  const KLGradsLoop kl_grads = math.kl_grads[standard_prior][grad_z != nullptr][!args.grad_kl_per_element];
#pragma omp parallel if (args.batch * features >= kParallelMinimum)
  {
    LatentTile tile;
    tile.prior_mu = tile.prior_mu_buffer;
    tile.prior_logvar = tile.prior_logvar_buffer;
    tile.grad_prior_mu = tile.grad_prior_mu_buffer;
    tile.grad_prior_logvar = tile.grad_prior_logvar_buffer;
    tile.grad_kl = tile.grad_kl_buffer;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.batch; ++row) {
      for (int64_t begin = 0; begin < features; begin += kTile) {
        const int width = static_cast<int>(features - begin < kTile ? features - begin : kTile);
        const int64_t first = row * features + begin;
        tile.mu = floats_in(mu + first, width, tile.mu_buffer);
        tile.logvar = floats_in(logvar + first, width, tile.logvar_buffer);
        // No grad_mu: the caller takes ∂z as ∂mu itself (reparameterize, whose ∂mu is ∂z);
        // the loops still write the tile's buffer, which is dropped.
        tile.grad_mu = grad_mu ? floats_out(grad_mu + first, tile.grad_mu_buffer) : tile.grad_mu_buffer;
        tile.grad_logvar = floats_out(grad_logvar + first, tile.grad_logvar_buffer);
        if (zeros) {
          for (int i = 0; i < width; ++i) tile.grad_mu[i] = tile.grad_logvar[i] = 0.0f;
        }
        if (grad_z) {
          tile.grad_z = floats_in(grad_z + first, width, tile.grad_z_buffer);
          if (z) {
            tile.sample = floats_in(z + first, width, tile.z_buffer);
            math.sample_grads_from_z(tile, width);
          } else {
            math.sample_grads(tile, width, seed, base + static_cast<uint64_t>(first));
          }
        }
        if (args.grad_kl) {
          if (args.grad_kl_per_element) tile.grad_kl = args.grad_kl + first;
          if (!standard_prior) {
            gather_prior(prior_mu, args.prior_mu_layout, args.sizes, row, begin, width, tile.prior_mu_buffer);
            gather_prior(prior_logvar, args.prior_logvar_layout, args.sizes, row, begin, width,
                         tile.prior_logvar_buffer);
          }
          kl_grads(tile, width, args.grad_kl_per_element ? NAN : args.grad_kl[row]);
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
        if (grad_mu) floats_out_done(tile.grad_mu, width, grad_mu + first);
        floats_out_done(tile.grad_logvar, width, grad_logvar + first);
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

void philox_normal_floor(float* out, int64_t count, uint64_t seed, uint64_t offset) {
  const LatentMath math = latent_math();
  const int64_t tiles = (count + kTile - 1) / kTile;
#pragma omp parallel if (count >= kParallelMinimum)
  {
    LatentTile tile;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t begin = t * kTile;
      const int width = static_cast<int>(count - begin < kTile ? count - begin : kTile);
      math.normals(tile, out + begin, width, seed, offset + static_cast<uint64_t>(begin));
    }
  }
}

}  // namespace cpu
}  // namespace fastvae

// The benchmark's floor of the sampling loops as a plain C symbol, visible in the module
// (bench/bench_latent.py calls it through ctypes): a benchmark-only entry needs no
// Python binding of its own.
extern "C" __attribute__((visibility("default"))) void fastvae_philox_normal_floor(float* out, int64_t count,
                                                                                  uint64_t seed, uint64_t offset) {
  fastvae::cpu::philox_normal_floor(out, count, seed, offset);
}

