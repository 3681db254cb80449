// Discrete latent family on CUDA: Gumbel-softmax sampling (soft, or straight-through hard)
// fused with the categorical KL, forward and backward, over the [R, C] view of the logits.
//
// A team of threads takes one row: 4 lanes of a warp for rows of up to 32 categories, a
// whole warp up to 512, a block of 256 threads beyond (up to the 65536 the op allows).
// Lane l of a team of W handles columns l, l + W, l + 2W, ... (coalesced).  A row takes
// a few passes, as the Triton kernel's whole-row softmaxes do: the maxima, then
// Σ exp(v − max), then the KL (with the soft sample, or the argmax), then, for hard
// samples, the one-hot store; the backward's third pass sums grad_z·y and the KL, its
// fourth writes the gradients.  The first W·kCache columns of a row stay in registers
// between passes (logits and perturbed logits), so their Gumbel noise is drawn once;
// columns past that (rows of more than 4096 categories) are reloaded and their noise
// regenerated in each pass.
//
// Reductions are xor butterflies inside the team (and, for a block, the warps' partials
// added in warp order from shared memory): no atomics, every lane ends with the same bits,
// and results are bitwise repeatable.  Indices are int64 throughout.
#include <climits>
#include <stdexcept>

#include "fastvae/discrete_args.h"
#include "fastvae/dispatch.h"
#include "launch.h"
#include "ops.h"

namespace fastvae {
namespace cuda {

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// kWidth consecutive lanes of a warp share a row (kWidth a power of two ≤ 32); a block
// holds kThreadsPerBlock / kWidth rows.  Every lane of a warp reaches each shuffle: a row
// past the end still joins its warp's reductions, it only skips memory.
template <int kWidth>
struct WarpTeam {
  static constexpr int kLanes = kWidth;
  static constexpr int kRowsPerBlock = kThreadsPerBlock / kWidth;

  __device__ static int lane() { return static_cast<int>(threadIdx.x) % kWidth; }
  __device__ static int64_t row() {
    return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + static_cast<int64_t>(threadIdx.x / kWidth);
  }
  // The first row of this thread's warp: a warp whose rows are all past the end leaves whole.
  __device__ static int64_t first_row() {
    return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock +
           static_cast<int64_t>(threadIdx.x / kWarpSize) * (kWarpSize / kWidth);
  }

  template <int N>
  __device__ static void sum(float (&values)[N]) {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int i = 0; i < N; ++i) values[i] += __shfl_xor_sync(kFullMask, values[i], offset, kWidth);
    }
  }

  template <int N>
  __device__ static void max(float (&values)[N]) {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int i = 0; i < N; ++i) values[i] = fmaxf(values[i], __shfl_xor_sync(kFullMask, values[i], offset, kWidth));
    }
  }

  __device__ static ArgMax argmax(ArgMax best) {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2) {
      const ArgMax other{__shfl_xor_sync(kFullMask, best.value, offset, kWidth),
                         static_cast<int64_t>(__shfl_xor_sync(kFullMask, static_cast<long long>(best.index), offset,
                                                              kWidth))};
      best = argmax_combine(best, other);
    }
    return best;
  }
};

// All kThreadsPerBlock threads of a block share a row: warp butterflies, then the warps'
// partials combined in warp order by every thread (so all hold the same bits).
struct BlockTeam {
  static constexpr int kLanes = kThreadsPerBlock;
  static constexpr int kRowsPerBlock = 1;
  static constexpr int kWarps = kThreadsPerBlock / kWarpSize;

  __device__ static int lane() { return static_cast<int>(threadIdx.x); }
  __device__ static int64_t row() { return static_cast<int64_t>(blockIdx.x); }
  __device__ static int64_t first_row() { return row(); }

