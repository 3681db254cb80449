// Elementary functions for the CPU loops, as a Math policy (fastvae/common.h): exp, log,
// log1p, expm1, tanh, sqrt and cos in plain float arithmetic and bit operations, with no branches and
// no calls, so that a loop over pixels calling them vectorizes (a call to libm's expf
// keeps a loop scalar unless -ffast-math, which would also break NaN and inf handling).
// Cephes' polynomials (S. Moshier), accurate to a few ulp over the whole float range;
// NaN, ±inf, 0 and subnormals give what the C library gives.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastvae/common.h"

namespace fastvae {
namespace cpu {

struct VectorMath {
  static inline float exp(float x) {
    // e^x = 2^n·e^r with n = round(x·log2 e) and r = x − n·ln 2 (ln 2 in two parts, so r is
    // exact), e^r by Cephes' degree-6 polynomial.  2^n is built in two factors from the
    // exponent bits, so results down in the subnormals come out right.
    const float clamped = x > 88.72283935546875f ? 88.72283935546875f : (x < -103.97208f ? -103.97208f : x);
    // Round to nearest by the 1.5·2^23 trick: no floorf, which SSE2 cannot vectorize.
    const float shifter = 12582912.0f;
    const float shifted = clamped * 1.44269504088896341f + shifter;
    const float n = shifted - shifter;
    const int32_t exponent = static_cast<int32_t>(float_as_bits(shifted) - float_as_bits(shifter));
    const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t first = exponent / 2;
    const int32_t second = exponent - first;
    const float scale_first = bits_as_float(static_cast<uint32_t>(first + 127) << 23);
    const float scale_second = bits_as_float(static_cast<uint32_t>(second + 127) << 23);
    const float result = p * scale_first * scale_second;
    return x > 88.72283935546875f ? INFINITY : (x < -103.97208f ? 0.0f : result);  // NaN stays NaN
  }

