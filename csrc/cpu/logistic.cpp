// Discretized logistic family on the CPU: the single logistic over [B, N] rows and the
// mixture over [B, P, S] params, forward and backward, with the math of
// fastvae/logistic.h and the vectorizable elementary functions of vector_math.h.
//
// OpenMP splits (row, block) tasks: kLogisticRowPartialWidth columns or
// kMixtureRowPartialWidth pixels each.  Inside a task the loops run over the block's
// columns (pixels) innermost, so the compiler vectorizes them: the mixture takes one
// component k at a time, gathers its 3 (C = 1) or 10 (C = 3) parameter slots for the
// block's pixels into float arrays, then computes every pixel's Σ_c log P_c,k (and, going
// backward, its derivatives) in one SIMD loop.  A thread's scratch holds one block's
// components, not a [B, C, K, S] temporary; grad_params is written once.  When params need
// a gradient, the forward runs the backward's task with an upstream gradient of 1 instead,
// writing the nll and ∂nll/∂params together, and the backward only scales the latter.
//
// A task's sum runs in float64 lanes (csrc/cpu/row_sum.h) and becomes one partial that
// Python adds in a fixed order, so results do not depend on the number of threads.  The
// SIMD loops of the math are compiled twice, for the baseline x86-64 and for AVX2 (picked
// at run time), from the same source without floating-point contraction, so both give the
// same bits.
//
// The math loops take float32 arrays only: the dtype of the parameters (3) and of x (4)
// matter only to the loads and stores around them.  Instantiating the math once per dtype
// pair, as a task templated on both would, compiled 12 copies of each loop (× 2 targets ×
// 2 channel counts) and took minutes.
// Without -ftrapping-math's promise that a comparison never raises a floating-point
// exception, GCC will not turn the formulas' selects into vector blends, and no loop
// vectorizes.  Results are unchanged (nothing reads the exception flags); set before the
// includes, so that the inlined header functions share the setting.
#pragma GCC optimize("no-trapping-math")

#include <vector>

#include "fastvae/dispatch.h"
#include "fastvae/logistic_args.h"
#include "ops.h"
#include "row_sum.h"
#include "targets.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Below these sizes a call runs on the calling thread: waking the team costs more than
// the work (microseconds, and far more on a loaded machine).  The tasks and their
// partials are the same either way, so results do not change.
constexpr int64_t kLogisticParallelElements = 8192;
constexpr int64_t kMixtureParallelWork = 2048;  // pixels × components

// ---------------------------------------------------------------------------------------
// The single logistic
// ---------------------------------------------------------------------------------------

constexpr int kLogisticTile = 256;  // columns per SIMD loop

// A tile of columns in float32, loaded (and x snapped to the grid) before the math, so the
// loop of the math vectorizes whatever the dtypes.
struct LogisticTile {
  float mean[kLogisticTile], log_scale[kLogisticTile], value[kLogisticTile];
  int level[kLogisticTile];
};

template <typename T, typename X>
inline void load_logistic_tile(const T* mean, const T* log_scale, const X* x, const LogisticGrid& grid, int width,
                               LogisticTile& tile) {
  for (int i = 0; i < width; ++i) tile.mean[i] = to_float(mean[i]);
  for (int i = 0; i < width; ++i) tile.log_scale[i] = to_float(log_scale[i]);
  for (int i = 0; i < width; ++i) {
    const GridPoint point = grid_point(x[i], grid);
    tile.level[i] = point.level;
    tile.value[i] = point.value;
  }
}

// The math over one tile, the SIMD loops: nll, and the nll's derivatives scaled by the
// incoming gradient.
inline void logistic_tile_nll_body(const LogisticTile& tile, const LogisticGrid& grid, int width, float* nll) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    nll[i] = -discretized_logistic_log_prob<DecayLog1pMath>(tile.mean[i], tile.log_scale[i],
                                                        GridPoint{tile.level[i], tile.value[i]}, grid);
  }
}

