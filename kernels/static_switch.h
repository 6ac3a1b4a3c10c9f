// Runtime -> compile-time dispatch, used in one place (sb_attn.cc). An unsupported value returns
// INVALID_ARGUMENT naming the supported ones, from the enclosing absl::Status function.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

// HEADDIM_SWITCH(d, kHeadDim, [&] { ...; return status; })
#define SB_HEADDIM_SWITCH(VALUE, CONST_NAME, ...)                                              \
  [&]() -> absl::Status {                                                                      \
    switch (VALUE) {                                                                           \
      case 64: {                                                                               \
        constexpr int CONST_NAME = 64;                                                         \
        return __VA_ARGS__();                                                                  \
      }                                                                                        \
      case 128: {                                                                              \
        constexpr int CONST_NAME = 128;                                                        \
        return __VA_ARGS__();                                                                  \
      }                                                                                        \
      default:                                                                                 \
        return absl::InvalidArgumentError(                                                     \
            absl::StrCat("stick-breaking attention: head_dim ", (VALUE),                       \
                         " is not supported (supported: bf16 with head_dim 64, 128)"));        \
    }                                                                                          \
  }()

// Query heads per decode CTA: 8, 6, 4, 2 or 1 (the largest that divides VALUE = H / Hkv).
#define SB_DECODE_GROUP_SWITCH(VALUE, CONST_NAME, ...)                                         \
  [&]() -> absl::Status {                                                                      \
    if ((VALUE) % 8 == 0) {                                                                    \
      constexpr int CONST_NAME = 8;                                                            \
      return __VA_ARGS__();                                                                    \
    } else if ((VALUE) % 6 == 0) {                                                             \
      constexpr int CONST_NAME = 6;                                                            \
      return __VA_ARGS__();                                                                    \
    } else if ((VALUE) % 4 == 0) {                                                             \
      constexpr int CONST_NAME = 4;                                                            \
      return __VA_ARGS__();                                                                    \
    } else if ((VALUE) % 2 == 0) {                                                             \
      constexpr int CONST_NAME = 2;                                                            \
      return __VA_ARGS__();                                                                    \
    } else {                                                                                   \
      constexpr int CONST_NAME = 1;                                                            \
      return __VA_ARGS__();                                                                    \
    }                                                                                          \
  }()
