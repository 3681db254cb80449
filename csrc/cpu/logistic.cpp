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
// components, not a [B, C, K, S] temporary; grad_params is written once.
//
// A task's sum runs in column (pixel) order and becomes one partial that Python adds in a
// fixed order, so results do not depend on the number of threads.  The task bodies are
// compiled twice, for the baseline x86-64 and for AVX2 (picked at run time), from the same
// source without floating-point contraction, so both give the same bits.
// Without -ftrapping-math's promise that a comparison never raises a floating-point
// exception, GCC will not turn the formulas' selects into vector blends, and no loop
// vectorizes.  Results are unchanged (nothing reads the exception flags); set before the
// includes, so that the inlined header functions share the setting.
#pragma GCC optimize("no-trapping-math")

#include <vector>

#include "fastvae/dispatch.h"
#include "fastvae/logistic_args.h"
#include "ops.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTVAE_AVX2_CLONE 1
#define FASTVAE_AVX2_TARGET __attribute__((target("avx2"), flatten))
#define FASTVAE_BASELINE_TARGET __attribute__((flatten))
#else
#define FASTVAE_BASELINE_TARGET
#endif

bool avx2_available() {
#ifdef FASTVAE_AVX2_CLONE
  static const bool available = __builtin_cpu_supports("avx2");
  return available;
#else
  return false;
#endif
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

// Columns [begin, begin + count) of one row: the nll per element, or their sum in column
// order.
template <typename T, typename X>
inline float logistic_forward_task(const LogisticForwardArgs& args, int64_t row, int64_t begin, int64_t count) {
  const T* mean = static_cast<const T*>(args.mean) + row * args.mean_stride_b + begin;
  const T* log_scale = static_cast<const T*>(args.log_scale) + row * args.log_scale_stride_b + begin;
  const X* x = static_cast<const X*>(args.x) + row * args.x_stride_b + begin;
  const LogisticGrid grid = args.grid;
  float partial = 0.0f;
  LogisticTile tile;
  float tile_nll[kLogisticTile];
  for (int64_t start = 0; start < count; start += kLogisticTile) {
    const int width = static_cast<int>(count - start < kLogisticTile ? count - start : kLogisticTile);
    load_logistic_tile(mean + start, log_scale + start, x + start, grid, width, tile);
    float* nll = args.per_element ? args.nll + row * args.features + begin + start : tile_nll;
#pragma omp simd
    for (int i = 0; i < width; ++i) {
      nll[i] = -discretized_logistic_log_prob<VectorMath>(tile.mean[i], tile.log_scale[i],
                                                          GridPoint{tile.level[i], tile.value[i]}, grid);
    }
    if (!args.per_element) {
      for (int i = 0; i < width; ++i) partial += nll[i];
    }
  }
  return partial;
}

template <typename T, typename X>
inline void logistic_backward_task(const LogisticBackwardArgs& args, int64_t row, int64_t begin, int64_t count) {
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
#pragma omp simd
    for (int i = 0; i < width; ++i) {
      const LogisticLogProbGrads grads = discretized_logistic_log_prob_grads<VectorMath>(
          tile.mean[i], tile.log_scale[i], GridPoint{tile.level[i], tile.value[i]}, grid);
      // nll = −log P.
      tile_grad_mean[i] = -upstream[i] * grads.mean;
      tile_grad_log_scale[i] = -upstream[i] * grads.log_scale;
    }
    for (int i = 0; i < width; ++i) grad_mean[start + i] = from_float<T>(tile_grad_mean[i]);
    for (int i = 0; i < width; ++i) grad_log_scale[start + i] = from_float<T>(tile_grad_log_scale[i]);
  }
}

#ifdef FASTVAE_AVX2_CLONE
template <typename T, typename X>
FASTVAE_AVX2_TARGET float logistic_forward_task_avx2(const LogisticForwardArgs& args, int64_t row, int64_t begin,
                                                     int64_t count) {
  return logistic_forward_task<T, X>(args, row, begin, count);
}

template <typename T, typename X>
FASTVAE_AVX2_TARGET void logistic_backward_task_avx2(const LogisticBackwardArgs& args, int64_t row, int64_t begin,
                                                     int64_t count) {
  logistic_backward_task<T, X>(args, row, begin, count);
}
#endif

template <typename T, typename X>
FASTVAE_BASELINE_TARGET float logistic_forward_task_baseline(const LogisticForwardArgs& args, int64_t row,
                                                             int64_t begin, int64_t count) {
  return logistic_forward_task<T, X>(args, row, begin, count);
}

template <typename T, typename X>
FASTVAE_BASELINE_TARGET void logistic_backward_task_baseline(const LogisticBackwardArgs& args, int64_t row,
                                                             int64_t begin, int64_t count) {
  logistic_backward_task<T, X>(args, row, begin, count);
}

