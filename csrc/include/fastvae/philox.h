// Philox4x32-10 with Triton 3.6's conventions (tl.randint4x, tl.rand, tl.randn), so every
// backend draws the same numbers for the same (seed, offset):
//   key = the 64-bit seed as (low, high) words; counter = (offset low, offset high, 0, 0);
//   a word w becomes a uniform in [0, 1) by reading it as int32, mapping a negative x to
//   -x-1, and multiplying by 4.6566127342e-10; a normal is Box-Muller on words 0 and 1,
//   u1 clamped below at 1e-7, keeping the cosine.  Element i of a call uses offset base + i.
#pragma once

#include "fastvae/common.h"

namespace fastvae {

struct PhiloxWords {
  uint32_t word[4];
};

// The counter's and the key's words as 32-bit values: a CPU loop over consecutive
// offsets vectorizes this form (its 64-bit offset arithmetic would not).
FASTVAE_HD PhiloxWords philox4x32_10_words(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t product_a = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t product_b = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t next0 = static_cast<uint32_t>(product_b >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(product_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(product_b);
    c3 = static_cast<uint32_t>(product_a);
    c0 = next0;
    c2 = next2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

FASTVAE_HD PhiloxWords philox4x32_10(uint64_t seed, uint64_t offset) {
  return philox4x32_10_words(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                             static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

FASTVAE_HD float uint32_to_uniform(uint32_t word) {
  const int32_t signed_word = static_cast<int32_t>(word);
  // −x − 1 = ~x: one select, which a CPU loop vectorizes.
  return static_cast<float>(signed_word < 0 ? ~signed_word : signed_word) * 4.6566127342e-10f;
}

FASTVAE_HD float philox_uniform(uint64_t seed, uint64_t offset) {
  return uint32_to_uniform(philox4x32_10(seed, offset).word[0]);
}

// The elementary functions from a Math policy (common.h): the CPU loops pass their
// vectorizable ones, which agree with the library's to a few ulp.
template <typename Math = LibraryMath>
FASTVAE_HD float box_muller(const PhiloxWords& words) {
  // max(1e-7, u): a select rather than fmaxf, whose NaN rules keep a CPU loop scalar (u
  // is never NaN).
  const float uniform = uint32_to_uniform(words.word[0]);
  const float u1 = uniform < 1.0e-7f ? 1.0e-7f : uniform;
  const float u2 = uint32_to_uniform(words.word[1]);
  return Math::sqrt(-2.0f * Math::log(u1)) * Math::cos(6.283185307179586f * u2);
}

template <typename Math = LibraryMath>
FASTVAE_HD float philox_normal(uint64_t seed, uint64_t offset) {
  return box_muller<Math>(philox4x32_10(seed, offset));
}

// Gumbel noise -log(-log u) from word 0's uniform u, clamped below at 1e-20 (only u = 0
// is below it; a select rather than fmaxf, as in box_muller).
template <typename Math = LibraryMath>
FASTVAE_HD float gumbel_from_word(uint32_t word) {
  const float uniform = uint32_to_uniform(word);
  return -Math::log(-Math::log(uniform < 1.0e-20f ? 1.0e-20f : uniform));
}

FASTVAE_HD float philox_gumbel(uint64_t seed, uint64_t offset) {
  return gumbel_from_word(philox4x32_10(seed, offset).word[0]);
}

}  // namespace fastvae
