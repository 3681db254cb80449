// The targets the CPU loops are compiled for: each SIMD loop twice, for AVX2 and for the
// baseline x86-64, from the same source without floating-point contraction (so both give
// the same bits), the AVX2 clone picked at run time where the CPU has it.  Off x86-64 GCC,
// only the baseline is built.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTVAE_AVX2_CLONE 1
#define FASTVAE_AVX2_TARGET __attribute__((target("avx2"), flatten))
#define FASTVAE_BASELINE_TARGET __attribute__((flatten))
#else
#define FASTVAE_BASELINE_TARGET
#endif

namespace fastvae {
namespace cpu {

// Whether this CPU runs the AVX2 clones (asked once).
inline bool avx2_available() {
#ifdef FASTVAE_AVX2_CLONE
  static const bool available = __builtin_cpu_supports("avx2");
  return available;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fastvae

// NAME##_avx2 where this CPU runs AVX2, else NAME##_baseline: the clone of a function, or
// of a set of them, for this CPU.
#ifdef FASTVAE_AVX2_CLONE
#define FASTVAE_FOR_THIS_CPU(NAME) (::fastvae::cpu::avx2_available() ? NAME##_avx2 : NAME##_baseline)
#else
#define FASTVAE_FOR_THIS_CPU(NAME) (NAME##_baseline)
#endif