  static inline float log(float x) {
    // x = m·2^e with m in [√½, √2), log x = e·ln 2 + log m, log(1 + f) by Cephes' polynomial.
    const bool subnormal = x < 1.17549435e-38f;
    const float normal = subnormal ? x * 8388608.0f : x;  // ·2^23
    const uint32_t bits = float_as_bits(normal);
    float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 126) - (subnormal ? 23.0f : 0.0f);
    float m = bits_as_float((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
    const bool low = m < 0.707106781186547524f;
    e = low ? e - 1.0f : e;
    const float f = low ? m + m - 1.0f : m - 1.0f;
    const float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y += e * -2.12194440e-4f;
    y += -0.5f * z;
    const float result = (f + y) + e * 0.693359375f;
    // log 0 = −inf, log of a negative or NaN = NaN, log inf = inf.
    return x == 0.0f ? -INFINITY : (x > 0.0f ? (x == INFINITY ? INFINITY : result) : NAN);
  }

  static inline float log1p(float x) {
    // log(1 + x) with the rounding of 1 + x corrected (Goldberg): exact for tiny x, where
    // log(1 + x) alone is 0.
    const float w = 1.0f + x;
    const float denominator = w - 1.0f;
    const float corrected = log(w) * (x / (denominator == 0.0f ? 1.0f : denominator));
    return denominator == 0.0f ? x : (x == INFINITY ? INFINITY : corrected);
  }

  static inline float expm1(float x) {
    // |x| < ½: x·(1 + x/2! + … + x^7/8!), the Taylor series (relative error < 2e-8);
    // otherwise e^x − 1, which cancels by at most a bit there.
    float q = 1.0f / 40320.0f;
    q = q * x + 1.0f / 5040.0f;
    q = q * x + 1.0f / 720.0f;
    q = q * x + 1.0f / 120.0f;
    q = q * x + 1.0f / 24.0f;
    q = q * x + 1.0f / 6.0f;
    q = q * x + 0.5f;
    q = q * x + 1.0f;
    return fabsf(x) < 0.5f ? x * q : exp(x) - 1.0f;
  }

  static inline float tanh(float x) {
    // tanh |x| = −expm1(−2|x|)/(2 + expm1(−2|x|)): relatively exact near 0, 1 for large |x|.
    const float m = expm1(-2.0f * fabsf(x));
    const float magnitude = -m / (2.0f + m);
    return x < 0.0f ? -magnitude : magnitude;  // NaN stays NaN
  }

  // The instruction (sqrtss/sqrtps): the library's sqrtf is the same correctly rounded
  // value, but a call keeps a loop scalar unless errno is off (-fno-math-errno).
  static inline float sqrt(float x) { return __builtin_sqrtf(x); }

  static inline float cos(float x) {
    // Cephes' cosf: x = j·π/4 + r with j from x·4/π made even, r by π/4 in three parts
    // (exact for |x| up to a few thousand), then the sine or cosine polynomial on
    // [−π/4, π/4] by the octant, both computed and one selected.  For the Box–Muller
    // angles of philox_normal, in [0, 2π).
    const float magnitude = fabsf(x);
    int32_t j = static_cast<int32_t>(magnitude * 1.27323954473516f);
    j += j & 1;
    const float y = static_cast<float>(j);
    j &= 7;
    const bool upper_half = j > 3;
    j = upper_half ? j - 4 : j;
    const bool negate = upper_half != (j > 1);
    const float r = ((magnitude - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
    const float rr = r * r;
    const float sine = r + r * rr * ((-1.9515295891e-4f * rr + 8.3321608736e-3f) * rr - 1.6666654611e-1f);
    const float cosine =
        1.0f - 0.5f * rr + rr * rr * ((2.443315711809948e-5f * rr - 1.388731625493765e-3f) * rr + 4.166664568298827e-2f);
    const float value = (j == 1 || j == 2) ? sine : cosine;
    return negate ? -value : value;
  }
};

// VectorMath with a log1p for arguments in [0, 1] only: the e^(−|t|) of softplus and the
// log-sigmoids, the only log1p the likelihood formulas take (fastvae/likelihood.h,
// fastvae/logistic.h).  There 1 + u lies in [1, 2], so log(1 + u) needs no exponent
// extraction, no special cases and no division: it is Cephes' polynomial for log(1 + f)
// on [√½ − 1, √2 − 1] at f = u itself below √2 − 1 (exact, where VectorMath::log1p
// corrects the rounding of 1 + u with a division), and at f = (u − 1)/2 plus ln 2 above
// (exact from u = ½; off by at most 2^−25 in f below).  Within about an ulp of log1p;
// 0 at 0, NaN for NaN.  The other functions are VectorMath's.
struct DecayLog1pMath : VectorMath {
  static inline float log1p(float u) {
    // e = 1 where 1 + u > √2, else 0, and f = (u − e)·(1 − e/2), all in arithmetic: with
    // a select between two expressions for f, GCC evaluates the polynomial on both and
    // blends.
    const float e = static_cast<float>(u > 0.414213562373095f);
    const float f = (u - e) * (1.0f - 0.5f * e);
    // The polynomial by Estrin's scheme (pairs, then powers f², f⁴, f⁸): a chain of 4
    // dependent products instead of Horner's 9 multiply-adds, whose latency, not the
    // count of operations, bounds the loops that call this.
    const float z = f * f;
    const float z2 = z * z;
    const float pair0 = 3.3333331174e-1f - 2.4999993993e-1f * f;
    const float pair1 = 2.0000714765e-1f - 1.6668057665e-1f * f;
    const float pair2 = 1.4249322787e-1f - 1.2420140846e-1f * f;
    const float pair3 = 1.1676998740e-1f - 1.1514610310e-1f * f;
    const float low = pair0 + pair1 * z;
    const float high = pair2 + pair3 * z;
    float y = (low + high * z2) + 7.0376836292e-2f * (z2 * z2);
    y = y * f * z;
    y += e * -2.12194440e-4f;
    y += -0.5f * z;
    return (f + y) + e * 0.693359375f;
  }
};

}  // namespace cpu
}  // namespace fastvae