  template <int N>
  __device__ static void sum(float (&values)[N]) {
    __shared__ float partials[kWarps][N];
    WarpTeam<kWarpSize>::sum(values);
    if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) partials[threadIdx.x / kWarpSize][i] = values[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
      values[i] = partials[0][i];
      for (int warp = 1; warp < kWarps; ++warp) values[i] += partials[warp][i];
    }
    __syncthreads();  // the partials are free for the next reduction
  }

  template <int N>
  __device__ static void max(float (&values)[N]) {
    __shared__ float partials[kWarps][N];
    WarpTeam<kWarpSize>::max(values);
    if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) partials[threadIdx.x / kWarpSize][i] = values[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
      values[i] = partials[0][i];
      for (int warp = 1; warp < kWarps; ++warp) values[i] = fmaxf(values[i], partials[warp][i]);
    }
    __syncthreads();
  }

  __device__ static ArgMax argmax(ArgMax best) {
    __shared__ float values[kWarps];
    __shared__ int64_t indices[kWarps];
    best = WarpTeam<kWarpSize>::argmax(best);
    if (threadIdx.x % kWarpSize == 0) {
      values[threadIdx.x / kWarpSize] = best.value;
      indices[threadIdx.x / kWarpSize] = best.index;
    }
    __syncthreads();
    best = ArgMax{values[0], indices[0]};
    for (int warp = 1; warp < kWarps; ++warp) best = argmax_combine(best, ArgMax{values[warp], indices[warp]});
    __syncthreads();
    return best;
  }
};

// Rows of up to 32 categories: 4 lanes, 8 columns each, 8 rows per warp.
using NarrowTeam = WarpTeam<4>;
constexpr int kNarrowCache = 8;
// Up to 512: a warp, 16 columns per lane.
using WarpRowTeam = WarpTeam<kWarpSize>;
constexpr int kWarpRowCache = 16;
// Wider: a block; 16 columns per thread (4096 per row) stay in registers.
constexpr int kBlockRowCache = 16;

// One column of a row, as the passes see it: the logit x and the perturbed logit
// s = (x + g)/τ (0 when the noise is not needed).
struct Column {
  int64_t col;
  float x, s;
};

// A lane's share of a row: columns lane, lane + W, lane + 2W, ... (coalesced across the
// team).  The first kCache of them are loaded, and their noise drawn, once (fill) and
// then held in registers; the rest, in rows wider than W·kCache, are reloaded and their
// noise regenerated on every visit.  That tail loop is not unrolled, to keep the code
// small.  (The backward's incoming gradients are read where needed, not held: registers
// are what limits occupancy here.)
template <typename T, typename Team, int kCache>
struct LaneRow {
  static constexpr int64_t kHeld = static_cast<int64_t>(Team::kLanes) * kCache;

  const T* logits;  // the row's first logit
  int64_t categories;
  int lane;
  bool valid;       // false for a row past the end (it still joins its warp's shuffles)
  bool noise;       // whether s is needed
  float tau;
  uint64_t seed, offset;  // Philox offset of the row's first element
  float x[kCache] = {}, s[kCache] = {};

  __device__ Column load(int64_t col) const {
    const float logit = to_float(logits[col]);
    return Column{col, logit, noise ? gumbel_perturbed(logit, tau, seed, offset + static_cast<uint64_t>(col)) : 0.0f};
  }

  __device__ void fill() {
#pragma unroll
    for (int e = 0; e < kCache; ++e) {
      const int64_t col = e * Team::kLanes + lane;
      if (!valid || col >= categories) continue;
      const Column column = load(col);
      x[e] = column.x;
      s[e] = column.s;
    }
  }

  template <typename Visit>
  __device__ void for_each(Visit&& visit) const {
#pragma unroll
    for (int e = 0; e < kCache; ++e) {
      const int64_t col = e * Team::kLanes + lane;
      if (valid && col < categories) visit(Column{col, x[e], s[e]});
    }
#pragma unroll 1
    for (int64_t col = kHeld + lane; valid && col < categories; col += Team::kLanes) visit(load(col));
  }
};

