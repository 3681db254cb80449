// Reconstruction likelihoods on the CPU (Bernoulli, continuous Bernoulli, Gaussian): the
// math of fastvae/likelihood.h with the vectorizable elementary functions of vector_math.h,
// in loops over the [B, N] view, forward and backward, the backward recomputing everything
// from the inputs.
//
// OpenMP splits (row, chunk of kLikelihoodChunk columns) tasks, so a small batch of large
// samples still uses every core.  A task runs over its columns in tiles of kTile: each tile
// is one SIMD loop (a broadcast logvar is first gathered into a tile buffer, walking its
// offsets with carries rather than divisions), and a tile's nll is added to the task's
// partial in float64 lanes (csrc/cpu/row_sum.h).  Python adds the partials in a fixed
// order, so results do not depend on the number of threads.  The task bodies are compiled
// twice, for the baseline x86-64 and for AVX2 (picked at run time), from the same source
// without floating-point contraction, so both give the same bits.

// GCC if-converts a select between two float expressions (the branch-free forms of the
// math) only when evaluating both sides may not trap, so under its default -ftrapping-math
// none of these loops vectorizes.  Nothing here reads the floating-point exception flags,
// and the results are the same bits either way.  Before the includes, so the inlined header
// functions are compiled alike.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <type_traits>

#include "fastvae/dispatch.h"
#include "fastvae/likelihood_args.h"
#include "fastvae/likelihood_dispatch.h"
#include "ops.h"
#include "row_sum.h"
#include "targets.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

constexpr int kTile = 256;  // columns per SIMD loop (stack buffers of this many floats)
// Below this many elements a call runs on the calling thread: waking the team costs more
// than the loop (microseconds, and far more on a loaded machine), as torch's own
// element-wise ops (grain size 32768) do.  The tasks and their partials are the same
// either way, so results do not change.
constexpr int64_t kParallelElements = 32768;

// The columns [begin, end) of row `row` that one task covers; its partial is
// nll[row, chunk].
struct Task {
  int64_t row, chunk, begin, end;
};

Task task_at(int64_t task, int64_t features, int64_t chunks_per_row) {
  const int64_t row = task / chunks_per_row;
  const int64_t chunk = task % chunks_per_row;
  const int64_t begin = chunk * kLikelihoodChunk;
  const int64_t end = features - begin < kLikelihoodChunk ? features : begin + kLikelihoodChunk;
  return Task{row, chunk, begin, end};
}

int64_t chunks_for(int64_t features) { return (features + kLikelihoodChunk - 1) / kLikelihoodChunk; }

int tile_width(int64_t start, int64_t end) { return static_cast<int>(end - start < kTile ? end - start : kTile); }

// Runs body(task, avx2) over every task in parallel; avx2 tells whether the CPU has AVX2.
template <typename Body>
void run_tasks(int64_t batch, int64_t features, Body&& body) {
  const int64_t chunks_per_row = chunks_for(features);
  const bool avx2 = avx2_available();
#pragma omp parallel for schedule(static) if (batch * features >= kParallelElements)
  for (int64_t index = 0; index < batch * chunks_per_row; ++index) body(task_at(index, features, chunks_per_row), avx2);
}

// Walks the offsets of a tensor broadcast to [B, N] along a row's columns, a run of the
// innermost dimension at a time (offset, offset + stride2, ...), carrying into the outer
// ones at the end of a run, instead of two int64 divisions per element.
class BroadcastCursor {
 public:
  BroadcastCursor(const BroadcastLayout& layout, const InnerSizes& sizes, int64_t row, int64_t col)
      : layout_(layout), sizes_(sizes), offset_(broadcast_offset(layout, sizes, row, col)),
        i1_((col / sizes.size2) % sizes.size1), i2_(col % sizes.size2) {}

  int64_t offset() const { return offset_; }
  int64_t stride() const { return layout_.stride2; }
  int64_t run_left() const { return sizes_.size2 - i2_; }  // columns to the end of this run