inline void logistic_tile_grads_body(const LogisticTile& tile, const LogisticGrid& grid, int width,
                                     const float* upstream, float* grad_mean, float* grad_log_scale) {
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const LogisticLogProbGrads grads = discretized_logistic_log_prob_grads<DecayLog1pMath>(
        tile.mean[i], tile.log_scale[i], GridPoint{tile.level[i], tile.value[i]}, grid);
    // nll = −log P.
    grad_mean[i] = -upstream[i] * grads.mean;
    grad_log_scale[i] = -upstream[i] * grads.log_scale;
  }
}

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_AVX2_TARGET void logistic_tile_nll_avx2(const LogisticTile& tile, const LogisticGrid& grid, int width,
                                                float* nll) {
  logistic_tile_nll_body(tile, grid, width, nll);
}

FASTVAE_AVX2_TARGET void logistic_tile_grads_avx2(const LogisticTile& tile, const LogisticGrid& grid, int width,
                                                  const float* upstream, float* grad_mean, float* grad_log_scale) {
  logistic_tile_grads_body(tile, grid, width, upstream, grad_mean, grad_log_scale);
}
#endif

FASTVAE_BASELINE_TARGET void logistic_tile_nll_baseline(const LogisticTile& tile, const LogisticGrid& grid,
                                                        int width, float* nll) {
  logistic_tile_nll_body(tile, grid, width, nll);
}

FASTVAE_BASELINE_TARGET void logistic_tile_grads_baseline(const LogisticTile& tile, const LogisticGrid& grid,
                                                          int width, const float* upstream, float* grad_mean,
                                                          float* grad_log_scale) {
  logistic_tile_grads_body(tile, grid, width, upstream, grad_mean, grad_log_scale);
}

// The tile loops for this CPU, chosen once per call.
struct LogisticTileMath {
  decltype(&logistic_tile_nll_baseline) nll;
  decltype(&logistic_tile_grads_baseline) grads;
};

LogisticTileMath logistic_tile_math() {
#ifdef FASTVAE_AVX2_CLONE
  if (avx2_available()) return {logistic_tile_nll_avx2, logistic_tile_grads_avx2};
#endif
  return {logistic_tile_nll_baseline, logistic_tile_grads_baseline};
}

// Columns [begin, begin + count) of one row: the nll per element, or their sum.
template <typename T, typename X>
float logistic_forward_task(const LogisticForwardArgs& args, const LogisticTileMath& math, int64_t row,
                            int64_t begin, int64_t count) {
  const T* mean = static_cast<const T*>(args.mean) + row * args.mean_stride_b + begin;
  const T* log_scale = static_cast<const T*>(args.log_scale) + row * args.log_scale_stride_b + begin;
  const X* x = static_cast<const X*>(args.x) + row * args.x_stride_b + begin;
  const LogisticGrid grid = args.grid;
  RowSum partial;
  LogisticTile tile;
  float tile_nll[kLogisticTile];
  for (int64_t start = 0; start < count; start += kLogisticTile) {
    const int width = static_cast<int>(count - start < kLogisticTile ? count - start : kLogisticTile);
    load_logistic_tile(mean + start, log_scale + start, x + start, grid, width, tile);
    float* nll = args.per_element ? args.nll + row * args.features + begin + start : tile_nll;
    math.nll(tile, grid, width, nll);
    if (!args.per_element) partial.add(nll, width);
  }
  return partial.total();
}

template <typename T, typename X>
void logistic_backward_task(const LogisticBackwardArgs& args, const LogisticTileMath& math, int64_t row,
                            int64_t begin, int64_t count) {
  const T* mean = static_cast<const T*>(args.mean) + row * args.mean_stride_b + begin;
  const T* log_scale = static_cast<const T*>(args.log_scale) + row * args.log_scale_stride_b + begin;
  const X* x = static_cast<const X*>(args.x) + row * args.x_stride_b + begin;
  T* grad_mean = static_cast<T*>(args.grad_mean) + row * args.features + begin;
  T* grad_log_scale = static_cast<T*>(args.grad_log_scale) + row * args.features + begin;
  const LogisticGrid grid = args.grid;
  LogisticTile tile;
  float upstream[kLogisticTile], tile_grad_mean[kLogisticTile], tile_grad_log_scale[kLogisticTile];
  for (int64_t start = 0; start < count; start += kLogisticTile) {
    const int width = static_cast<int>(count - start < kLogisticTile ? count - start : kLogisticTile);
    load_logistic_tile(mean + start, log_scale + start, x + start, grid, width, tile);
    for (int i = 0; i < width; ++i) {
      upstream[i] = args.grad_per_element ? args.grad_nll[row * args.features + begin + start + i] : args.grad_nll[row];
    }
    math.grads(tile, grid, width, upstream, tile_grad_mean, tile_grad_log_scale);
    for (int i = 0; i < width; ++i) grad_mean[start + i] = from_float<T>(tile_grad_mean[i]);
    for (int i = 0; i < width; ++i) grad_log_scale[start + i] = from_float<T>(tile_grad_log_scale[i]);
  }
}

