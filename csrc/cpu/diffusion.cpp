// diffuse and diffusion_loss on the CPU: the per-element math of fastvae/diffusion.h and
// the Philox normals of fastvae/philox.h, parallel over (row, chunk) tasks with OpenMP.
//
// A task is one row's chunk of kDiffusionRowPartialWidth columns (csrc/cpu/ops.h), run in
// tiles of kTile columns as the latent loops run (csrc/cpu/latent.cpp): a tile's Philox
// words first (csrc/cpu/philox_tile.h, AVX2 intrinsics where the CPU has them), then
// Box–Muller and the element math in SIMD loops with csrc/cpu/vector_math.h's functions,
// compiled once per target (baseline x86-64 and AVX2, the same bits) and not per dtype:
// only the loads and stores around them depend on the dtypes.  So ε is, bit for bit, the
// Gaussian latent's normal at the same offset.  A chunk's Σ(ε − ε̂)² and ∂γ are added up
// in float64 lanes (csrc/cpu/row_sum.h) and rounded once; the launcher adds a row's chunks
// in float64 (fastvae/row_sums.py).  Tasks follow the shape, never the threads, so the
// results are bitwise repeatable and the same for any thread count.
//
// GCC if-converts the selects of the branch-free math only when evaluating both sides may
// not trap; nothing here reads the floating-point exception flags.  Before the includes,
// so the inlined header functions are compiled alike.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <cmath>

#include "fastvae/diffusion_args.h"
#include "ops.h"
#include "philox_tile.h"
#include "row_sum.h"
#include "vector_math.h"

