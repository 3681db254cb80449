// IWAE family on the CPU: the per-element math of fastvae/iwae.h in loops, parallel with
// OpenMP.  Every sum runs in one fixed order (a row's log densities in float64 lanes,
// csrc/cpu/row_sum.h, so their error does not grow with the row's length; a gradient over
// samples in k order, a logsumexp in k order), so results do not depend on the number of
// threads.  The K samples run in tiles of columns as the latent family's
// (csrc/cpu/latent.cpp): Philox words for the tile, then one SIMD loop of the math.
//
// GCC if-converts the selects of the branch-free math only when evaluating both sides may
// not trap; nothing here reads the floating-point exception flags.  Before the includes,
// so the inlined header functions are compiled alike.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>

#include "fastvae/dispatch.h"
#include "fastvae/iwae.h"
#include "fastvae/iwae_args.h"
#include "philox_tile.h"
#include "row_sum.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

// Columns one task keeps in flight: the backward of sample_gaussian_k and the forward of
// log_mean_exp walk k in the outer loop and these columns in the inner one, so the inner
// loop reads contiguous memory while each column's sum still runs in k order.  Also about
// the elements per task of the elementwise log_mean_exp backward.
constexpr int64_t kColumnBlock = 256;
// Below this many elements per row, log_mean_exp's forward reads each column alone.
constexpr int64_t kNarrowInner = 16;

template <typename P>
float prior_value(const P* prior, const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row, int64_t col) {
  return prior ? to_float(prior[broadcast_offset(layout, sizes, row, col)]) : 0.0f;
}

template <typename T>
inline void load_floats(const T* data, int width, float* out) {
  for (int i = 0; i < width; ++i) out[i] = to_float(data[i]);
}

// ---------------------------------------------------------------------------------------
// K samples: the SIMD loops over a tile of columns, in float32
// ---------------------------------------------------------------------------------------

// A tile of kColumnBlock columns of one sample row (forward) or of one data row over its
// K samples (backward).  words0/words1: Philox words 0 and 1 of each column's counter.
struct SampleTile {
  uint32_t words0[kColumnBlock], words1[kColumnBlock];
  float mu[kColumnBlock], logvar[kColumnBlock], prior_mu[kColumnBlock], prior_logvar[kColumnBlock];
  float z[kColumnBlock], log_q[kColumnBlock], log_p[kColumnBlock];  // forward
  float sigma[kColumnBlock], prior_precision[kColumnBlock], grad_z[kColumnBlock];  // backward
  float sum_mu[kColumnBlock], sum_logvar[kColumnBlock], sum_prior_mu[kColumnBlock], sum_prior_logvar[kColumnBlock];
};
static_assert(kColumnBlock % 8 == 0, "philox_words_run_avx2 fills whole groups of eight");

inline float tile_normal(const SampleTile& tile, int i) {
  return box_muller<VectorMath>(PhiloxWords{{tile.words0[i], tile.words1[i], 0u, 0u}});
}

inline void sample_body(SampleTile& tile, int width) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const SampleLogDensities sample = sample_with_log_densities<VectorMath>(
        tile.mu[i], tile.logvar[i], tile.prior_mu[i], tile.prior_logvar[i], tile_normal(tile, i));
    tile.z[i] = sample.z;
    tile.log_q[i] = sample.log_q;
    tile.log_p[i] = sample.log_p;
  }
}

// Adds one sample's terms to each column's sums (add_sample_grads, in SIMD lanes).  Whether
// log p has a gradient is a template argument: a branch in the loop would keep it scalar.
template <bool kHasGradLogP>
inline void sample_grads_body(SampleTile& tile, int width, float grad_log_p) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    SampleGradSums sums{tile.sum_mu[i], tile.sum_logvar[i], tile.sum_prior_mu[i], tile.sum_prior_logvar[i]};
    add_sample_grads(sums, tile.mu[i], tile.sigma[i], tile_normal(tile, i), tile.prior_mu[i],
                     tile.prior_precision[i], tile.grad_z[i], kHasGradLogP, grad_log_p);
    tile.sum_mu[i] = sums.mu;
    tile.sum_logvar[i] = sums.logvar;
    tile.sum_prior_mu[i] = sums.prior_mu;
    tile.sum_prior_logvar[i] = sums.prior_logvar;
  }
}