template <typename T, typename X>
void logistic_forward(const LogisticForwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.features, kLogisticRowPartialWidth);
  if (!args.per_element && args.row_partials != blocks_per_row) {
    throw std::invalid_argument("fastvae discretized_logistic_fwd: row_partials must be ceil(features / " +
                                std::to_string(kLogisticRowPartialWidth) + ")");
  }
  const LogisticTileMath math = logistic_tile_math();
#pragma omp parallel for schedule(static) if (args.batch * args.features >= kLogisticParallelElements)
  for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
    const int64_t row = task / blocks_per_row;
    const int64_t block = task % blocks_per_row;
    const int64_t begin = block * kLogisticRowPartialWidth;
    const int64_t count = args.features - begin < kLogisticRowPartialWidth ? args.features - begin
                                                                            : kLogisticRowPartialWidth;
    const float partial = logistic_forward_task<T, X>(args, math, row, begin, count);
    if (!args.per_element) args.nll[row * blocks_per_row + block] = partial;
  }
}

template <typename T, typename X>
void logistic_backward(const LogisticBackwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.features, kLogisticRowPartialWidth);
  const LogisticTileMath math = logistic_tile_math();
#pragma omp parallel for schedule(static) if (args.batch * args.features >= kLogisticParallelElements)
  for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
    const int64_t row = task / blocks_per_row;
    const int64_t begin = (task % blocks_per_row) * kLogisticRowPartialWidth;
    const int64_t count = args.features - begin < kLogisticRowPartialWidth ? args.features - begin
                                                                            : kLogisticRowPartialWidth;
    logistic_backward_task<T, X>(args, math, row, begin, count);
  }
}

// ---------------------------------------------------------------------------------------
// The mixture
// ---------------------------------------------------------------------------------------

constexpr int kBlock = static_cast<int>(kMixtureRowPartialWidth);  // pixels per task

// A component's parameter slots in the order the SIMD loops take them: its logit, then per
// channel the mean, the log-scale and (C = 3) the raw coefficient.
template <int C>
struct ComponentSlots {
  static constexpr int kCount = C == 1 ? 3 : 10;
  static constexpr int kPerChannel = C == 1 ? 2 : 3;

  static int64_t slot(int64_t components, int index, int64_t k) {
    if (index == 0) return k;
    const int c = (index - 1) / kPerChannel;
    const int which = (index - 1) % kPerChannel;
    return which == 0 ? MixtureSlots<C>::mean(components, c, k)
                      : (which == 1 ? MixtureSlots<C>::log_scale(components, c, k)
                                    : MixtureSlots<C>::coefficient(components, c, k));
  }
};

// The block's data: each channel's grid points, as arrays over pixels.
template <int C>
struct BlockData {
  float value[C][kBlock];
  int level[C][kBlock];
};

template <int C, typename X>
inline void load_block_data(const X* x_row, const PixelStrides& x_strides, const LogisticGrid& grid, int64_t begin,
                            int count, BlockData<C>& data) {
  for (int c = 0; c < C; ++c) {
    const X* channel = x_row + c * x_strides.channel + begin * x_strides.spatial;
    for (int p = 0; p < count; ++p) {
      const GridPoint point = grid_point(channel[p * x_strides.spatial], grid);
      data.value[c][p] = point.value;
      data.level[c][p] = point.level;
    }
  }
}