// The prior logits u of one row, read through their broadcast layout.
template <typename P>
struct PriorRow {
  const P* values;  // the row's first prior logit; null for the uniform prior
  int64_t stride_c;
  __device__ float operator()(int64_t col) const { return to_float(values[col * stride_c]); }
};

// The three softmaxes of a row, as indices into its maxima and totals: of s (the soft
// sample y), of x (the posterior p) and of u (the prior q).
enum RowSoftmaxIndex : int { kNoisy = 0, kPosterior = 1, kPrior = 2 };

template <typename T, typename P, typename Team, int kCache>
__global__ void __launch_bounds__(kThreadsPerBlock) categorical_forward_kernel(CategoricalForwardArgs args) {
  if (Team::first_row() >= args.rows) return;  // uniform over the warp (or block)
  const int64_t row = Team::row();
  const bool valid = row < args.rows;
  const int64_t categories = args.categories;
  const int64_t start = row * categories;  // the row's first element in [R, C]
  const P* prior_logits = static_cast<const P*>(args.prior_logits);
  const P* prior_row = prior_logits && valid ? prior_logits + categorical_prior_row(args.prior_layout, row) : nullptr;
  const PriorRow<P> prior{prior_row, args.prior_layout.stride_c};
  const bool has_prior = prior_logits != nullptr;
  T* z = static_cast<T*>(args.z) + start;
  LaneRow<T, Team, kCache> lane_row{static_cast<const T*>(args.logits) + start, categories, Team::lane(), valid,
                                    true, args.tau, static_cast<uint64_t>(args.seed_offset[0]),
                                    static_cast<uint64_t>(args.seed_offset[1]) + static_cast<uint64_t>(start)};
  lane_row.fill();

  // Pass 1: the maxima of s, x and the prior logits u.
  float maxima[3] = {-INFINITY, -INFINITY, -INFINITY};
  lane_row.for_each([&](const Column& c) {
    maxima[kNoisy] = fmaxf(maxima[kNoisy], c.s);
    maxima[kPosterior] = fmaxf(maxima[kPosterior], c.x);
    if (has_prior) maxima[kPrior] = fmaxf(maxima[kPrior], prior(c.col));
  });
  Team::max(maxima);

  // Pass 2: Σ exp(v − max) of each.
  float totals[3] = {0.0f, 0.0f, 0.0f};
  lane_row.for_each([&](const Column& c) {
    totals[kNoisy] += expf(c.s - maxima[kNoisy]);
    totals[kPosterior] += expf(c.x - maxima[kPosterior]);
    if (has_prior) totals[kPrior] += expf(prior(c.col) - maxima[kPrior]);
  });
  Team::sum(totals);

  // Pass 3: the KL, and the soft sample (stored) or its argmax (hard).
  const float log_total = logf(totals[kPosterior]);
  const float prior_log_total = has_prior ? logf(totals[kPrior]) : 0.0f;
  float kl[1] = {0.0f};
  ArgMax best = argmax_none();
  lane_row.for_each([&](const Column& c) {
    const float y = softmax_probability(c.s, maxima[kNoisy], totals[kNoisy]);
    if (args.hard) {
      best = argmax_combine(best, ArgMax{y, c.col});
    } else {
      z[c.col] = from_float<T>(y);
    }
    const float p = softmax_probability(c.x, maxima[kPosterior], totals[kPosterior]);
    const float log_q =
        has_prior ? log_softmax_value(prior(c.col), maxima[kPrior], prior_log_total) : args.log_uniform;
    kl[0] += p * (log_softmax_value(c.x, maxima[kPosterior], log_total) - log_q);
  });
  Team::sum(kl);
  if (valid && Team::lane() == 0) args.kl[row] = kl[0];
  if (!args.hard) return;

  // Pass 4 (hard): one_hot − y + y, which needs only the argmax's y (see discrete.h).
  best = Team::argmax(best);
  if (!valid) return;
  const bool row_is_nan = is_nan(totals[kNoisy]);
  for (int64_t col = Team::lane(); col < categories; col += Team::kLanes) {
    const float value = row_is_nan ? NAN : col == best.index ? straight_through_at_argmax(best.value) : 0.0f;
    z[col] = from_float<T>(value);
  }
}