// Each loop for this CPU, chosen once per call: compiled for AVX2 (Philox in its
// intrinsics) and for the baseline x86-64, from the same source without floating-point
// contraction, so both give the same bits.
struct SampleMath {
  void (*sample)(SampleTile&, int, uint64_t, uint64_t);
  // Indexed by whether log p has a gradient.
  void (*sample_grads[2])(SampleTile&, int, uint64_t, uint64_t, float);
};

// The loops compiled for one target: PHILOX_WORDS fills the tile's Philox words.
#define FASTVAE_SAMPLE_LOOPS(SUFFIX, TARGET, PHILOX_WORDS)                                                    \
  TARGET void sample_##SUFFIX(SampleTile& tile, int width, uint64_t seed, uint64_t first_offset) {           \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                        \
    sample_body(tile, width);                                                                                 \
  }                                                                                                           \
  template <bool kHasGradLogP>                                                                                \
  TARGET void sample_grads_##SUFFIX(SampleTile& tile, int width, uint64_t seed, uint64_t first_offset,       \
                                    float grad_log_p) {                                                       \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                        \
    sample_grads_body<kHasGradLogP>(tile, width, grad_log_p);                                                 \
  }                                                                                                           \
  constexpr SampleMath sample_math_##SUFFIX = {sample_##SUFFIX,                                               \
                                               {sample_grads_##SUFFIX<false>, sample_grads_##SUFFIX<true>}};

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_SAMPLE_LOOPS(avx2, FASTVAE_AVX2_TARGET, philox_words_run_avx2)
#endif
FASTVAE_SAMPLE_LOOPS(baseline, FASTVAE_BASELINE_TARGET, philox_words_run)
#undef FASTVAE_SAMPLE_LOOPS

SampleMath sample_math() { return FASTVAE_FOR_THIS_CPU(sample_math); }

// Columns [first_col, first_col + width) of data row `row`: mu and logvar, and the priors
// gathered through their broadcast strides (zeros when absent).
template <typename T, typename P, typename Args>
void load_latent_tile(const Args& args, int64_t row, int64_t first_col, int width, SampleTile& tile) {
  const int64_t first = row * args.features + first_col;
  load_floats(static_cast<const T*>(args.mu) + first, width, tile.mu);
  load_floats(static_cast<const T*>(args.logvar) + first, width, tile.logvar);
  const P* prior_mu = static_cast<const P*>(args.prior_mu);
  const P* prior_logvar = static_cast<const P*>(args.prior_logvar);
  for (int i = 0; i < width; ++i) {
    tile.prior_mu[i] = prior_value(prior_mu, args.prior_mu_layout, args.sizes, row, first_col + i);
    tile.prior_logvar[i] = prior_value(prior_logvar, args.prior_logvar_layout, args.sizes, row, first_col + i);
  }
}

template <typename T, typename P>
void sample_k_forward(const SampleKForwardArgs& args) {
  T* z = static_cast<T*>(args.z);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
  const int64_t features = args.features;
  const int64_t sample_rows = args.num_samples * args.batch;
  const SampleMath math = sample_math();
  // One task per sample row k·B + b, which sums the whole row (row_partials is 1).
#pragma omp parallel
  {
    SampleTile tile;
#pragma omp for schedule(static)
    for (int64_t sample_row = 0; sample_row < sample_rows; ++sample_row) {
      const int64_t row = sample_row % args.batch;
      RowSum row_log_q, row_log_p;
      for (int64_t first_col = 0; first_col < features; first_col += kColumnBlock) {
        const int width = static_cast<int>(std::min(kColumnBlock, features - first_col));
        const int64_t first = sample_row * features + first_col;
        load_latent_tile<T, P>(args, row, first_col, width, tile);
        math.sample(tile, width, seed, base + static_cast<uint64_t>(first));
        for (int i = 0; i < width; ++i) z[first + i] = from_float<T>(tile.z[i]);
        row_log_q.add(tile.log_q, width);
        row_log_p.add(tile.log_p, width);
      }
      args.log_q[sample_row * args.row_partials] = row_log_q.total();
      args.log_p[sample_row * args.row_partials] = row_log_p.total();
    }
  }
}

template <typename T, typename P>
void sample_k_backward(const SampleKBackwardArgs& args) {
  const T* grad_z = static_cast<const T*>(args.grad_z);
  T* grad_mu = static_cast<T*>(args.grad_mu);
  T* grad_logvar = static_cast<T*>(args.grad_logvar);
  const bool needs_noise = grad_z || args.grad_log_p;
  const uint64_t seed = needs_noise ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = needs_noise ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
  const int64_t features = args.features, batch = args.batch;
  const int64_t blocks_per_row = (features + kColumnBlock - 1) / kColumnBlock;
  const SampleMath math = sample_math();
  // One task per (data row, block of columns): k runs in the outer loop, so each column's
  // gradient sums its K samples in k order.
#pragma omp parallel
  {
    SampleTile tile;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * blocks_per_row; ++task) {
      const int64_t row = task / blocks_per_row;
      const int64_t first_col = (task % blocks_per_row) * kColumnBlock;
      const int width = static_cast<int>(std::min(kColumnBlock, features - first_col));
      load_latent_tile<T, P>(args, row, first_col, width, tile);
      for (int i = 0; i < width; ++i) {
        tile.sigma[i] = VectorMath::exp(0.5f * tile.logvar[i]);
        tile.prior_precision[i] = expf(-tile.prior_logvar[i]);
        tile.grad_z[i] = 0.0f;
        tile.sum_mu[i] = tile.sum_logvar[i] = tile.sum_prior_mu[i] = tile.sum_prior_logvar[i] = 0.0f;
      }
      float grad_log_q_sum = 0.0f;
      for (int64_t k = 0; k < args.num_samples; ++k) {
        const int64_t sample_row = k * batch + row;
        if (args.grad_log_q) grad_log_q_sum += args.grad_log_q[sample_row];
        if (!needs_noise) continue;
        const int64_t first = sample_row * features + first_col;
        if (grad_z) load_floats(grad_z + first, width, tile.grad_z);
        math.sample_grads[args.grad_log_p != nullptr](tile, width, seed, base + static_cast<uint64_t>(first),
                                                      args.grad_log_p ? args.grad_log_p[sample_row] : 0.0f);
      }
      for (int i = 0; i < width; ++i) {
        const int64_t index = row * features + first_col + i;
        grad_mu[index] = from_float<T>(tile.sum_mu[i]);
        grad_logvar[index] = from_float<T>(tile.sum_logvar[i] - 0.5f * grad_log_q_sum);
        if (args.grad_prior_mu) {
          store_float_as(args.grad_prior_mu, args.grad_prior_mu_dtype, index, tile.sum_prior_mu[i]);
        }
        if (args.grad_prior_logvar) {
          store_float_as(args.grad_prior_logvar, args.grad_prior_logvar_dtype, index, tile.sum_prior_logvar[i]);
        }
      }
    }
  }
}