// One slot of component k at the block's pixels, in float32.
template <typename T>
inline void load_slot(const T* first_pixel, int64_t stride_s, int count, float* out) {
  if (stride_s == 1) {
    for (int p = 0; p < count; ++p) out[p] = to_float(first_pixel[p]);
  } else {
    for (int p = 0; p < count; ++p) out[p] = to_float(first_pixel[p * stride_s]);
  }
}

template <int C>
inline MixtureComponent<C> component_at(const float (&slots)[ComponentSlots<C>::kCount][kBlock], int p) {
  MixtureComponent<C> component;
  component.logit = slots[0][p];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const int first = 1 + c * ComponentSlots<C>::kPerChannel;
    component.mean[c] = slots[first][p];
    component.log_scale[c] = slots[first + 1][p];
    if constexpr (C == 3) {
      component.coefficient[c] = slots[first + 2][p];
    } else {
      component.coefficient[c] = 0.0f;
    }
  }
  return component;
}

template <int C>
inline void grid_points_at(const BlockData<C>& data, int p, GridPoint (&points)[C]) {
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) points[c] = GridPoint{data.level[c][p], data.value[c][p]};
}

// A logsumexp over the K components at each pixel of a block, kept in two parts: the shift
// (the maximum, 0 where it is −inf) and log Σ_k e^(v − shift).  Their sum is the
// logsumexp; the softmax weights e^((v − shift) − log_total) take them apart, since
// e^(v − logsumexp) would carry the rounding of a logsumexp of large magnitude (tens of
// thousands of nats) into every weight.
struct BlockLogSumExp {
  float shift[kBlock], log_total[kBlock];

  float result(int p) const { return shift[p] + log_total[p]; }
};

// logsumexp over the K rows of values[k·kBlock + p] for each pixel p, as torch and the
// Triton kernels: the maximum (−inf → 0 as the shift), then log Σ e^(v − max).
inline void block_logsumexp_body(const float* values, int64_t components, int count, BlockLogSumExp& out) {
  float top[kBlock], total[kBlock];
  for (int p = 0; p < count; ++p) {
    top[p] = -INFINITY;
    total[p] = 0.0f;
  }
  for (int64_t k = 0; k < components; ++k) {
#pragma omp simd
    for (int p = 0; p < count; ++p) top[p] = values[k * kBlock + p] > top[p] ? values[k * kBlock + p] : top[p];
  }
#pragma omp simd
  for (int p = 0; p < count; ++p) top[p] = top[p] == -INFINITY ? 0.0f : top[p];
  for (int64_t k = 0; k < components; ++k) {
#pragma omp simd
    for (int p = 0; p < count; ++p) total[p] += VectorMath::exp(values[k * kBlock + p] - top[p]);
  }
#pragma omp simd
  for (int p = 0; p < count; ++p) {
    out.shift[p] = top[p];
    out.log_total[p] = VectorMath::log(total[p]);
  }
}

// Component k at the block's pixels, forward: its logit and logit + Σ_c log P_c,k.
template <int C>
inline void component_forward_body(const float (&slots)[ComponentSlots<C>::kCount][kBlock], const BlockData<C>& data,
                                   const LogisticGrid& grid, int count, float* logits, float* joint) {
#pragma omp simd
  for (int p = 0; p < count; ++p) {
    const MixtureComponent<C> component = component_at<C>(slots, p);
    GridPoint points[C];
    grid_points_at<C>(data, p, points);
    logits[p] = component.logit;
    joint[p] = component.logit + mixture_component_log_prob<C, DecayLog1pMath>(component, points, grid);
  }
}

// Component k, backward's first pass: as forward, plus each channel's derivatives of
// Σ_c log P_c,k, written at [c·plane + p] of d_mean, d_log_scale and d_coefficient.
template <int C>
inline void component_grads_body(const float (&slots)[ComponentSlots<C>::kCount][kBlock], const BlockData<C>& data,
                                 const LogisticGrid& grid, int count, int64_t plane, float* logits, float* joint,
                                 float* d_mean, float* d_log_scale, float* d_coefficient) {
#pragma omp simd
  for (int p = 0; p < count; ++p) {
    const MixtureComponent<C> component = component_at<C>(slots, p);
    GridPoint points[C];
    grid_points_at<C>(data, p, points);
    const MixtureComponentGrads<C> grads = mixture_component_grads<C, DecayLog1pMath>(component, points, grid);
    logits[p] = component.logit;
    joint[p] = component.logit + grads.log_prob;
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      d_mean[c * plane + p] = grads.mean[c];
      d_log_scale[c * plane + p] = grads.log_scale[c];
      if constexpr (C == 3) d_coefficient[c * plane + p] = grads.coefficient[c];
    }
  }
}

