// 3x3 convolution (stride 1, zero padding 1) from C channels to a few (O <= 8), forward and backward,
// for float32 / float64 CPU tensors in channels_last layout: a denoiser's output layer (32 -> 1 or 3).
//
// Why: oneDNN's convolution is built for many output channels; at 32 -> 1 on 28x28 it runs at ~13
// GFLOP/s and costs ~2 % of a demo training step for ~0.1 % of its FLOPs. The work is a few dot
// products per pixel over the contiguous channel vector, limited by reading x once.
//
// Layout: x [N, H, W, C] (channels_last), weight as [O, 3, 3, C] (the Python side permutes the
// nn.Conv2d weight [O, C, 3, 3]), out and its gradient [N, H, W, O].
//   out[n, h, w, o] = bias[o] + sum_{dy, dx, c} x[n, h + dy, w + dx, c] * weight[o, dy + 1, dx + 1, c]
#include "common.h"

constexpr int kMaxOut = 8;  // genmodels.nn.fused.OUTPUT_CONV_MAX_CHANNELS

// 64-byte vectors (GCC/Clang vector extensions) over the contiguous channels: GCC left the plain
// tap-and-channel loops scalar (it unrolls the taps; a float reduction does not vectorize without
// -ffast-math, which this code does not use).
template <typename T> struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t lanes = 64 / sizeof(T);
  static inline type load(const T* p) { type v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
  static inline void store(T* p, type v) { __builtin_memcpy(p, &v, sizeof(v)); }
};

// Pairwise sum of a vector's lanes: a sequential sum would be a chain of dependent adds per output.
template <typename T>
static inline T lane_sum(typename Vec<T>::type v) {
  T lanes[Vec<T>::lanes];
  Vec<T>::store(lanes, v);
  for (int64_t width = Vec<T>::lanes / 2; width >= 1; width /= 2)
    for (int64_t k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  return lanes[0];
}

template <typename T, int CT>
static void forward_kernel(const T* x, const T* w, const T* bias, T* out, int64_t N, int64_t H, int64_t W,
                           int64_t C_, int64_t O) {
  using V = Vec<T>;
  using vec = typename V::type;
  const int64_t C = CT ? CT : C_;
  const int64_t Cv = C - C % V::lanes;
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      for (int64_t j = 0; j < W; ++j) {
        T* outp = out + (row * W + j) * O;
        for (int64_t o = 0; o < O; ++o) {
          vec acc = {};
          T tail = bias ? bias[o] : T(0);
          for (int64_t dy = -1; dy <= 1; ++dy) {
            const int64_t hh = h + dy;
            if (hh < 0 || hh >= H) continue;
            for (int64_t dx = -1; dx <= 1; ++dx) {
              const int64_t jj = j + dx;
              if (jj < 0 || jj >= W) continue;
              const T* xr = x + ((n * H + hh) * W + jj) * C;
              const T* wr = w + ((o * 3 + dy + 1) * 3 + dx + 1) * C;
              for (int64_t c = 0; c < Cv; c += V::lanes) acc += V::load(xr + c) * V::load(wr + c);
              for (int64_t c = Cv; c < C; ++c) tail += xr[c] * wr[c];
            }
          }
          outp[o] = tail + lane_sum<T>(acc);
        }
      }
    }
  });
}

