// The Python module of genmodels' CPU kernels; each kernel's source says what it computes and why.
#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gn_forward, "fused GroupNorm + scale-shift + SiLU, forward");
  m.def("backward", &gn_backward, "fused GroupNorm + scale-shift + SiLU, backward");
  m.def("output_conv_forward", &output_conv_forward, "3x3 convolution to a few channels, forward");
  m.def("output_conv_backward", &output_conv_backward, "3x3 convolution to a few channels, backward");
  m.def("interleave_forward", &interleave_forward, "upsample_conv's phase interleaving, forward");
  m.def("interleave_backward", &interleave_backward, "upsample_conv's phase interleaving, backward");
}