// Component k, backward's second pass: the gradient of each of its parameter slots.
// nll = logsumexp(logits) − logsumexp(logits + Σ_c log P_c): with π = softmax(logits) and
// the responsibilities r = softmax(logits + Σ_c log P_c), ∂nll/∂logit_k = π_k − r_k and
// ∂nll/∂log P_c,k = −r_k.
template <int C>
inline void component_gradient_body(const float* logits, const float* joint, const float* d_mean,
                                    const float* d_log_scale, const float* d_coefficient, int64_t plane,
                                    const BlockLogSumExp& normalizer, const BlockLogSumExp& evidence,
                                    const float* upstream, int count, float (&out)[ComponentSlots<C>::kCount][kBlock]) {
  using Slots = ComponentSlots<C>;
#pragma omp simd
  for (int p = 0; p < count; ++p) {
    const float pi = VectorMath::exp((logits[p] - normalizer.shift[p]) - normalizer.log_total[p]);
    const float responsibility = VectorMath::exp((joint[p] - evidence.shift[p]) - evidence.log_total[p]);
    const float weight = -upstream[p] * responsibility;
    out[0][p] = upstream[p] * (pi - responsibility);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const int first = 1 + c * Slots::kPerChannel;
      out[first][p] = weight * d_mean[c * plane + p];
      out[first + 1][p] = weight * d_log_scale[c * plane + p];
      if constexpr (C == 3) out[first + 2][p] = weight * d_coefficient[c * plane + p];
    }
  }
}

// Each SIMD body compiled for AVX2 and for the baseline: MixtureMath<C>::pick() gives the
// set for this CPU.
template <int C>
struct MixtureMath {
  using SlotArray = float[ComponentSlots<C>::kCount][kBlock];
  void (*logsumexp)(const float*, int64_t, int, BlockLogSumExp&);
  void (*forward)(const SlotArray&, const BlockData<C>&, const LogisticGrid&, int, float*, float*);
  void (*grads)(const SlotArray&, const BlockData<C>&, const LogisticGrid&, int, int64_t, float*, float*, float*,
                float*, float*);
  void (*gradient)(const float*, const float*, const float*, const float*, const float*, int64_t,
                   const BlockLogSumExp&, const BlockLogSumExp&, const float*, int, SlotArray&);

#ifdef FASTVAE_AVX2_CLONE
  FASTVAE_AVX2_TARGET static void logsumexp_avx2(const float* values, int64_t components, int count,
                                                 BlockLogSumExp& out) {
    block_logsumexp_body(values, components, count, out);
  }
  FASTVAE_AVX2_TARGET static void forward_avx2(const SlotArray& slots, const BlockData<C>& data,
                                               const LogisticGrid& grid, int count, float* logits, float* joint) {
    component_forward_body<C>(slots, data, grid, count, logits, joint);
  }
  FASTVAE_AVX2_TARGET static void grads_avx2(const SlotArray& slots, const BlockData<C>& data,
                                             const LogisticGrid& grid, int count, int64_t plane, float* logits,
                                             float* joint, float* d_mean, float* d_log_scale, float* d_coefficient) {
    component_grads_body<C>(slots, data, grid, count, plane, logits, joint, d_mean, d_log_scale, d_coefficient);
  }
  FASTVAE_AVX2_TARGET static void gradient_avx2(const float* logits, const float* joint, const float* d_mean,
                                                const float* d_log_scale, const float* d_coefficient, int64_t plane,
                                                const BlockLogSumExp& normalizer, const BlockLogSumExp& evidence,
                                                const float* upstream, int count, SlotArray& out) {
    component_gradient_body<C>(logits, joint, d_mean, d_log_scale, d_coefficient, plane, normalizer, evidence,
                               upstream, count, out);
  }
#endif
  FASTVAE_BASELINE_TARGET static void logsumexp_baseline(const float* values, int64_t components, int count,
                                                         BlockLogSumExp& out) {
    block_logsumexp_body(values, components, count, out);
  }
  FASTVAE_BASELINE_TARGET static void forward_baseline(const SlotArray& slots, const BlockData<C>& data,
                                                       const LogisticGrid& grid, int count, float* logits,
                                                       float* joint) {
    component_forward_body<C>(slots, data, grid, count, logits, joint);
  }
  FASTVAE_BASELINE_TARGET static void grads_baseline(const SlotArray& slots, const BlockData<C>& data,
                                                     const LogisticGrid& grid, int count, int64_t plane,
                                                     float* logits, float* joint, float* d_mean, float* d_log_scale,
                                                     float* d_coefficient) {
    component_grads_body<C>(slots, data, grid, count, plane, logits, joint, d_mean, d_log_scale, d_coefficient);
  }
  FASTVAE_BASELINE_TARGET static void gradient_baseline(const float* logits, const float* joint,
                                                        const float* d_mean, const float* d_log_scale,
                                                        const float* d_coefficient, int64_t plane,
                                                        const BlockLogSumExp& normalizer,
                                                        const BlockLogSumExp& evidence, const float* upstream,
                                                        int count, SlotArray& out) {
    component_gradient_body<C>(logits, joint, d_mean, d_log_scale, d_coefficient, plane, normalizer, evidence,
                               upstream, count, out);
  }

