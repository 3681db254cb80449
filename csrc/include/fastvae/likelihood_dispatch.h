// Host-only: the dtype of a likelihood's second input (x, or the Gaussian logvar) as a
// template argument.  It is the parameters' dtype T, float32, or (a Bernoulli x) 0/1 bytes,
// so each parameter dtype instantiates at most three kernels instead of every pairing.
#pragma once

#include <stdexcept>
#include <string>

#include "fastvae/common.h"
#include "fastvae/likelihood_args.h"

namespace fastvae {

template <typename Type>
struct TypeTag {
  using type = Type;
};

// Calls body(TypeTag<C>{}) with C the type of dtype code `code` next to parameters of type
// T (code `dtype`): T itself, float, or uint8_t when kAllowBytes.
template <typename T, bool kAllowBytes, typename Body>
void dispatch_companion_dtype(int code, int dtype, const char* op, const char* argument, Body&& body) {
  if (code == dtype) {
    body(TypeTag<T>{});
  } else if (code == kFloat32) {
    body(TypeTag<float>{});
  } else if (kAllowBytes && code == kTargetUInt8) {
    if constexpr (kAllowBytes) body(TypeTag<uint8_t>{});
  } else {
    throw std::invalid_argument(std::string("fastvae ") + op + ": " + argument + " must come in the parameters' dtype" +
                                (kAllowBytes ? ", float32 or uint8" : " or float32") + ", got dtype code " +
                                std::to_string(code));
  }
}

}  // namespace fastvae
