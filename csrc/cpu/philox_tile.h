// Philox words 0 and 1 (the two that Box–Muller reads, fastvae/philox.h) for a run of
// consecutive counters, into arrays: how the CPU loops draw a tile of normals before the
// SIMD loop that turns them into samples (csrc/cpu/latent.cpp, iwae.cpp).
#pragma once

#include "fastvae/philox.h"
#include "targets.h"

#ifdef FASTVAE_AVX2_CLONE
#include <immintrin.h>
#endif

namespace fastvae {
namespace cpu {

// Counters first_offset + i, i < width: the offset's arithmetic in 32-bit words with the
// carry, so the loop vectorizes.
inline void philox_words_run(uint32_t* words0, uint32_t* words1, int width, uint64_t seed, uint64_t first_offset) {
  const uint32_t low = static_cast<uint32_t>(first_offset), high = static_cast<uint32_t>(first_offset >> 32);
#pragma omp simd
  for (int i = 0; i < width; ++i) {
    const uint32_t counter_low = low + static_cast<uint32_t>(i);
    const PhiloxWords words = philox4x32_10_words(counter_low, high + (counter_low < low ? 1u : 0u),
                                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    words0[i] = words.word[0];
    words1[i] = words.word[1];
  }
}

#ifdef FASTVAE_AVX2_CLONE
// The high and low 32 bits of each lane's 64-bit product a·m, eight lanes at once
// (AVX2 multiplies only the even lanes: the odd ones are moved down for a second one).
// The lanes move by shuffles rather than 64-bit shifts: on Zen 2 one pipe shifts and two
// shuffle, and with shifts that one pipe was the loop's bottleneck (51 shifts per eight
// counters against 36 multiplies).
__attribute__((target("avx2"))) inline void multiply_high_low(__m256i a, __m256i m, __m256i& high, __m256i& low) {
  const __m256i even = _mm256_mul_epu32(a, m);                                                // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_shuffle_epi32(a, _MM_SHUFFLE(3, 3, 1, 1)), m);  // lanes 1, 3, 5, 7
  low = _mm256_blend_epi32(even, _mm256_shuffle_epi32(odd, _MM_SHUFFLE(2, 2, 0, 0)), 0xAA);
  high = _mm256_blend_epi32(_mm256_shuffle_epi32(even, _MM_SHUFFLE(3, 3, 1, 1)), odd, 0xAA);
}

// philox_words_run with AVX2 intrinsics, eight counters at a time: GCC vectorizes the
// portable loop with 64-bit products and three times the instructions.  The words are
// the same integers.  Fills whole groups of eight: both arrays must hold width rounded up
// to a multiple of eight.
__attribute__((target("avx2"))) inline void philox_words_run_avx2(uint32_t* words0, uint32_t* words1, int width,
                                                                  uint64_t seed, uint64_t first_offset) {
  const uint32_t low = static_cast<uint32_t>(first_offset), high = static_cast<uint32_t>(first_offset >> 32);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i low_biased = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(low)), sign);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i multiplier_a = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i multiplier_b = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int start = 0; start < width; start += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(low + static_cast<uint32_t>(start))), lanes);
    // The carry into the high word where the low word wrapped (unsigned c0 < low).
    const __m256i carry = _mm256_cmpgt_epi32(low_biased, _mm256_xor_si256(c0, sign));  // −1 or 0
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(high)), carry);
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i high_a, low_a, high_b, low_b;
      multiply_high_low(c0, multiplier_a, high_a, low_a);
      multiply_high_low(c2, multiplier_b, high_b, low_b);
      const __m256i next0 = _mm256_xor_si256(_mm256_xor_si256(high_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      const __m256i next2 = _mm256_xor_si256(_mm256_xor_si256(high_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = low_b;
      c3 = low_a;
      c0 = next0;
      c2 = next2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words0 + start), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words1 + start), c1);
  }
}
#endif

}  // namespace cpu
}  // namespace fastvae