  static MixtureMath pick() {
#ifdef FASTVAE_AVX2_CLONE
    if (avx2_available()) return {logsumexp_avx2, forward_avx2, grads_avx2, gradient_avx2};
#endif
    return {logsumexp_baseline, forward_baseline, grads_baseline, gradient_baseline};
  }
};

// The block's nll per pixel into args.nll, or their sum returned.
inline float store_block_nll(const LogisticMixtureForwardArgs& args, int64_t row, int64_t begin, int count,
                             const float* nll) {
  if (args.per_pixel) {
    for (int p = 0; p < count; ++p) args.nll[row * args.pixels + begin + p] = nll[p];
    return 0.0f;
  }
  RowSum partial;
  partial.add(nll, count);
  return partial.total();
}

// Pixels [begin, begin + count) of one row: the nll per pixel, or their sum.  scratch:
// 2·K·kBlock floats.
template <typename T, typename X, int C>
float mixture_forward_task(const LogisticMixtureForwardArgs& args, const MixtureMath<C>& math, float* scratch,
                           int64_t row, int64_t begin, int count) {
  using Slots = ComponentSlots<C>;
  const int64_t components = args.components;
  const LogisticGrid grid = args.grid;
  const T* params_row = static_cast<const T*>(args.params) + row * args.params_strides.batch;
  const T* first_pixel = params_row + begin * args.params_strides.spatial;
  BlockData<C> data;
  load_block_data<C>(static_cast<const X*>(args.x) + row * args.x_strides.batch, args.x_strides, grid, begin, count,
                     data);
  float* logits = scratch;                       // [K, kBlock]
  float* joint = scratch + components * kBlock;  // [K, kBlock]: logit + Σ_c log P_c,k
  float slots[Slots::kCount][kBlock];
  for (int64_t k = 0; k < components; ++k) {
    for (int j = 0; j < Slots::kCount; ++j) {
      load_slot(first_pixel + Slots::slot(components, j, k) * args.params_strides.channel,
                args.params_strides.spatial, count, slots[j]);
    }
    math.forward(slots, data, grid, count, logits + k * kBlock, joint + k * kBlock);
  }
  // −log p(x) = logsumexp_k(logits) − logsumexp_k(logits + Σ_c log P_c,k).
  BlockLogSumExp normalizer, evidence;
  float nll[kBlock];
  math.logsumexp(logits, components, count, normalizer);
  math.logsumexp(joint, components, count, evidence);
  for (int p = 0; p < count; ++p) nll[p] = normalizer.result(p) - evidence.result(p);
  return store_block_nll(args, row, begin, count, nll);
}

