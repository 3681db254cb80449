// Per-element math of the discretized logistic likelihood (PixelCNN++'s, as NVAE and VDVAE
// use it) and of its mixture, shared by the CUDA kernels and the CPU loops.  The formulas
// are those of kernels/logistic.py (see its docstring): the exact bin mass.  With
// half = 1/(num_bins − 1), s = e^(−max(log_scale, −7)), a = s·(x − mean + half),
// b = s·(x − mean − half) and the bin width in units of the scale d = 2·half·s:
//
//     log P = log σ(a)                                  at the lowest level,
//             log σ(−b)                                 at the highest,
//             log σ(a) + log σ(−b) + log(1 − e^(−d))    elsewhere (= log(σ(a) − σ(b))),
//
//     ∂log P/∂mean      = s·(σ(b)·[not lowest] − σ(−a)·[not highest])
//     ∂log P/∂log_scale = b·σ(b)·[not lowest] − a·σ(−a)·[not highest] − [interior]·d/(e^d − 1)
//
// (the second 0 where log_scale < −7, as torch.clamp_min's gradient).  Exact everywhere:
// log(1 − e^(−d)) and d/(e^d − 1) come from expm1, exact for tiny d (a scale many bins
// wide), where kernels/logistic.py uses a series.
//
// Every formula takes its elementary functions from a Math policy: common.h's LibraryMath,
// the C/CUDA math library (the CUDA kernels'), by default; the
// CPU loops pass csrc/cpu/vector_math.h's branch-free forms, which the compiler vectorizes
// over pixels (a libm call per element would not be, and costs ten times as much).
#pragma once

#include "fastvae/common.h"

// Fully unrolls a loop over the C channels: on the CPU this lets a SIMD loop over pixels
// around it vectorize (GCC will not vectorize a loop nest with inner loops).
#if defined(__CUDA_ARCH__)
#define FASTVAE_UNROLL_CHANNELS _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__CUDACC__) && !defined(__clang__)
#define FASTVAE_UNROLL_CHANNELS _Pragma("GCC unroll 4")
#else
#define FASTVAE_UNROLL_CHANNELS
#endif

