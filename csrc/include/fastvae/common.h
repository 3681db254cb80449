// Shared by the CUDA kernels and the CPU loops: the host/device qualifier, the dtypes the
// bindings pass as integer codes, and bit-exact float32 <-> bfloat16 / float16 conversions
// written in integer arithmetic, so both backends round the same way (to nearest even).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FASTVAE_HD __host__ __device__ __forceinline__
#else
#define FASTVAE_HD inline
#endif

namespace fastvae {

// The C/CUDA math library as a Math policy: the per-element formulas of every family take
// their elementary functions from a policy, this one by default (the CUDA kernels').  The
// CPU loops pass csrc/cpu/vector_math.h's branch-free forms instead, which the compiler
// vectorizes (a libm call per element keeps a loop scalar).
struct LibraryMath {
  FASTVAE_HD static float exp(float x) { return expf(x); }
  FASTVAE_HD static float log(float x) { return logf(x); }
  FASTVAE_HD static float log1p(float x) { return log1pf(x); }
  FASTVAE_HD static float expm1(float x) { return expm1f(x); }
  FASTVAE_HD static float tanh(float x) { return tanhf(x); }
  FASTVAE_HD static float sqrt(float x) { return sqrtf(x); }
  FASTVAE_HD static float cos(float x) { return cosf(x); }
};

// Codes of the dtypes the bindings accept; fastvae/native/__init__.py (DTYPE_CODES) uses the same.
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct bfloat16 { uint16_t bits; };
struct float16 { uint16_t bits; };

FASTVAE_HD uint32_t float_as_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

FASTVAE_HD float bits_as_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

FASTVAE_HD float to_float(float value) { return value; }
FASTVAE_HD float to_float(bfloat16 value) { return bits_as_float(static_cast<uint32_t>(value.bits) << 16); }

// IEEE half to float (exact): F. Giesen's magic-number conversion.
FASTVAE_HD float to_float(float16 value) {
  const uint32_t magic = 113u << 23;
  const uint32_t shifted_exponent = 0x7c00u << 13;
  uint32_t bits = (static_cast<uint32_t>(value.bits) & 0x7fffu) << 13;
  const uint32_t exponent = shifted_exponent & bits;
  bits += (127u - 15u) << 23;
  if (exponent == shifted_exponent) {
    bits += (128u - 16u) << 23;  // infinity or NaN
  } else if (exponent == 0) {
    bits += 1u << 23;  // zero or subnormal: renormalize through float arithmetic
    bits = float_as_bits(bits_as_float(bits) - bits_as_float(magic));
  }
  return bits_as_float(bits | ((static_cast<uint32_t>(value.bits) & 0x8000u) << 16));
}

template <typename T>
FASTVAE_HD T from_float(float value);

template <>
FASTVAE_HD float from_float<float>(float value) { return value; }

template <>
FASTVAE_HD bfloat16 from_float<bfloat16>(float value) {
  const uint32_t bits = float_as_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return bfloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return bfloat16{static_cast<uint16_t>((bits + rounding) >> 16)};
}

// float to IEEE half, round to nearest even (F. Giesen's float_to_half_fast3_rtne).
template <>
FASTVAE_HD float16 from_float<float16>(float value) {
  const uint32_t infinity = 255u << 23;
  const uint32_t half_overflow = (127u + 16u) << 23;
  const uint32_t denormal_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t bits = float_as_bits(value);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint16_t out;
  if (bits >= half_overflow) {
    out = bits > infinity ? 0x7e00 : 0x7c00;
  } else if (bits < (113u << 23)) {
    out = static_cast<uint16_t>(float_as_bits(bits_as_float(bits) + bits_as_float(denormal_magic)) - denormal_magic);
  } else {
    const uint32_t mantissa_odd = (bits >> 13) & 1u;
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    bits += mantissa_odd;
    out = static_cast<uint16_t>(bits >> 13);
  }
  return float16{static_cast<uint16_t>(out | (sign >> 16))};
}

// data[index] = value in `dtype` (a DType code), for an output whose dtype is chosen per
// call rather than by the kernel's template: a prior's gradient is float32 where it is
// summed to a broadcast prior's shape afterwards, and the prior's own dtype where the prior
// is full-size (the dtype the op's outputs declare, fastvae/ops).
FASTVAE_HD void store_float_as(void* data, int dtype, int64_t index, float value) {
  if (dtype == kBFloat16) {
    static_cast<bfloat16*>(data)[index] = from_float<bfloat16>(value);
  } else if (dtype == kFloat16) {
    static_cast<float16*>(data)[index] = from_float<float16>(value);
  } else {
    static_cast<float*>(data)[index] = value;
  }
}

}  // namespace fastvae