// Stores column m's result and the two parts the backward reads.
inline void store_log_mean_exp(const LogMeanExpForwardArgs& args, int64_t column, const OnlineLogSumExp& state) {
  const float log_total = logf(state.total);
  args.out[column] = (log_total + state.shift) - args.log_num_samples;
  args.lse_parts[column] = state.shift;
  args.lse_parts[args.columns + column] = log_total;
}

template <typename T>
void log_mean_exp_forward_loop(const LogMeanExpForwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* log_p = static_cast<const T*>(args.log_p);
  const T* log_q = static_cast<const T*>(args.log_q);
  const int64_t inner = args.inner, num_samples = args.num_samples, columns = args.columns;
  if (columns == 0) return;
  if (inner < kNarrowInner) {
    // Narrow rows (inner 1 reduces the last dimension): a column's terms lie (nearly)
    // together, so each column runs alone with its state in registers.
#pragma omp parallel for schedule(static)
    for (int64_t column = 0; column < columns; ++column) {
      const int64_t start = (column / inner) * num_samples * inner + column % inner;
      OnlineLogSumExp state = online_logsumexp_start();
      for (int64_t k = 0; k < num_samples; ++k) online_logsumexp_add(state, load_log_weight(x, log_p, log_q, start + k * inner));
      store_log_mean_exp(args, column, state);
    }
    return;
  }
  const int64_t outer = columns / inner;
  const int64_t blocks_per_outer = (inner + kColumnBlock - 1) / kColumnBlock;
  // One task per (outer index, block of columns), reading a contiguous row of the block at
  // each k; each column still adds its terms in k order.
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < outer * blocks_per_outer; ++task) {
    const int64_t outer_index = task / blocks_per_outer;
    const int64_t first_j = (task % blocks_per_outer) * kColumnBlock;
    const int64_t width = std::min(kColumnBlock, inner - first_j);
    OnlineLogSumExp state[kColumnBlock];
    for (int64_t c = 0; c < width; ++c) state[c] = online_logsumexp_start();
    for (int64_t k = 0; k < num_samples; ++k) {
      const int64_t row_start = (outer_index * num_samples + k) * inner + first_j;
      for (int64_t c = 0; c < width; ++c) online_logsumexp_add(state[c], load_log_weight(x, log_p, log_q, row_start + c));
    }
    for (int64_t c = 0; c < width; ++c) store_log_mean_exp(args, outer_index * inner + first_j + c, state[c]);
  }
}