namespace fastvae {

// fastvae.reference.LOG_SCALE_MIN: log-scales below it act as it and get no gradient.
constexpr float kLogScaleMin = -7.0f;

// The most mixture components the C++ kernels take: each pixel keeps one value per
// component (CPU: its gradients too) in a fixed-size array.  NVAE and PixelCNN++ use 10.
constexpr int kMaxMixtureComponents = 64;

// The grid of num_bins levels −1 + 2i/(num_bins − 1), as kernels/logistic.py's
// _grid_constants passes it.
struct LogisticGrid {
  int top_level;      // num_bins − 1, the highest level index
  float level_scale;  // (num_bins − 1)/2: a float x sits at level round((x + 1)·level_scale)
  float half;         // half a bin, 1/(num_bins − 1)
};

// One sub-pixel of data: its level index and the level's value in [−1, 1] (NaN for NaN x).
struct GridPoint {
  int level;
  float value;
};

// A uint8 x is the level index itself.  value = (2·level − top)/top: an exact integer
// divided once, so correctly rounded, as the Triton kernels and ops._snap compute it; NaN
// for an index past the grid (num_bins or more), which is no level.
FASTVAE_HD GridPoint grid_point(uint8_t level, const LogisticGrid& grid) {
  const float top = 2.0f * grid.level_scale;
  const float index = static_cast<float>(level);
  return GridPoint{static_cast<int>(level), index <= top ? (2.0f * index - top) / top : bits_as_float(0x7fc00000u)};
}

// A float x in [−1, 1] (float32, bfloat16 or float16) is snapped to the nearest level,
// clamped to the grid; a NaN x keeps NaN as its value (and some level, whose branch only
// decides which NaN terms add up).
template <typename X>
FASTVAE_HD GridPoint grid_point(X raw, const LogisticGrid& grid) {
  const float x = to_float(raw);
  const float top = 2.0f * grid.level_scale;
  const bool is_number = x == x;
  const float scaled = ((is_number ? x : 0.0f) + 1.0f) * grid.level_scale;
  // clamp(floor(scaled + ½), 0, top), as the Triton kernels snap: clamping first makes the
  // floor a truncation (of a number in [0, top]), and selects rather than floorf, fminf
  // and fmaxf keep the CPU loops vectorizable.
  const float rounded = scaled + 0.5f;
  const float limited = rounded < 0.0f ? 0.0f : (rounded > top ? top : rounded);
  const float snapped = static_cast<float>(static_cast<int>(limited));
  return GridPoint{static_cast<int>(snapped), is_number ? (2.0f * snapped - top) / top : bits_as_float(0x7fc00000u)};
}

// The bin of x under logistic(mean, e^log_scale): its edges a, b and width d in units of
// the (clamped) scale, and 1/scale itself.
struct LogisticBin {
  float a, b, d, inv_scale;
  bool clamped;  // log_scale < −7: it acts as −7 and gets no gradient
};

template <typename Math = LibraryMath>
FASTVAE_HD LogisticBin logistic_bin(float mean, float log_scale, float value, float half) {
  const bool clamped = log_scale < kLogScaleMin;  // false for NaN, which stays NaN
  const float inv_scale = Math::exp(-(clamped ? kLogScaleMin : log_scale));
  const float centered = value - mean;
  return LogisticBin{inv_scale * (centered + half), inv_scale * (centered - half), inv_scale * (2.0f * half), inv_scale,
                     clamped};
}

// log σ(t) = min(t, 0) − log1p(e^(−|t|)), from the e^(−|t|) the caller may reuse.  (A NaN
// t gives NaN through the decay.)
template <typename Math = LibraryMath>
FASTVAE_HD float log_sigmoid_from_decay(float t, float decay) { return (t < 0.0f ? t : 0.0f) - Math::log1p(decay); }

// log(1 − e^(−d)), the interior bin's mass beyond its two log-sigmoids; exact for tiny d.
template <typename Math = LibraryMath>
FASTVAE_HD float log_bin_width_mass(float d) { return Math::log(-Math::expm1(-d)); }

// d/(e^d − 1), its derivative's factor; 1 in the limit d = 0 (a log-scale so large that
// 1/scale underflows), 0 once e^d overflows.
template <typename Math = LibraryMath>
FASTVAE_HD float bin_width_ratio(float d) { return d > 0.0f ? d / Math::expm1(d) : 1.0f; }

// log P(x) of the discretized logistic.
template <typename Math = LibraryMath>
FASTVAE_HD float discretized_logistic_log_prob(float mean, float log_scale, GridPoint x, const LogisticGrid& grid) {
  const LogisticBin bin = logistic_bin<Math>(mean, log_scale, x.value, grid.half);
  const bool not_lowest = x.level > 0;
  const bool not_highest = x.level < grid.top_level;
  float log_prob = 0.0f;
  if (not_highest) log_prob += log_sigmoid_from_decay<Math>(bin.a, Math::exp(-fabsf(bin.a)));
  if (not_lowest) log_prob += log_sigmoid_from_decay<Math>(-bin.b, Math::exp(-fabsf(bin.b)));
  if (not_highest && not_lowest) log_prob += log_bin_width_mass<Math>(bin.d);
  return log_prob;
}

struct LogisticLogProbGrads {
  float log_prob, mean, log_scale;  // log P, ∂log P/∂mean, ∂log P/∂log_scale
};

// log P(x) and its derivatives (the file comment's formulas).  σ(−a) and σ(b) come from
// the same exponentials as the log-sigmoids.  Callers that use only the derivatives let
// the compiler drop the logarithms.
template <typename Math = LibraryMath>
FASTVAE_HD LogisticLogProbGrads discretized_logistic_log_prob_grads(float mean, float log_scale, GridPoint x,
                                                                     const LogisticGrid& grid) {
  const LogisticBin bin = logistic_bin<Math>(mean, log_scale, x.value, grid.half);
  const bool not_lowest = x.level > 0;
  const bool not_highest = x.level < grid.top_level;
  const bool interior = not_lowest && not_highest;
  const float decay_a = Math::exp(-fabsf(bin.a));
  const float decay_b = Math::exp(-fabsf(bin.b));
  float log_prob = 0.0f;
  if (not_highest) log_prob += log_sigmoid_from_decay<Math>(bin.a, decay_a);
  if (not_lowest) log_prob += log_sigmoid_from_decay<Math>(-bin.b, decay_b);
  if (interior) log_prob += log_bin_width_mass<Math>(bin.d);
  const float sigmoid_neg_a = not_highest ? (bin.a >= 0.0f ? decay_a : 1.0f) / (1.0f + decay_a) : 0.0f;
  const float sigmoid_b = not_lowest ? (bin.b >= 0.0f ? 1.0f : decay_b) / (1.0f + decay_b) : 0.0f;
  const float d_mean = bin.inv_scale * (sigmoid_b - sigmoid_neg_a);
  const float d_log_scale =
      bin.b * sigmoid_b - bin.a * sigmoid_neg_a - (interior ? bin_width_ratio<Math>(bin.d) : 0.0f);
  return LogisticLogProbGrads{log_prob, d_mean, bin.clamped ? 0.0f : d_log_scale};
}

// ---------------------------------------------------------------------------------------
// The mixture: params [B, P, S] in NVAE's layout, P = 3K (C = 1) or 10K (C = 3)
// ---------------------------------------------------------------------------------------

// Slots of component k: its logit at k; channel c's mean, log-scale and raw coupling
// coefficient in the channel's block (C = 1: K means, K log-scales; C = 3: K means, K
// log-scales, K coefficients), the blocks after the K logits.
template <int C>
struct MixtureSlots {
  static_assert(C == 1 || C == 3, "the mixture takes 1- or 3-channel data");
  FASTVAE_HD static int64_t mean(int64_t components, int c, int64_t k) {
    return components + (C == 1 ? 2 : 3) * components * c + k;
  }
  FASTVAE_HD static int64_t log_scale(int64_t components, int c, int64_t k) { return mean(components, c, k) + components; }
  FASTVAE_HD static int64_t coefficient(int64_t components, int c, int64_t k) {
    return mean(components, c, k) + 2 * components;
  }
};

// One component's parameters at one pixel, in float32.
template <int C>
struct MixtureComponent {
  float logit;
  float mean[C], log_scale[C];
  float coefficient[C];  // raw, before tanh; C = 3 only (α, β, γ in channels R, G, B)
};

// Component k of the pixel whose slot 0 is at `pixel` (slots stride_p apart).
template <int C, typename T>
FASTVAE_HD MixtureComponent<C> load_mixture_component(const T* pixel, int64_t stride_p, int64_t components, int64_t k) {
  MixtureComponent<C> component;
  component.logit = to_float(pixel[k * stride_p]);
  FASTVAE_UNROLL_CHANNELS
  for (int c = 0; c < C; ++c) {
    component.mean[c] = to_float(pixel[MixtureSlots<C>::mean(components, c, k) * stride_p]);
    component.log_scale[c] = to_float(pixel[MixtureSlots<C>::log_scale(components, c, k) * stride_p]);
    component.coefficient[c] = C == 3 ? to_float(pixel[MixtureSlots<C>::coefficient(components, c, k) * stride_p]) : 0.0f;
  }
  return component;
}

// The C sub-pixels of one pixel, channels stride_c apart from `pixel`.
template <int C, typename X>
FASTVAE_HD void load_grid_points(const X* pixel, int64_t stride_c, const LogisticGrid& grid, GridPoint (&points)[C]) {
  FASTVAE_UNROLL_CHANNELS
  for (int c = 0; c < C; ++c) points[c] = grid_point(pixel[c * stride_c], grid);
}

// The coupled means of a component: mean_G += α·x_R, mean_B += β·x_R + γ·x_G, with
// (α, β, γ) = tanh(raw coefficients) and x the data (not a sample).
template <int C>
struct CoupledMeans {
  float mean[C];
  float tanh_coefficient[C];  // C = 3 only
};

template <int C, typename Math = LibraryMath>
FASTVAE_HD CoupledMeans<C> coupled_means(const MixtureComponent<C>& component, const GridPoint (&x)[C]) {
  CoupledMeans<C> coupled;
  coupled.mean[0] = component.mean[0];
  coupled.tanh_coefficient[0] = 0.0f;
  if constexpr (C == 3) {
    const float alpha = Math::tanh(component.coefficient[0]);
    const float beta = Math::tanh(component.coefficient[1]);
    const float gamma = Math::tanh(component.coefficient[2]);
    coupled.mean[1] = component.mean[1] + alpha * x[0].value;
    coupled.mean[2] = component.mean[2] + beta * x[0].value + gamma * x[1].value;
    coupled.tanh_coefficient[0] = alpha;
    coupled.tanh_coefficient[1] = beta;
    coupled.tanh_coefficient[2] = gamma;
  }
  return coupled;
}

// Σ_c log P_c,k: the component's log-probability of the pixel, without its mixture weight.
template <int C, typename Math = LibraryMath>
FASTVAE_HD float mixture_component_log_prob(const MixtureComponent<C>& component, const GridPoint (&x)[C],
                                            const LogisticGrid& grid) {
  const CoupledMeans<C> coupled = coupled_means<C, Math>(component, x);
  float log_prob = 0.0f;
  FASTVAE_UNROLL_CHANNELS
  for (int c = 0; c < C; ++c) {
    log_prob += discretized_logistic_log_prob<Math>(coupled.mean[c], component.log_scale[c], x[c], grid);
  }
  return log_prob;
}

// Σ_c log P_c,k and its derivatives with respect to each raw slot of the component but the
// logit: the means (∂ through the coupling is 1), the log-scales, and the coefficients,
// ∂/∂raw α = ∂/∂mean_G · x_R · (1 − α²), β: ∂/∂mean_B · x_R · (1 − β²),
// γ: ∂/∂mean_B · x_G · (1 − γ²).
template <int C>
struct MixtureComponentGrads {
  float log_prob;
  float mean[C], log_scale[C];
  float coefficient[C];  // C = 3 only
};

template <int C, typename Math = LibraryMath>
FASTVAE_HD MixtureComponentGrads<C> mixture_component_grads(const MixtureComponent<C>& component,
                                                            const GridPoint (&x)[C], const LogisticGrid& grid) {
  const CoupledMeans<C> coupled = coupled_means<C, Math>(component, x);
  MixtureComponentGrads<C> grads;
  grads.log_prob = 0.0f;
  FASTVAE_UNROLL_CHANNELS
  for (int c = 0; c < C; ++c) {
    const LogisticLogProbGrads channel =
        discretized_logistic_log_prob_grads<Math>(coupled.mean[c], component.log_scale[c], x[c], grid);
    grads.log_prob += channel.log_prob;
    grads.mean[c] = channel.mean;
    grads.log_scale[c] = channel.log_scale;
  }
  grads.coefficient[0] = 0.0f;
  if constexpr (C == 3) {
    const float alpha = coupled.tanh_coefficient[0];
    const float beta = coupled.tanh_coefficient[1];
    const float gamma = coupled.tanh_coefficient[2];
    grads.coefficient[0] = grads.mean[1] * x[0].value * (1.0f - alpha * alpha);
    grads.coefficient[1] = grads.mean[2] * x[0].value * (1.0f - beta * beta);
    grads.coefficient[2] = grads.mean[2] * x[1].value * (1.0f - gamma * gamma);
  }
  return grads;
}

// logsumexp over the components, one value at a time with one exponential each: the
// running maximum and Σ e^(v − max).  As torch (and the Triton kernels): −inf when every
// value is −inf; NaN when any is NaN.
struct StreamingLogSumExp {
  float max;
  float total;

  FASTVAE_HD static StreamingLogSumExp empty() { return StreamingLogSumExp{-INFINITY, 0.0f}; }

  FASTVAE_HD void add(float value) {
    if (value > max) {
      total = total * expf(max - value) + 1.0f;  // e^(−inf) = 0 for the first finite value
      max = value;
    } else if (value != -INFINITY) {
      total += expf(value - max);  // NaN for a NaN value
    }
  }

  // max stays −inf when NaN came first; the NaN total then makes the result NaN.
  FASTVAE_HD float result() const { return max == -INFINITY && total == 0.0f ? -INFINITY : max + logf(total); }

  // The softmax weight of one of the values added, e^((value − max) − log total): with max
  // and the log-sum apart, not e^(value − result()), which would carry the rounding of a
  // result of large magnitude (tens of thousands of nats) into every weight.
  FASTVAE_HD float weight(float value) const {
    return expf((value - (max == -INFINITY ? 0.0f : max)) - logf(total));
  }
};

}  // namespace fastvae
