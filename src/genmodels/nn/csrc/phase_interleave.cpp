// The interleaving step of genmodels.nn.upsample_conv (upsample x2 + 3x3 conv computed as four 2x2
// phase convolutions at the coarse resolution), forward and backward, for float32 / float64 CPU
// tensors in channels_last layout.
//
//   phases [N, 4O, H+1, W+1] -> y [N, O, 2H, 2W]:  y[n, :, 2i+a, 2j+b] = phases[n, (2a+b)O : (2a+b+1)O, i+a, j+b]
//
// Why: as four strided PyTorch copies (and, backward, four copies plus zero fills into a fresh
// tensor) this cost ~1.3 % of a demo training step; here each output pixel is one contiguous copy
// of O channels, and the backward writes every element of its result exactly once.
#include "common.h"

#include <algorithm>

template <typename T>
static void interleave_kernel(const T* phases, T* y, int64_t N, int64_t O, int64_t H, int64_t W) {
  const int64_t Wp = W + 1;
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, i = row % H;
      for (int64_t a = 0; a < 2; ++a) {
        T* yr = y + ((n * 2 * H + 2 * i + a) * 2 * W) * O;
        const T* pr = phases + ((n * (H + 1) + i + a) * Wp) * 4 * O;
        for (int64_t j = 0; j < W; ++j)
          for (int64_t b = 0; b < 2; ++b)
            std::copy_n(pr + ((j + b) * 4 + 2 * a + b) * O, O, yr + (2 * j + b) * O);
      }
    }
  });
}

// d phases [n, r, s, (2a+b)O + c] = dy[n, 2(r-a)+a, 2(s-b)+b, c] where 0 <= r-a < H and 0 <= s-b < W, else 0.
template <typename T>
static void interleave_backward_kernel(const T* g, T* d, int64_t N, int64_t O, int64_t H, int64_t W) {
  const int64_t Hp = H + 1, Wp = W + 1;
  at::parallel_for(0, N * Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / Hp, r = row % Hp;
      T* dr = d + row * Wp * 4 * O;
      for (int64_t s = 0; s < Wp; ++s)
        for (int64_t a = 0; a < 2; ++a)
          for (int64_t b = 0; b < 2; ++b) {
            T* dst = dr + (s * 4 + 2 * a + b) * O;
            const int64_t i = r - a, j = s - b;
            if (i < 0 || i >= H || j < 0 || j >= W) {
              std::fill_n(dst, O, T(0));
            } else {
              std::copy_n(g + ((n * 2 * H + 2 * i + a) * 2 * W + 2 * j + b) * O, O, dst);
            }
          }
    }
  });
}

at::Tensor interleave_forward(const at::Tensor& phases) {
  TORCH_CHECK(phases.device().is_cpu() && phases.dim() == 4 && phases.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  phases.size(1) % 4 == 0 && phases.size(2) >= 2 && phases.size(3) >= 2,
              "phase interleave kernel: phases must be a channels_last CPU tensor [N, 4 O, H + 1, W + 1], got ",
              phases.sizes());
  const int64_t N = phases.size(0), O = phases.size(1) / 4, H = phases.size(2) - 1, W = phases.size(3) - 1;
  auto y = at::empty({N, O, 2 * H, 2 * W}, phases.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(phases.scalar_type(), "interleave_forward", [&] {
    interleave_kernel<scalar_t>(phases.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, O, H, W);
  });
  return y;
}

at::Tensor interleave_backward(const at::Tensor& dy) {
  TORCH_CHECK(dy.device().is_cpu() && dy.dim() == 4 && dy.size(2) % 2 == 0 && dy.size(3) % 2 == 0,
              "phase interleave kernel: the gradient must be a CPU tensor [N, O, 2H, 2W], got ", dy.sizes());
  const int64_t N = dy.size(0), O = dy.size(1), H = dy.size(2) / 2, W = dy.size(3) / 2;
  auto g = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto d = at::empty({N, 4 * O, H + 1, W + 1}, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "interleave_backward", [&] {
    interleave_backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), N, O, H, W);
  });
  return d;
}