template <typename T, typename P, typename Team, int kCache>
__global__ void __launch_bounds__(kThreadsPerBlock) categorical_backward_kernel(CategoricalBackwardArgs args) {
  if (Team::first_row() >= args.rows) return;
  const int64_t row = Team::row();
  const bool valid = row < args.rows;
  const int64_t categories = args.categories;
  const int64_t start = row * categories;
  const P* prior_logits = static_cast<const P*>(args.prior_logits);
  const P* prior_row = prior_logits && valid ? prior_logits + categorical_prior_row(args.prior_layout, row) : nullptr;
  const PriorRow<P> prior{prior_row, args.prior_layout.stride_c};
  const bool has_prior = prior_logits != nullptr;
  const bool has_grad_z = args.grad_z != nullptr;
  const bool has_grad_kl = args.grad_kl != nullptr;
  // The soft sample is rebuilt from the regenerated noise, for hard samples too (their
  // straight-through gradient is the soft sample's); without grad_z no noise is drawn.
  const T* grad_z = has_grad_z ? static_cast<const T*>(args.grad_z) + start : nullptr;
  LaneRow<T, Team, kCache> lane_row{
      static_cast<const T*>(args.logits) + start, categories, Team::lane(), valid, has_grad_z, args.tau,
      has_grad_z ? static_cast<uint64_t>(args.seed_offset[0]) : 0,
      (has_grad_z ? static_cast<uint64_t>(args.seed_offset[1]) : 0) + static_cast<uint64_t>(start)};
  lane_row.fill();

  // Pass 1: the maxima of s, x and u.
  float maxima[3] = {-INFINITY, -INFINITY, -INFINITY};
  lane_row.for_each([&](const Column& c) {
    maxima[kNoisy] = fmaxf(maxima[kNoisy], c.s);
    maxima[kPosterior] = fmaxf(maxima[kPosterior], c.x);
    if (has_prior && has_grad_kl) maxima[kPrior] = fmaxf(maxima[kPrior], prior(c.col));
  });
  Team::max(maxima);

  // Pass 2: Σ exp(v − max).
  float totals[3] = {0.0f, 0.0f, 0.0f};
  lane_row.for_each([&](const Column& c) {
    if (has_grad_z) totals[kNoisy] += expf(c.s - maxima[kNoisy]);
    if (has_grad_kl) {
      totals[kPosterior] += expf(c.x - maxima[kPosterior]);
      if (has_prior) totals[kPrior] += expf(prior(c.col) - maxima[kPrior]);
    }
  });
  Team::sum(totals);

  // Pass 3: Σ grad_z·y (the softmax VJP's row term) and the row's KL (its gradient's).
  const float log_total = logf(totals[kPosterior]);
  const float prior_log_total = has_prior ? logf(totals[kPrior]) : 0.0f;
  auto log_ratio = [&](const Column& c) {  // log p − log q
    const float log_q =
        has_prior ? log_softmax_value(prior(c.col), maxima[kPrior], prior_log_total) : args.log_uniform;
    return log_softmax_value(c.x, maxima[kPosterior], log_total) - log_q;
  };
  enum { kDot = 0, kKL = 1 };
  float row_sums[2] = {0.0f, 0.0f};
  lane_row.for_each([&](const Column& c) {
    if (has_grad_z) {
      row_sums[kDot] += to_float(grad_z[c.col]) * softmax_probability(c.s, maxima[kNoisy], totals[kNoisy]);
    }
    if (has_grad_kl) row_sums[kKL] += softmax_probability(c.x, maxima[kPosterior], totals[kPosterior]) * log_ratio(c);
  });
  Team::sum(row_sums);
  if (!valid) return;  // no reductions follow

  // Pass 4: the gradients.
  const float upstream_kl = has_grad_kl ? args.grad_kl[row] : 0.0f;
  T* grad_logits = static_cast<T*>(args.grad_logits) + start;
  const bool grad_prior_float32 = args.grad_prior_dtype == kFloat32;
  lane_row.for_each([&](const Column& c) {
    float grad = 0.0f;
    if (has_grad_z) {
      const float y = softmax_probability(c.s, maxima[kNoisy], totals[kNoisy]);
      grad += gumbel_softmax_grad(y, to_float(grad_z[c.col]), row_sums[kDot], args.tau);
    }
    if (has_grad_kl) {
      const float p = softmax_probability(c.x, maxima[kPosterior], totals[kPosterior]);
      grad += categorical_kl_logit_grad(p, log_ratio(c), row_sums[kKL], upstream_kl);
      if (args.grad_prior) {
        const float q = softmax_probability(prior(c.col), maxima[kPrior], totals[kPrior]);
        const float value = categorical_kl_prior_grad(p, q, upstream_kl);
        if (grad_prior_float32) {
          static_cast<float*>(args.grad_prior)[start + c.col] = value;
        } else {
          static_cast<P*>(args.grad_prior)[start + c.col] = from_float<P>(value);
        }
      }
    }
    grad_logits[c.col] = from_float<T>(grad);
  });
}