namespace fastvae {
namespace cpu {

namespace {

namespace df = ::fastvae::diffusion;

constexpr int kTile = 256;  // columns per SIMD loop
static_assert(kTile % 8 == 0, "philox_words_run_avx2 fills whole groups of eight");
// Every tile of a task but its last is whole, so a chunk's columns keep their RowSum lanes.
static_assert(kDiffusionRowPartialWidth % kTile == 0, "a task is whole tiles");

// Below this many elements a call runs on one thread: starting the OpenMP team costs more
// than the loop.  The tasks follow the shape, so the bits are the same either way.
constexpr int64_t kParallelMinimum = 32768;

// One tile's Philox words (words 0 and 1, what Box–Muller reads) and its float32 buffers
// for tensors that are not float32 (a float32 tensor is read and written in place).
struct DiffusionTile {
  uint32_t words0[kTile], words1[kTile];
  float first_buffer[kTile], second_buffer[kTile], out_buffer[kTile], terms[kTile];
};

// ---------------------------------------------------------------------------------------
// The SIMD loops
// ---------------------------------------------------------------------------------------

inline float tile_noise(const DiffusionTile& tile, int i) {
  return box_muller<VectorMath>(PhiloxWords{{tile.words0[i], tile.words1[i], 0u, 0u}});
}

// z = α·x + σ·ε.
inline void diffuse_body(const DiffusionTile& tile, const float* __restrict x, float* __restrict z, int width,
                         df::Scales scales) {
#pragma omp simd
  for (int i = 0; i < width; ++i) z[i] = df::diffuse(x[i], tile_noise(tile, i), scales);
}

// ∂γ's terms grad_z·(∂α/∂γ·x + ∂σ/∂γ·ε) into the chunk's sum, and (kGradX) grad_x = α·grad_z.
template <bool kGradX>
inline void diffuse_grads_body(DiffusionTile& tile, const float* __restrict x, const float* __restrict grad_z,
                               float* __restrict grad_x, int width, df::Scales scales, df::Slopes slopes,
                               RowSum* gamma_sum) {
  float* __restrict terms = tile.terms;
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    terms[i] = df::gamma_grad_term(grad_z[i], x[i], tile_noise(tile, i), slopes);
    if (kGradX) grad_x[i] = scales.alpha * grad_z[i];
  }
  gamma_sum->add(terms, width);
}

// grad_x = α·grad_z alone (no ∂γ: no noise either).
inline void scale_body(const float* __restrict grad_z, float* __restrict grad_x, int width, float alpha) {
#pragma omp simd
  for (int i = 0; i < width; ++i) grad_x[i] = alpha * grad_z[i];
}

// (ε − ε̂)² into the chunk's sum.
inline void squared_error_body(DiffusionTile& tile, const float* __restrict eps_hat, int width, RowSum* sum) {
  float* __restrict terms = tile.terms;
#pragma omp simd
  for (int i = 0; i < width; ++i) terms[i] = df::squared_error(tile_noise(tile, i), eps_hat[i]);
  sum->add(terms, width);
}

// grad_eps_hat = scale·(ε̂ − ε), scale = the row's grad_loss·w.
inline void loss_grads_body(const DiffusionTile& tile, const float* __restrict eps_hat, float* __restrict grad,
                            int width, float scale) {
#pragma omp simd
  for (int i = 0; i < width; ++i) grad[i] = df::noise_prediction_grad(tile_noise(tile, i), eps_hat[i], scale);
}

// Each loop for this CPU, chosen once per call.
struct DiffusionMath {
  void (*diffuse)(DiffusionTile&, const float*, float*, int, df::Scales, uint64_t, uint64_t);
  // Indexed by whether grad_x is written too.
  void (*diffuse_grads[2])(DiffusionTile&, const float*, const float*, float*, int, df::Scales, df::Slopes, RowSum*,
                           uint64_t, uint64_t);
  void (*scale)(const float*, float*, int, float);
  void (*squared_error)(DiffusionTile&, const float*, int, RowSum*, uint64_t, uint64_t);
  void (*loss_grads)(DiffusionTile&, const float*, float*, int, float, uint64_t, uint64_t);
};

// The loops compiled for one target: PHILOX_WORDS fills the tile's Philox words for the
// counters first_offset + i.
#define FASTVAE_DIFFUSION_LOOPS(SUFFIX, TARGET, PHILOX_WORDS)                                                        \
  TARGET void diffuse_##SUFFIX(DiffusionTile& tile, const float* x, float* z, int width, df::Scales scales,         \
                               uint64_t seed, uint64_t first_offset) {                                               \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                               \
    diffuse_body(tile, x, z, width, scales);                                                                         \
  }                                                                                                                  \
  TARGET void diffuse_grads_##SUFFIX(DiffusionTile& tile, const float* x, const float* grad_z, float* grad_x,       \
                                     int width, df::Scales scales, df::Slopes slopes, RowSum* gamma_sum,             \
                                     uint64_t seed, uint64_t first_offset) {                                         \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                               \
    diffuse_grads_body<false>(tile, x, grad_z, grad_x, width, scales, slopes, gamma_sum);                            \
  }                                                                                                                  \
  TARGET void diffuse_grads_with_x_##SUFFIX(DiffusionTile& tile, const float* x, const float* grad_z, float* grad_x, \
                                            int width, df::Scales scales, df::Slopes slopes, RowSum* gamma_sum,      \
                                            uint64_t seed, uint64_t first_offset) {                                  \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                               \
    diffuse_grads_body<true>(tile, x, grad_z, grad_x, width, scales, slopes, gamma_sum);                             \
  }                                                                                                                  \
  TARGET void scale_##SUFFIX(const float* grad_z, float* grad_x, int width, float alpha) {                          \
    scale_body(grad_z, grad_x, width, alpha);                                                                        \
  }                                                                                                                  \
  TARGET void squared_error_##SUFFIX(DiffusionTile& tile, const float* eps_hat, int width, RowSum* sum,             \
                                     uint64_t seed, uint64_t first_offset) {                                         \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                               \
    squared_error_body(tile, eps_hat, width, sum);                                                                   \
  }                                                                                                                  \
  TARGET void loss_grads_##SUFFIX(DiffusionTile& tile, const float* eps_hat, float* grad, int width, float scale,    \
                                  uint64_t seed, uint64_t first_offset) {                                            \
    PHILOX_WORDS(tile.words0, tile.words1, width, seed, first_offset);                                               \
    loss_grads_body(tile, eps_hat, grad, width, scale);                                                              \
  }                                                                                                                  \
  constexpr DiffusionMath diffusion_math_##SUFFIX = {                                                                \
      diffuse_##SUFFIX,   {diffuse_grads_##SUFFIX, diffuse_grads_with_x_##SUFFIX}, scale_##SUFFIX,                   \
      squared_error_##SUFFIX, loss_grads_##SUFFIX};