template <typename T, typename X>
void logistic_forward(const LogisticForwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.features, kLogisticRowPartialWidth);
  if (!args.per_element && args.row_partials != blocks_per_row) {
    throw std::invalid_argument("fastvae discretized_logistic_fwd: row_partials must be ceil(features / " +
                                std::to_string(kLogisticRowPartialWidth) + ")");
  }
  const bool avx2 = avx2_available();
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
    const int64_t row = task / blocks_per_row;
    const int64_t block = task % blocks_per_row;
    const int64_t begin = block * kLogisticRowPartialWidth;
    const int64_t count = args.features - begin < kLogisticRowPartialWidth ? args.features - begin
                                                                            : kLogisticRowPartialWidth;
#ifdef FASTVAE_AVX2_CLONE
    const float partial = avx2 ? logistic_forward_task_avx2<T, X>(args, row, begin, count)
                               : logistic_forward_task_baseline<T, X>(args, row, begin, count);
#else
    const float partial = logistic_forward_task_baseline<T, X>(args, row, begin, count);
#endif
    if (!args.per_element) args.nll[row * blocks_per_row + block] = partial;
  }
  (void)avx2;
}

template <typename T, typename X>
void logistic_backward(const LogisticBackwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.features, kLogisticRowPartialWidth);
  const bool avx2 = avx2_available();
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
    const int64_t row = task / blocks_per_row;
    const int64_t begin = (task % blocks_per_row) * kLogisticRowPartialWidth;
    const int64_t count = args.features - begin < kLogisticRowPartialWidth ? args.features - begin
                                                                            : kLogisticRowPartialWidth;
#ifdef FASTVAE_AVX2_CLONE
    if (avx2) {
      logistic_backward_task_avx2<T, X>(args, row, begin, count);
      continue;
    }
#endif
    logistic_backward_task_baseline<T, X>(args, row, begin, count);
  }
  (void)avx2;
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

// logsumexp over the K rows of values[k·kBlock + p] for each pixel p, as torch and the
// Triton kernels: the maximum (−inf → 0 as the shift), then log Σ e^(v − max).
inline void block_logsumexp(const float* values, int64_t components, int count, float* out) {
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
  for (int p = 0; p < count; ++p) out[p] = top[p] + VectorMath::log(total[p]);
}

// Pixels [begin, begin + count) of one row: the nll per pixel, or their sum in pixel
// order.  scratch: 2·K·kBlock floats.
template <typename T, typename X, int C>
inline float mixture_forward_task(const LogisticMixtureForwardArgs& args, float* scratch, int64_t row, int64_t begin,
                                  int count) {
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
#pragma omp simd
    for (int p = 0; p < count; ++p) {
      const MixtureComponent<C> component = component_at<C>(slots, p);
      GridPoint points[C];
      grid_points_at<C>(data, p, points);
      logits[k * kBlock + p] = component.logit;
      joint[k * kBlock + p] = component.logit + mixture_component_log_prob<C, VectorMath>(component, points, grid);
    }
  }
  // −log p(x) = logsumexp_k(logits) − logsumexp_k(logits + Σ_c log P_c,k).
  float log_normalizer[kBlock], log_evidence[kBlock];
  block_logsumexp(logits, components, count, log_normalizer);
  block_logsumexp(joint, components, count, log_evidence);
  float partial = 0.0f;
  for (int p = 0; p < count; ++p) {
    const float nll = log_normalizer[p] - log_evidence[p];
    if (args.per_pixel) {
      args.nll[row * args.pixels + begin + p] = nll;
    } else {
      partial += nll;
    }
  }
  return partial;
}

// scratch: (2 + 3C)·K·kBlock floats: the logits, the joint log-probabilities and each
// channel's derivatives of Σ_c log P_c,k, kept from the pass over k that finds both
// logsumexps for the pass that writes the gradient, so nothing is computed twice.
template <typename T, typename X, int C>
inline void mixture_backward_task(const LogisticMixtureBackwardArgs& args, float* scratch, int64_t row,
                                  int64_t begin, int count) {
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
  float* d_mean = scratch + 2 * plane;                // [C, K, kBlock]
  float* d_log_scale = scratch + (2 + C) * plane;     // [C, K, kBlock]
  float* d_coefficient = scratch + (2 + 2 * C) * plane;  // [C, K, kBlock], C = 3 only
  float slots[Slots::kCount][kBlock];
  for (int64_t k = 0; k < components; ++k) {
    for (int j = 0; j < Slots::kCount; ++j) {
      load_slot(first_pixel + Slots::slot(components, j, k) * args.params_strides.channel,
                args.params_strides.spatial, count, slots[j]);
    }
#pragma omp simd
    for (int p = 0; p < count; ++p) {
      const MixtureComponent<C> component = component_at<C>(slots, p);
      GridPoint points[C];
      grid_points_at<C>(data, p, points);
      const MixtureComponentGrads<C> grads = mixture_component_grads<C, VectorMath>(component, points, grid);
      const int64_t at = k * kBlock + p;
      logits[at] = component.logit;
      joint[at] = component.logit + grads.log_prob;
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        d_mean[c * plane + at] = grads.mean[c];
        d_log_scale[c * plane + at] = grads.log_scale[c];
        if constexpr (C == 3) d_coefficient[c * plane + at] = grads.coefficient[c];
      }
    }
  }
  float log_normalizer[kBlock], log_evidence[kBlock], upstream[kBlock];
  block_logsumexp(logits, components, count, log_normalizer);
  block_logsumexp(joint, components, count, log_evidence);
  for (int p = 0; p < count; ++p) {
    upstream[p] = args.grad_per_pixel ? args.grad_nll[row * args.pixels + begin + p] : args.grad_nll[row];
  }
  // nll = logsumexp(logits) − logsumexp(logits + Σ_c log P_c): with π = softmax(logits) and
  // the responsibilities r = softmax(logits + Σ_c log P_c), ∂nll/∂logit_k = π_k − r_k and
  // ∂nll/∂log P_c,k = −r_k.
  float out[Slots::kCount][kBlock];
  for (int64_t k = 0; k < components; ++k) {
#pragma omp simd
    for (int p = 0; p < count; ++p) {
      const int64_t at = k * kBlock + p;
      const float pi = VectorMath::exp(logits[at] - log_normalizer[p]);
      const float responsibility = VectorMath::exp(joint[at] - log_evidence[p]);
      const float weight = -upstream[p] * responsibility;
      out[0][p] = upstream[p] * (pi - responsibility);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const int first = 1 + c * Slots::kPerChannel;
        out[first][p] = weight * d_mean[c * plane + at];
        out[first + 1][p] = weight * d_log_scale[c * plane + at];
        if constexpr (C == 3) out[first + 2][p] = weight * d_coefficient[c * plane + at];
      }
    }
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