// One launch of `Kernel<Team, kCache>` for the row width: the narrowest team whose
// registers hold the whole row, else a block (holding 4096 columns, regenerating the rest).
template <template <typename, int> class Kernel, typename Args>
void launch_for_width(const Args& args, cudaStream_t stream, const char* name) {
  auto launch = [&](auto kernel, int64_t rows_per_block) {
    const int64_t blocks = ceil_div(args.rows, rows_per_block);
    if (blocks > INT_MAX) {
      throw std::invalid_argument(std::string("fastvae ") + name + ": too many rows for one launch");
    }
    kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(args);
  };
  if (args.categories <= NarrowTeam::kLanes * kNarrowCache) {
    launch(Kernel<NarrowTeam, kNarrowCache>::kernel, NarrowTeam::kRowsPerBlock);
  } else if (args.categories <= WarpRowTeam::kLanes * kWarpRowCache) {
    launch(Kernel<WarpRowTeam, kWarpRowCache>::kernel, WarpRowTeam::kRowsPerBlock);
  } else {
    launch(Kernel<BlockTeam, kBlockRowCache>::kernel, BlockTeam::kRowsPerBlock);
  }
  check_launch(name);
}

// The kernels of one (T, P) pair as templates of (Team, kCache), for launch_for_width.
template <typename T, typename P>
struct ForwardKernels {
  template <typename Team, int kCache>
  struct Of {
    static constexpr auto kernel = categorical_forward_kernel<T, P, Team, kCache>;
  };
};

template <typename T, typename P>
struct BackwardKernels {
  template <typename Team, int kCache>
  struct Of {
    static constexpr auto kernel = categorical_backward_kernel<T, P, Team, kCache>;
  };
};

}  // namespace

void categorical_forward(const CategoricalForwardArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.categories == 0) return;
  FASTVAE_DISPATCH(args.dtype, "categorical_fwd", T, [&] {
    dispatch_prior_dtype<T>(args.dtype, args.prior_dtype, "categorical_fwd", [&](auto prior_type) {
      using P = decltype(prior_type);
      launch_for_width<ForwardKernels<T, P>::template Of>(args, stream, "categorical_fwd");
    });
  });
}

void categorical_backward(const CategoricalBackwardArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.categories == 0) return;
  FASTVAE_DISPATCH(args.dtype, "categorical_bwd", T, [&] {
    dispatch_prior_dtype<T>(args.dtype, args.prior_dtype, "categorical_bwd", [&](auto prior_type) {
      using P = decltype(prior_type);
      launch_for_width<BackwardKernels<T, P>::template Of>(args, stream, "categorical_bwd");
    });
  });
}

}  // namespace cuda
}  // namespace fastvae
