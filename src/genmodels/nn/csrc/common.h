// Shared by genmodels' CPU kernels (genmodels.nn.fused builds them into one extension).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <vector>

// Calls body with a compile-time channel count when C is a common width (so the inner loop over
// channels unrolls into a few vector operations), else with 0 (runtime width).
#define GM_DISPATCH_C(C, ...)                                                        \
  switch (C) {                                                                       \
    case 8: { constexpr int CT = 8; __VA_ARGS__(); break; }                          \
    case 16: { constexpr int CT = 16; __VA_ARGS__(); break; }                        \
    case 32: { constexpr int CT = 32; __VA_ARGS__(); break; }                        \
    case 48: { constexpr int CT = 48; __VA_ARGS__(); break; }                        \
    case 64: { constexpr int CT = 64; __VA_ARGS__(); break; }                        \
    case 96: { constexpr int CT = 96; __VA_ARGS__(); break; }                        \
    case 128: { constexpr int CT = 128; __VA_ARGS__(); break; }                      \
    case 192: { constexpr int CT = 192; __VA_ARGS__(); break; }                      \
    case 256: { constexpr int CT = 256; __VA_ARGS__(); break; }                      \
    default: { constexpr int CT = 0; __VA_ARGS__(); break; }                         \
  }

template <typename T> static inline const T* ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// group_norm_act.cpp
std::vector<at::Tensor> gn_forward(const at::Tensor& x, int64_t G, const c10::optional<at::Tensor>& gamma,
                                   const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& scale,
                                   const c10::optional<at::Tensor>& shift, bool silu, double eps);
std::vector<at::Tensor> gn_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& rstd, int64_t G, const c10::optional<at::Tensor>& gamma,
                                    const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& scale,
                                    const c10::optional<at::Tensor>& shift, bool silu);

// output_conv.cpp
at::Tensor output_conv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> output_conv_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                             bool bias);

// phase_interleave.cpp
at::Tensor interleave_forward(const at::Tensor& phases);
at::Tensor interleave_backward(const at::Tensor& dy);