// scratch: (2 + 3C)·K·kBlock floats: the logits, the joint log-probabilities and each
// channel's derivatives of Σ_c log P_c,k, kept from the pass over k that finds both
// logsumexps for the pass that writes the gradient, so nothing is computed twice.  A null
// args.grad_nll is an upstream gradient of 1 (the forward's own gradient); nll, when not
// null, gets the block's nll per pixel, which this pass finds on the way.
template <typename T, typename X, int C>
void mixture_backward_task(const LogisticMixtureBackwardArgs& args, const MixtureMath<C>& math, float* scratch,
                           int64_t row, int64_t begin, int count, float* nll) {
  using Slots = ComponentSlots<C>;
  const int64_t components = args.components;
  const LogisticGrid grid = args.grid;
  const int64_t plane = components * kBlock;
  const T* first_pixel =
      static_cast<const T*>(args.params) + row * args.params_strides.batch + begin * args.params_strides.spatial;
  T* first_grad =
      static_cast<T*>(args.grad_params) + row * args.grad_strides.batch + begin * args.grad_strides.spatial;
  BlockData<C> data;
  load_block_data<C>(static_cast<const X*>(args.x) + row * args.x_strides.batch, args.x_strides, grid, begin, count,
                     data);
  float* logits = scratch;
  float* joint = scratch + plane;
  float* d_mean = scratch + 2 * plane;                   // [C, K, kBlock]
  float* d_log_scale = scratch + (2 + C) * plane;        // [C, K, kBlock]
  float* d_coefficient = scratch + (2 + 2 * C) * plane;  // [C, K, kBlock], C = 3 only
  float slots[Slots::kCount][kBlock];
  for (int64_t k = 0; k < components; ++k) {
    for (int j = 0; j < Slots::kCount; ++j) {
      load_slot(first_pixel + Slots::slot(components, j, k) * args.params_strides.channel,
                args.params_strides.spatial, count, slots[j]);
    }
    const int64_t at = k * kBlock;
    math.grads(slots, data, grid, count, plane, logits + at, joint + at, d_mean + at, d_log_scale + at,
               d_coefficient + at);
  }
  BlockLogSumExp normalizer, evidence;
  float upstream[kBlock];
  math.logsumexp(logits, components, count, normalizer);
  math.logsumexp(joint, components, count, evidence);
  for (int p = 0; p < count; ++p) {
    upstream[p] = !args.grad_nll ? 1.0f
                                 : (args.grad_per_pixel ? args.grad_nll[row * args.pixels + begin + p]
                                                        : args.grad_nll[row]);
  }
  if (nll) {
    for (int p = 0; p < count; ++p) nll[p] = normalizer.result(p) - evidence.result(p);
  }
  float out[Slots::kCount][kBlock];
  for (int64_t k = 0; k < components; ++k) {
    const int64_t at = k * kBlock;
    math.gradient(logits + at, joint + at, d_mean + at, d_log_scale + at, d_coefficient + at, plane, normalizer,
                  evidence, upstream, count, out);
    for (int j = 0; j < Slots::kCount; ++j) {
      T* grad = first_grad + Slots::slot(components, j, k) * args.grad_strides.channel;
      const int64_t stride_s = args.grad_strides.spatial;
      if (stride_s == 1) {
        for (int p = 0; p < count; ++p) grad[p] = from_float<T>(out[j][p]);
      } else {
        for (int p = 0; p < count; ++p) grad[p * stride_s] = from_float<T>(out[j][p]);
      }
    }
  }
}

// The arguments of the backward's task for a forward that also writes ∂nll/∂params: an
// upstream gradient of 1 (no grad_nll).  That task finds the nll on its way, so training
// costs one such pass and a scaling of its gradient rather than a forward pass and a
// backward pass that repeats all of it.
inline LogisticMixtureBackwardArgs forward_gradient_args(const LogisticMixtureForwardArgs& args) {
  LogisticMixtureBackwardArgs gradient_args{};
  gradient_args.params = args.params;
  gradient_args.x = args.x;
  gradient_args.grad_nll = nullptr;
  gradient_args.grad_params = args.grad_params;
  gradient_args.batch = args.batch;
  gradient_args.pixels = args.pixels;
  gradient_args.components = args.components;
  gradient_args.params_strides = args.params_strides;
  gradient_args.x_strides = args.x_strides;
  gradient_args.grad_strides = args.grad_strides;
  gradient_args.grid = args.grid;
  gradient_args.channels = args.channels;
  gradient_args.dtype = args.dtype;
  gradient_args.x_dtype = args.x_dtype;
  return gradient_args;
}