  // Moves `count` <= run_left() columns on.
  void skip(int64_t count) {
    offset_ += count * layout_.stride2;
    i2_ += count;
    if (i2_ < sizes_.size2) return;
    i2_ = 0;
    offset_ += layout_.stride1 - sizes_.size2 * layout_.stride2;
    if (++i1_ < sizes_.size1) return;
    i1_ = 0;
    offset_ += layout_.stride0 - sizes_.size1 * layout_.stride1;
  }

 private:
  BroadcastLayout layout_;
  InnerSizes sizes_;
  int64_t offset_, i1_, i2_;
};

// Element i of a tensor in float32.  A half type is loaded as its 16-bit word: GCC does
// not vectorize some loops that copy the whole one-member struct.
template <typename T>
inline float load_float(const T* data, int64_t i) {
  return to_float(data[i]);
}
template <>
inline float load_float(const bfloat16* data, int64_t i) {
  return to_float(bfloat16{data[i].bits});
}
template <>
inline float load_float(const float16* data, int64_t i) {
  return to_float(float16{data[i].bits});
}

// Whether a companion type can hold a gradient (a float x can; 0/1 bytes never need one).
template <typename X>
constexpr bool kFloatTarget = !std::is_same<X, uint8_t>::value;

// The incoming gradient of a tile's columns: a slice of grad_nll [B, N], or the row's one
// value [B] repeated in `row_tile`.
struct Upstream {
  const float* per_element;  // grad_nll + row start, or null
  float row_tile[kTile];

  Upstream(const float* grad_nll, bool per_element_grad, int64_t row, int64_t features) {
    per_element = per_element_grad ? grad_nll + row * features : nullptr;
    const float row_grad = per_element_grad ? 0.0f : grad_nll[row];
    for (int i = 0; i < kTile; ++i) row_tile[i] = row_grad;
  }

  const float* at(int64_t start) const { return per_element ? per_element + start : row_tile; }
};

// ---------------------------------------------------------------------------------------
// Bernoulli and continuous Bernoulli
// ---------------------------------------------------------------------------------------

template <typename T, typename X, bool kContinuous>
inline void bernoulli_forward_task(const BernoulliForwardArgs& args, const Task& task) {
  const int64_t row_start = task.row * args.features;
  const T* logits = static_cast<const T*>(args.logits) + row_start;
  const X* x = static_cast<const X*>(args.x) + row_start;
  RowSum partial;
  float tile[kTile];
  for (int64_t start = task.begin; start < task.end; start += kTile) {
    const int width = tile_width(start, task.end);
    float* nll = args.per_element ? args.nll + row_start + start : tile;
#pragma omp simd
    for (int i = 0; i < width; ++i) {
      nll[i] = bernoulli_family_nll<kContinuous, DecayLog1pMath>(load_float(logits, start + i), load_float(x, start + i));
    }
    if (!args.per_element) partial.add(tile, width);
  }
  if (!args.per_element) args.nll[task.row * args.row_partials + task.chunk] = partial.total();
}

