// Host-only: turn the dtype codes the bindings receive into template arguments.
#pragma once

#include <stdexcept>
#include <string>

#include "fastvae/common.h"

#define FASTVAE_DTYPE_CASE(code_value, Type, TypeName, ...) \
  case code_value: {                                       \
    using TypeName = Type;                                  \
    __VA_ARGS__();                                          \
    break;                                                  \
  }

// FASTVAE_DISPATCH(code, "op", T, [&] { ... uses T ... })
#define FASTVAE_DISPATCH(code, op_name, TypeName, ...)                                          \
  switch (code) {                                                                              \
    FASTVAE_DTYPE_CASE(::fastvae::kFloat32, float, TypeName, __VA_ARGS__)                     \
    FASTVAE_DTYPE_CASE(::fastvae::kBFloat16, ::fastvae::bfloat16, TypeName, __VA_ARGS__)      \
    FASTVAE_DTYPE_CASE(::fastvae::kFloat16, ::fastvae::float16, TypeName, __VA_ARGS__)        \
    default:                                                                                   \
      throw std::invalid_argument(std::string("fastvae ") + op_name + ": unsupported dtype code " + \
                                  std::to_string(static_cast<int>(code)));                     \
  }