template <typename T, typename X, int C>
void mixture_forward(const LogisticMixtureForwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.pixels, kBlock);
  if (!args.per_pixel && args.pixel_partials != blocks_per_row) {
    throw std::invalid_argument("fastvae logistic_mixture_fwd: pixel_partials must be ceil(pixels / " +
                                std::to_string(kBlock) + ")");
  }
  const MixtureMath<C> math = MixtureMath<C>::pick();
  const bool with_grad = args.grad_params != nullptr;
  const LogisticMixtureBackwardArgs gradient_args = forward_gradient_args(args);
  // The backward's task keeps each channel's derivatives too.
  const size_t scratch_size = static_cast<size_t>((with_grad ? 2 + 3 * C : 2) * args.components * kBlock);
#pragma omp parallel if (args.batch * args.pixels * args.components >= kMixtureParallelWork)
  {
    std::vector<float> scratch(scratch_size);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
      const int64_t row = task / blocks_per_row;
      const int64_t block = task % blocks_per_row;
      const int64_t begin = block * kBlock;
      const int count = static_cast<int>(args.pixels - begin < kBlock ? args.pixels - begin : kBlock);
      float partial;
      if (with_grad) {
        float nll[kBlock];
        mixture_backward_task<T, X, C>(gradient_args, math, scratch.data(), row, begin, count, nll);
        partial = store_block_nll(args, row, begin, count, nll);
      } else {
        partial = mixture_forward_task<T, X, C>(args, math, scratch.data(), row, begin, count);
      }
      if (!args.per_pixel) args.nll[row * blocks_per_row + block] = partial;
    }
  }
}

template <typename T, typename X, int C>
void mixture_backward(const LogisticMixtureBackwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.pixels, kBlock);
  const MixtureMath<C> math = MixtureMath<C>::pick();
#pragma omp parallel if (args.batch * args.pixels * args.components >= kMixtureParallelWork)
  {
    std::vector<float> scratch(static_cast<size_t>((2 + 3 * C) * args.components * kBlock));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
      const int64_t row = task / blocks_per_row;
      const int64_t begin = (task % blocks_per_row) * kBlock;
      const int count = static_cast<int>(args.pixels - begin < kBlock ? args.pixels - begin : kBlock);
      mixture_backward_task<T, X, C>(args, math, scratch.data(), row, begin, count, nullptr);
    }
  }
}

}  // namespace

void discretized_logistic_forward(const LogisticForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "discretized_logistic_fwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "discretized_logistic_fwd", [&](auto x_type) {
      logistic_forward<T, decltype(x_type)>(args);
    });
  });
}

void discretized_logistic_backward(const LogisticBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "discretized_logistic_bwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "discretized_logistic_bwd", [&](auto x_type) {
      logistic_backward<T, decltype(x_type)>(args);
    });
  });
}

void logistic_mixture_forward(const LogisticMixtureForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "logistic_mixture_fwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "logistic_mixture_fwd", [&](auto x_type) {
      dispatch_mixture_channels(args.channels, "logistic_mixture_fwd", [&](auto channels) {
        mixture_forward<T, decltype(x_type), decltype(channels)::value>(args);
      });
    });
  });
}

void logistic_mixture_backward(const LogisticMixtureBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "logistic_mixture_bwd", T, [&] {
    dispatch_grid_data(args.x_dtype, "logistic_mixture_bwd", [&](auto x_type) {
      dispatch_mixture_channels(args.channels, "logistic_mixture_bwd", [&](auto channels) {
        mixture_backward<T, decltype(x_type), decltype(channels)::value>(args);
      });
    });
  });
}

}  // namespace cpu
}  // namespace fastvae