template <typename T, typename X, bool kContinuous>
inline void bernoulli_backward_task(const BernoulliBackwardArgs& args, const Task& task) {
  const int64_t row_start = task.row * args.features;
  const T* logits = static_cast<const T*>(args.logits) + row_start;
  const X* x = static_cast<const X*>(args.x) + row_start;
  T* grad_logits = args.grad_logits ? static_cast<T*>(args.grad_logits) + row_start : nullptr;
  const Upstream upstream(args.grad_nll, args.grad_per_element, task.row, args.features);
  for (int64_t start = task.begin; start < task.end; start += kTile) {
    const int width = tile_width(start, task.end);
    const float* grad_nll = upstream.at(start);
    if (grad_logits) {
#pragma omp simd
      for (int i = 0; i < width; ++i) {
        const float d_logits =
            bernoulli_family_logits_grad<kContinuous, DecayLog1pMath>(load_float(logits, start + i), load_float(x, start + i));
        grad_logits[start + i] = from_float<T>(grad_nll[i] * d_logits);
      }
    }
    if constexpr (kFloatTarget<X>) {
      if (args.grad_x) {
        // A soft target's gradient: d/dx = −l (log C does not depend on x).
        X* grad_x = static_cast<X*>(args.grad_x) + row_start;
#pragma omp simd
        for (int i = 0; i < width; ++i) grad_x[start + i] = from_float<X>(-grad_nll[i] * load_float(logits, start + i));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Gaussian
// ---------------------------------------------------------------------------------------

// The logvar of a tile's columns in float32: the number, or the broadcast tensor gathered
// in column order a run of its innermost dimension at a time (a run of a per-channel logvar
// is one value repeated).
template <typename L>
inline void gather_logvar(const L* logvar, float logvar_value, BroadcastCursor& cursor, int width,
                          float (&tile)[kTile]) {
  if (!logvar) {
    for (int i = 0; i < width; ++i) tile[i] = logvar_value;
    return;
  }
  for (int i = 0; i < width;) {
    const int run = static_cast<int>(cursor.run_left() < width - i ? cursor.run_left() : width - i);
    const L* first = logvar + cursor.offset();
    const int64_t stride = cursor.stride();
    if (stride == 0) {
      const float value = load_float(first, 0);
      for (int k = 0; k < run; ++k) tile[i + k] = value;
    } else {
      for (int k = 0; k < run; ++k) tile[i + k] = load_float(first, k * stride);
    }
    cursor.skip(run);
    i += run;
  }
}

template <typename T, typename X, typename L>
inline void gaussian_forward_task(const GaussianNLLForwardArgs& args, const Task& task) {
  const int64_t row_start = task.row * args.features;
  const T* mean = static_cast<const T*>(args.mean) + row_start;
  const X* x = static_cast<const X*>(args.x) + row_start;
  const L* logvar = static_cast<const L*>(args.logvar);
  RowSum partial;
  float tile[kTile], logvar_tile[kTile];
  if (!logvar) {
    // A number: e^(−logvar) once per task rather than per element (gaussian_nll's
    // formula, in its order of operations, so the same bits).
    const float logvar_value = args.logvar_value;
    const float inv_var = VectorMath::exp(-logvar_value);
    for (int64_t start = task.begin; start < task.end; start += kTile) {
      const int width = tile_width(start, task.end);
      float* nll = args.per_element ? args.nll + row_start + start : tile;
#pragma omp simd
      for (int i = 0; i < width; ++i) {
        const float diff = load_float(x, start + i) - load_float(mean, start + i);
        nll[i] = 0.5f * (kLog2Pi + logvar_value + diff * diff * inv_var);
      }
      if (!args.per_element) partial.add(tile, width);
    }
  } else {
    BroadcastCursor cursor(args.logvar_layout, args.sizes, task.row, task.begin);
    for (int64_t start = task.begin; start < task.end; start += kTile) {
      const int width = tile_width(start, task.end);
      gather_logvar(logvar, args.logvar_value, cursor, width, logvar_tile);
      float* nll = args.per_element ? args.nll + row_start + start : tile;
#pragma omp simd
      for (int i = 0; i < width; ++i) {
        nll[i] = gaussian_nll<VectorMath>(load_float(mean, start + i), load_float(x, start + i), logvar_tile[i]);
      }
      if (!args.per_element) partial.add(tile, width);
    }
  }
  if (!args.per_element) args.nll[task.row * args.row_partials + task.chunk] = partial.total();
}

template <typename T, typename X, typename L>
inline void gaussian_backward_task(const GaussianNLLBackwardArgs& args, const Task& task) {
  const int64_t row_start = task.row * args.features;
  const T* mean = static_cast<const T*>(args.mean) + row_start;
  const X* x = static_cast<const X*>(args.x) + row_start;
  const L* logvar = static_cast<const L*>(args.logvar);
  T* grad_mean = args.grad_mean ? static_cast<T*>(args.grad_mean) + row_start : nullptr;
  X* grad_x = args.grad_x ? static_cast<X*>(args.grad_x) + row_start : nullptr;
  L* grad_logvar = args.grad_logvar ? static_cast<L*>(args.grad_logvar) + row_start : nullptr;
  const Upstream upstream(args.grad_nll, args.grad_per_element, task.row, args.features);
  if (!logvar) {
    // A number (so no grad_logvar): e^(−logvar) once per task, each gradient asked for
    // written straight from its own loop (gaussian_nll_grads' formulas, the same bits).
    const float inv_var = VectorMath::exp(-args.logvar_value);
    for (int64_t start = task.begin; start < task.end; start += kTile) {
      const int width = tile_width(start, task.end);
      const float* grad_nll = upstream.at(start);
      if (grad_mean) {
#pragma omp simd
        for (int i = 0; i < width; ++i) {
          const float scaled = (load_float(x, start + i) - load_float(mean, start + i)) * inv_var;
          grad_mean[start + i] = from_float<T>(-grad_nll[i] * scaled);
        }
      }
      if (grad_x) {
#pragma omp simd
        for (int i = 0; i < width; ++i) {
          const float scaled = (load_float(x, start + i) - load_float(mean, start + i)) * inv_var;
          grad_x[start + i] = from_float<X>(grad_nll[i] * scaled);
        }
      }
    }
    return;
  }
  BroadcastCursor cursor(args.logvar_layout, args.sizes, task.row, task.begin);
  float logvar_tile[kTile], d_mean[kTile], d_x[kTile], d_logvar[kTile];
  for (int64_t start = task.begin; start < task.end; start += kTile) {
    const int width = tile_width(start, task.end);
    gather_logvar(logvar, args.logvar_value, cursor, width, logvar_tile);
    const float* grad_nll = upstream.at(start);
    // All three gradients into float tiles in one SIMD loop, then each one asked for
    // converted to its dtype (no per-element branch on which are wanted).
#pragma omp simd
    for (int i = 0; i < width; ++i) {
      const GaussianNLLGrads grads =
          gaussian_nll_grads<VectorMath>(load_float(mean, start + i), load_float(x, start + i), logvar_tile[i], grad_nll[i]);
      d_mean[i] = grads.mean;
      d_x[i] = grads.x;
      d_logvar[i] = grads.logvar;
    }
    if (grad_mean) {
#pragma omp simd
      for (int i = 0; i < width; ++i) grad_mean[start + i] = from_float<T>(d_mean[i]);
    }
    if (grad_x) {
#pragma omp simd
      for (int i = 0; i < width; ++i) grad_x[start + i] = from_float<X>(d_x[i]);
    }
    if (grad_logvar) {
#pragma omp simd
      for (int i = 0; i < width; ++i) grad_logvar[start + i] = from_float<L>(d_logvar[i]);
    }
  }
}

// The task bodies for each target: the same source, compiled for the baseline and for AVX2.
template <typename T, typename X, bool kContinuous>
FASTVAE_BASELINE_TARGET void bernoulli_forward_baseline(const BernoulliForwardArgs& args, const Task& task) {
  bernoulli_forward_task<T, X, kContinuous>(args, task);
}

template <typename T, typename X, bool kContinuous>
FASTVAE_BASELINE_TARGET void bernoulli_backward_baseline(const BernoulliBackwardArgs& args,
                                                                    const Task& task) {
  bernoulli_backward_task<T, X, kContinuous>(args, task);
}

template <typename T, typename X, typename L>
FASTVAE_BASELINE_TARGET void gaussian_forward_baseline(const GaussianNLLForwardArgs& args,
                                                                  const Task& task) {
  gaussian_forward_task<T, X, L>(args, task);
}

template <typename T, typename X, typename L>
FASTVAE_BASELINE_TARGET void gaussian_backward_baseline(const GaussianNLLBackwardArgs& args,
                                                                   const Task& task) {
  gaussian_backward_task<T, X, L>(args, task);
}

#ifdef FASTVAE_AVX2_CLONE
template <typename T, typename X, bool kContinuous>
FASTVAE_AVX2_TARGET void bernoulli_forward_avx2(const BernoulliForwardArgs& args, const Task& task) {
  bernoulli_forward_task<T, X, kContinuous>(args, task);
}

template <typename T, typename X, bool kContinuous>
FASTVAE_AVX2_TARGET void bernoulli_backward_avx2(const BernoulliBackwardArgs& args, const Task& task) {
  bernoulli_backward_task<T, X, kContinuous>(args, task);
}

template <typename T, typename X, typename L>
FASTVAE_AVX2_TARGET void gaussian_forward_avx2(const GaussianNLLForwardArgs& args, const Task& task) {
  gaussian_forward_task<T, X, L>(args, task);
}

template <typename T, typename X, typename L>
FASTVAE_AVX2_TARGET void gaussian_backward_avx2(const GaussianNLLBackwardArgs& args, const Task& task) {
  gaussian_backward_task<T, X, L>(args, task);
}

// The clone of task body `name` for this CPU: name_avx2<...> with AVX2, else name_baseline<...>.
#define FASTVAE_LIKELIHOOD_CLONE(name, avx2, ...) ((avx2) ? name##_avx2<__VA_ARGS__> : name##_baseline<__VA_ARGS__>)
#else
#define FASTVAE_LIKELIHOOD_CLONE(name, avx2, ...) ((void)(avx2), name##_baseline<__VA_ARGS__>)
#endif

template <typename T, typename X, bool kContinuous>
void bernoulli_forward(const BernoulliForwardArgs& args) {
  run_tasks(args.batch, args.features, [&](const Task& task, bool avx2) {
    FASTVAE_LIKELIHOOD_CLONE(bernoulli_forward, avx2, T, X, kContinuous)(args, task);
  });
}

template <typename T, typename X, bool kContinuous>
void bernoulli_backward(const BernoulliBackwardArgs& args) {
  run_tasks(args.batch, args.features, [&](const Task& task, bool avx2) {
    FASTVAE_LIKELIHOOD_CLONE(bernoulli_backward, avx2, T, X, kContinuous)(args, task);
  });
}

template <typename T, typename X, typename L>
void gaussian_forward(const GaussianNLLForwardArgs& args) {
  run_tasks(args.batch, args.features, [&](const Task& task, bool avx2) {
    FASTVAE_LIKELIHOOD_CLONE(gaussian_forward, avx2, T, X, L)(args, task);
  });
}

template <typename T, typename X, typename L>
void gaussian_backward(const GaussianNLLBackwardArgs& args) {
  run_tasks(args.batch, args.features, [&](const Task& task, bool avx2) {
    FASTVAE_LIKELIHOOD_CLONE(gaussian_backward, avx2, T, X, L)(args, task);
  });
}

}  // namespace

void bernoulli_nll_forward(const BernoulliForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "bernoulli_nll_fwd", T, [&] {
    dispatch_companion_dtype<T, true>(args.x_dtype, args.dtype, "bernoulli_nll_fwd", "x", [&](auto x_tag) {
      using X = typename decltype(x_tag)::type;
      if (args.continuous) {
        bernoulli_forward<T, X, true>(args);
      } else {
        bernoulli_forward<T, X, false>(args);
      }
    });
  });
}

void bernoulli_nll_backward(const BernoulliBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "bernoulli_nll_bwd", T, [&] {
    dispatch_companion_dtype<T, true>(args.x_dtype, args.dtype, "bernoulli_nll_bwd", "x", [&](auto x_tag) {
      using X = typename decltype(x_tag)::type;
      if (args.continuous) {
        bernoulli_backward<T, X, true>(args);
      } else {
        bernoulli_backward<T, X, false>(args);
      }
    });
  });
}

void gaussian_nll_forward(const GaussianNLLForwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "gaussian_nll_fwd", T, [&] {
    dispatch_companion_dtype<T, false>(args.x_dtype, args.dtype, "gaussian_nll_fwd", "x", [&](auto x_tag) {
      dispatch_companion_dtype<T, false>(args.logvar_dtype, args.dtype, "gaussian_nll_fwd", "logvar", [&](auto logvar_tag) {
        gaussian_forward<T, typename decltype(x_tag)::type, typename decltype(logvar_tag)::type>(args);
      });
    });
  });
}

void gaussian_nll_backward(const GaussianNLLBackwardArgs& args) {
  FASTVAE_DISPATCH(args.dtype, "gaussian_nll_bwd", T, [&] {
    dispatch_companion_dtype<T, false>(args.x_dtype, args.dtype, "gaussian_nll_bwd", "x", [&](auto x_tag) {
      dispatch_companion_dtype<T, false>(args.logvar_dtype, args.dtype, "gaussian_nll_bwd", "logvar", [&](auto logvar_tag) {
        gaussian_backward<T, typename decltype(x_tag)::type, typename decltype(logvar_tag)::type>(args);
      });
    });
  });
}

}  // namespace cpu
}  // namespace fastvae