#ifdef FASTVAE_AVX2_CLONE
FASTVAE_DIFFUSION_LOOPS(avx2, FASTVAE_AVX2_TARGET, philox_words_run_avx2)
#endif
FASTVAE_DIFFUSION_LOOPS(baseline, FASTVAE_BASELINE_TARGET, philox_words_run)
#undef FASTVAE_DIFFUSION_LOOPS

DiffusionMath diffusion_math() { return FASTVAE_FOR_THIS_CPU(diffusion_math); }

// ---------------------------------------------------------------------------------------
// Loads and stores around them, by dtype code (one switch per tile)
// ---------------------------------------------------------------------------------------

// width values of data (dtype code `dtype`) from element first as float32: data itself for
// float32 (no copy), else converted into buffer.
inline const float* floats_in(const void* data, int dtype, int64_t first, int width, float* buffer) {
  if (dtype == kBFloat16) {
    const bfloat16* values = static_cast<const bfloat16*>(data) + first;
    for (int i = 0; i < width; ++i) buffer[i] = to_float(values[i]);
    return buffer;
  }
  if (dtype == kFloat16) {
    const float16* values = static_cast<const float16*>(data) + first;
    for (int i = 0; i < width; ++i) buffer[i] = to_float(values[i]);
    return buffer;
  }
  return static_cast<const float*>(data) + first;
}

// Where a loop writes width values of data from element first: data itself for float32,
// else buffer, which floats_out_done converts into data.
inline float* floats_out(void* data, int dtype, int64_t first, float* buffer) {
  return dtype == kFloat32 ? static_cast<float*>(data) + first : buffer;
}

inline void floats_out_done(const float* values, void* data, int dtype, int64_t first, int width) {
  if (dtype == kBFloat16) {
    bfloat16* out = static_cast<bfloat16*>(data) + first;
    for (int i = 0; i < width; ++i) out[i] = from_float<bfloat16>(values[i]);
  } else if (dtype == kFloat16) {
    float16* out = static_cast<float16*>(data) + first;
    for (int i = 0; i < width; ++i) out[i] = from_float<float16>(values[i]);
  }
}

// The tasks of a call: each row's chunks of kDiffusionRowPartialWidth columns.
struct Tasks {
  int64_t chunks_per_row, count;
};

Tasks tasks_of(int64_t batch, int64_t features) {
  const int64_t chunks = (features + kDiffusionRowPartialWidth - 1) / kDiffusionRowPartialWidth;
  return Tasks{chunks, batch * chunks};
}

// Calls body(width, first) for each tile of task `task`: width columns of its row from
// element first (row·N + the tile's first column).
template <typename Body>
inline void for_each_tile(int64_t task, const Tasks& tasks, int64_t features, Body&& body) {
  const int64_t row = task / tasks.chunks_per_row;
  const int64_t chunk_begin = (task % tasks.chunks_per_row) * kDiffusionRowPartialWidth;
  const int64_t chunk_end =
      features - chunk_begin < kDiffusionRowPartialWidth ? features : chunk_begin + kDiffusionRowPartialWidth;
  for (int64_t begin = chunk_begin; begin < chunk_end; begin += kTile) {
    const int width = static_cast<int>(chunk_end - begin < kTile ? chunk_end - begin : kTile);
    body(width, row * features + begin);
  }
}

}  // namespace

void diffuse_forward(const DiffuseForwardArgs& args) {
  if (args.batch == 0 || args.features == 0) return;
  const DiffusionMath math = diffusion_math();
  const Tasks tasks = tasks_of(args.batch, args.features);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
#pragma omp parallel if (args.batch * args.features >= kParallelMinimum)
  {
    DiffusionTile tile;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      const int64_t row = task / tasks.chunks_per_row;
      const df::Scales scales = df::scales(df::load_as_float(args.gamma, args.gamma_dtype, row));
      for_each_tile(task, tasks, args.features, [&](int width, int64_t first) {
        const float* x = floats_in(args.x, args.x_dtype, first, width, tile.first_buffer);
        float* z = floats_out(args.z, args.z_dtype, first, tile.out_buffer);
        math.diffuse(tile, x, z, width, scales, seed, base + static_cast<uint64_t>(first));
        floats_out_done(z, args.z, args.z_dtype, first, width);
      });
    }
  }
}