template <typename T>
void log_mean_exp_backward_loop(const LogMeanExpBackwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* log_p = static_cast<const T*>(args.log_p);
  const T* log_q = static_cast<const T*>(args.log_q);
  const float* shifts = args.lse_parts;                   // [M]
  const float* log_totals = args.lse_parts + args.columns;  // [M]
  const float* grad_out = args.grad_out;
  T* grad_x = static_cast<T*>(args.grad_x);
  T* grad_log_p = static_cast<T*>(args.grad_log_p);
  T* grad_log_q = static_cast<T*>(args.grad_log_q);
  const int64_t inner = args.inner, num_samples = args.num_samples, columns = args.columns;
  if (columns == 0) return;
  const int64_t rows = (columns / inner) * num_samples;  // the [outer·K] rows of inner elements
  // Elementwise.  A task takes a run of rows of about kColumnBlock elements and steps its
  // (outer index, k) along, so there is no division per element when rows are narrow.
  const int64_t rows_per_task = std::max<int64_t>(1, kColumnBlock / inner);
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t first_row = task * rows_per_task;
    const int64_t last_row = std::min(rows, first_row + rows_per_task);
    int64_t k = first_row % num_samples;
    int64_t first_column = (first_row / num_samples) * inner;
    for (int64_t row = first_row; row < last_row; ++row) {
      for (int64_t j = 0; j < inner; ++j) {
        const int64_t index = row * inner + j;
        const int64_t column = first_column + j;
        const float weight =
            log_mean_exp_weight(load_log_weight(x, log_p, log_q, index), shifts[column], log_totals[column]);
        const float grad = grad_out[column] * weight;
        if (grad_x) grad_x[index] = from_float<T>(grad);
        if (grad_log_p) grad_log_p[index] = from_float<T>(grad);
        if (grad_log_q) grad_log_q[index] = from_float<T>(-grad);
      }
      if (++k == num_samples) {
        k = 0;
        first_column += inner;
      }
    }
  }
}

}  // namespace

void sample_gaussian_k_forward(const SampleKForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "sample_gaussian_k_fwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "sample_gaussian_k_fwd", P, [&] { sample_k_forward<T, P>(args); });
  });
}

void sample_gaussian_k_backward(const SampleKBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "sample_gaussian_k_bwd", T, [&] {
    FASTVAE_DISPATCH(args.prior_dtype, "sample_gaussian_k_bwd", P, [&] { sample_k_backward<T, P>(args); });
  });
}

void log_mean_exp_forward(const LogMeanExpForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "log_mean_exp_fwd", T, [&] { log_mean_exp_forward_loop<T>(args); });
}

void log_mean_exp_backward(const LogMeanExpBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "log_mean_exp_bwd", T, [&] { log_mean_exp_backward_loop<T>(args); });
}

}  // namespace cpu
}  // namespace fastvae