// With g zero-padded by one pixel (gp [N, H + 2, W + 2, O]), every input pixel p has all 9 taps:
//   dx[n, p, c]       = sum_{o, t} gp[n, p - t + 1, o] * weight[o, t, c]
//   dweight[o, t, c]  = sum_{n, p} gp[n, p - t + 1, o] * x[n, p, c]
// One pass over x, a vector of channels at a time; dweight is summed per thread.
template <typename T, int CT>
static void backward_kernel(const T* gp, const T* x, const T* w, T* dx, T* dw_parts, int64_t N, int64_t H,
                            int64_t W, int64_t C_, int64_t O) {
  using V = Vec<T>;
  using vec = typename V::type;
  const int64_t C = CT ? CT : C_;
  const int64_t Cv = C - C % V::lanes;  // channels done in whole vectors; the rest one by one
  const int64_t Wp = W + 2;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    T* dw = dw_parts + int64_t(at::get_thread_num()) * O * 9 * C;
    T go[kMaxOut * 9];
    for (int64_t n = begin; n < end; ++n) {
      const T* gn = gp + n * (H + 2) * Wp * O;
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t j = 0; j < W; ++j) {
          for (int64_t o = 0; o < O; ++o)
            for (int t = 0; t < 9; ++t) go[o * 9 + t] = gn[((h + 2 - t / 3) * Wp + j + 2 - t % 3) * O + o];
          const T* xr = x + ((n * H + h) * W + j) * C;
          T* dxr = dx + ((n * H + h) * W + j) * C;
          for (int64_t c = 0; c < Cv; c += V::lanes) {
            vec s = {};
            for (int64_t k = 0; k < O * 9; ++k) s += go[k] * V::load(w + k * C + c);
            V::store(dxr + c, s);
          }
          for (int64_t c = Cv; c < C; ++c) {
            T s = T(0);
            for (int64_t k = 0; k < O * 9; ++k) s += go[k] * w[k * C + c];
            dxr[c] = s;
          }
          for (int64_t k = 0; k < O * 9; ++k) {
            T* dwr = dw + k * C;
            for (int64_t c = 0; c < Cv; c += V::lanes) V::store(dwr + c, V::load(dwr + c) + go[k] * V::load(xr + c));
            for (int64_t c = Cv; c < C; ++c) dwr[c] += go[k] * xr[c];
          }
        }
      }
    }
  });
}

static void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "output_conv kernel: x must be a 4-D CPU tensor in channels_last layout, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 3 && weight.size(2) == 3 && weight.size(3) == x.size(1) &&
                  weight.size(0) >= 1 && weight.size(0) <= kMaxOut && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "output_conv kernel: weight must be contiguous [O <= ", kMaxOut, ", 3, 3, ", x.size(1), "] of x's dtype, got ",
              weight.sizes());
}

at::Tensor output_conv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_inputs(x, weight);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = weight.size(0);
  if (bias.has_value() && bias->defined())
    TORCH_CHECK(bias->numel() == O && bias->is_contiguous() && bias->scalar_type() == x.scalar_type(),
                "output_conv kernel: bias must be contiguous [", O, "] of x's dtype");
  auto out = at::empty({N, O, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "output_conv_forward", [&] {
    GM_DISPATCH_C(C, [&] { forward_kernel<scalar_t, CT>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                                        ptr<scalar_t>(bias), out.data_ptr<scalar_t>(), N, H, W, C, O); });
  });
  return out;
}

// Returns dx (channels_last), dweight [O, 3, 3, C] and, when bias, dbias [O].
std::vector<at::Tensor> output_conv_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                             bool bias) {
  check_inputs(x, weight);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = weight.size(0);
  TORCH_CHECK(dout.dim() == 4 && dout.size(0) == N && dout.size(1) == O && dout.size(2) == H && dout.size(3) == W &&
                  dout.scalar_type() == x.scalar_type(),
              "output_conv kernel: the gradient must be [", N, ", ", O, ", ", H, ", ", W, "], got ", dout.sizes());
  auto g = dout.contiguous(at::MemoryFormat::ChannelsLast);
  // [N, O, H, W] channels_last is [N, H, W, O] in memory; pad H and W by one pixel each side
  auto gp = at::constant_pad_nd(g.permute({0, 2, 3, 1}), {0, 0, 1, 1, 1, 1}).contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto dw_parts = at::zeros({int64_t(at::get_num_threads()), O, 3, 3, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "output_conv_backward", [&] {
    GM_DISPATCH_C(C, [&] { backward_kernel<scalar_t, CT>(gp.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                         weight.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                                         dw_parts.data_ptr<scalar_t>(), N, H, W, C, O); });
  });
  std::vector<at::Tensor> grads = {dx, dw_parts.sum(0)};
  if (bias) grads.push_back(g.sum({0, 2, 3}));
  return grads;
}