void diffuse_backward(const DiffuseBackwardArgs& args) {
  if (args.batch == 0 || args.features == 0 || (!args.grad_x && !args.grad_gamma)) return;
  const DiffusionMath math = diffusion_math();
  const Tasks tasks = tasks_of(args.batch, args.features);
  const bool gamma_grad = args.grad_gamma != nullptr;
  const uint64_t seed = gamma_grad ? static_cast<uint64_t>(args.seed_offset[0]) : 0;
  const uint64_t base = gamma_grad ? static_cast<uint64_t>(args.seed_offset[1]) : 0;
#pragma omp parallel if (args.batch * args.features >= kParallelMinimum)
  {
    DiffusionTile tile;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      const int64_t row = task / tasks.chunks_per_row;
      const df::Scales scales = df::scales(df::load_as_float(args.gamma, args.gamma_dtype, row));
      const df::Slopes slopes = df::slopes(scales);
      RowSum gamma_sum;
      for_each_tile(task, tasks, args.features, [&](int width, int64_t first) {
        const float* grad_z = floats_in(args.grad_z, args.grad_z_dtype, first, width, tile.second_buffer);
        float* grad_x = args.grad_x ? floats_out(args.grad_x, args.x_dtype, first, tile.out_buffer) : tile.out_buffer;
        if (gamma_grad) {
          const float* x = floats_in(args.x, args.x_dtype, first, width, tile.first_buffer);
          math.diffuse_grads[args.grad_x != nullptr](tile, x, grad_z, grad_x, width, scales, slopes, &gamma_sum, seed,
                                                     base + static_cast<uint64_t>(first));
        } else {
          math.scale(grad_z, grad_x, width, scales.alpha);
        }
        if (args.grad_x) floats_out_done(grad_x, args.grad_x, args.x_dtype, first, width);
      });
      if (gamma_grad) args.grad_gamma[task] = gamma_sum.total();
    }
  }
}

void diffusion_loss_forward(const DiffusionLossForwardArgs& args) {
  if (args.batch == 0 || args.features == 0 || (!args.loss && !args.squared_error)) return;
  const DiffusionMath math = diffusion_math();
  const Tasks tasks = tasks_of(args.batch, args.features);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
#pragma omp parallel if (args.batch * args.features >= kParallelMinimum)
  {
    DiffusionTile tile;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      RowSum sum;
      for_each_tile(task, tasks, args.features, [&](int width, int64_t first) {
        const float* eps_hat = floats_in(args.eps_hat, args.eps_hat_dtype, first, width, tile.first_buffer);
        math.squared_error(tile, eps_hat, width, &sum, seed, base + static_cast<uint64_t>(first));
      });
      // The task's index is its partial's: row·row_partials + chunk.
      const float squared_error = sum.total();
      if (args.squared_error) args.squared_error[task] = squared_error;
      if (args.loss) {
        const float weight = df::load_as_float(args.weight, args.weight_dtype, task / tasks.chunks_per_row);
        args.loss[task] = 0.5f * weight * squared_error;
      }
    }
  }
}

void diffusion_loss_backward(const DiffusionLossBackwardArgs& args) {
  if (args.batch == 0 || args.features == 0 || !args.grad_eps_hat) return;
  const DiffusionMath math = diffusion_math();
  const Tasks tasks = tasks_of(args.batch, args.features);
  const uint64_t seed = static_cast<uint64_t>(args.seed_offset[0]);
  const uint64_t base = static_cast<uint64_t>(args.seed_offset[1]);
#pragma omp parallel if (args.batch * args.features >= kParallelMinimum)
  {
    DiffusionTile tile;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      const int64_t row = task / tasks.chunks_per_row;
      const float scale = args.grad_loss[row] * df::load_as_float(args.weight, args.weight_dtype, row);
      for_each_tile(task, tasks, args.features, [&](int width, int64_t first) {
        const float* eps_hat = floats_in(args.eps_hat, args.eps_hat_dtype, first, width, tile.first_buffer);
        float* grad = floats_out(args.grad_eps_hat, args.eps_hat_dtype, first, tile.out_buffer);
        math.loss_grads(tile, eps_hat, grad, width, scale, seed, base + static_cast<uint64_t>(first));
        floats_out_done(grad, args.grad_eps_hat, args.eps_hat_dtype, first, width);
      });
    }
  }
}

}  // namespace cpu
}  // namespace fastvae