#ifdef FASTVAE_AVX2_CLONE
template <typename T, typename X, int C>
FASTVAE_AVX2_TARGET float mixture_forward_task_avx2(const LogisticMixtureForwardArgs& args, float* scratch,
                                                    int64_t row, int64_t begin, int count) {
  return mixture_forward_task<T, X, C>(args, scratch, row, begin, count);
}

template <typename T, typename X, int C>
FASTVAE_AVX2_TARGET void mixture_backward_task_avx2(const LogisticMixtureBackwardArgs& args, float* scratch,
                                                    int64_t row, int64_t begin, int count) {
  mixture_backward_task<T, X, C>(args, scratch, row, begin, count);
}
#endif

template <typename T, typename X, int C>
FASTVAE_BASELINE_TARGET float mixture_forward_task_baseline(const LogisticMixtureForwardArgs& args, float* scratch,
                                                            int64_t row, int64_t begin, int count) {
  return mixture_forward_task<T, X, C>(args, scratch, row, begin, count);
}

template <typename T, typename X, int C>
FASTVAE_BASELINE_TARGET void mixture_backward_task_baseline(const LogisticMixtureBackwardArgs& args, float* scratch,
                                                            int64_t row, int64_t begin, int count) {
  mixture_backward_task<T, X, C>(args, scratch, row, begin, count);
}

template <typename T, typename X, int C>
void mixture_forward(const LogisticMixtureForwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.pixels, kBlock);
  if (!args.per_pixel && args.pixel_partials != blocks_per_row) {
    throw std::invalid_argument("fastvae logistic_mixture_fwd: pixel_partials must be ceil(pixels / " +
                                std::to_string(kBlock) + ")");
  }
  const bool avx2 = avx2_available();
#pragma omp parallel
  {
    std::vector<float> scratch(static_cast<size_t>(2 * args.components * kBlock));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
      const int64_t row = task / blocks_per_row;
      const int64_t block = task % blocks_per_row;
      const int64_t begin = block * kBlock;
      const int count = static_cast<int>(args.pixels - begin < kBlock ? args.pixels - begin : kBlock);
#ifdef FASTVAE_AVX2_CLONE
      const float partial = avx2 ? mixture_forward_task_avx2<T, X, C>(args, scratch.data(), row, begin, count)
                                 : mixture_forward_task_baseline<T, X, C>(args, scratch.data(), row, begin, count);
#else
      const float partial = mixture_forward_task_baseline<T, X, C>(args, scratch.data(), row, begin, count);
#endif
      if (!args.per_pixel) args.nll[row * blocks_per_row + block] = partial;
    }
  }
  (void)avx2;
}

template <typename T, typename X, int C>
void mixture_backward(const LogisticMixtureBackwardArgs& args) {
  const int64_t blocks_per_row = ceil_div(args.pixels, kBlock);
  const bool avx2 = avx2_available();
#pragma omp parallel
  {
    std::vector<float> scratch(static_cast<size_t>((2 + 3 * C) * args.components * kBlock));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < args.batch * blocks_per_row; ++task) {
      const int64_t row = task / blocks_per_row;
      const int64_t begin = (task % blocks_per_row) * kBlock;
      const int count = static_cast<int>(args.pixels - begin < kBlock ? args.pixels - begin : kBlock);
#ifdef FASTVAE_AVX2_CLONE
      if (avx2) {
        mixture_backward_task_avx2<T, X, C>(args, scratch.data(), row, begin, count);
        continue;
      }
#endif
      mixture_backward_task_baseline<T, X, C>(args, scratch.data(), row, begin, count);
    }
  }
  (void)avx2;
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
