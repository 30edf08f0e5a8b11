// Fused GroupNorm + optional scale-shift (FiLM) + optional SiLU, forward and backward, for float32 /
// float64 CPU tensors in channels_last layout. Built on first use by genmodels.nn.fused, which holds
// the reference math in PyTorch ops and falls back to it wherever this kernel does not apply.
//
//   y = GroupNorm(x; gamma, beta) * (1 + scale[n, c]) + shift[n, c];   out = silu ? y * sigmoid(y) : y
//
// Why: on a 2-core CPU, PyTorch runs GroupNorm, the modulation and SiLU as separate passes over memory
// (forward and backward), about 15 % of a training step of the demo UNet. Here each image's activations
// (<= a few hundred KiB, so they stay in L2) are passed over three times forward and twice backward, with the
// statistics, modulation and gate folded into per-channel coefficients.
//
// Layout: x is [N, C, H, W] with channels_last strides, so image n is an [H*W, C] row-major block.
// The forward returns the per-(image, group) mean and 1/std for the backward; the backward returns dx
// and the per-(image, channel) sums of dy and dy * xhat, from which the Python side forms the small
// gradients of gamma, beta, scale and shift.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// exp for the SiLU gate, inline so that the channel loops vectorize without a math library call:
// Cephes' expf (range reduction by ln 2, degree-6 polynomial; relative error ~1e-7 over the clamped
// range). Double precision (gradcheck) uses std::exp.
static inline float gate_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // not fmin/fmax: their NaN rules block vectorization
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
static inline double gate_exp(double x) { return std::exp(x); }

// Per-channel coefficients of image n: y = a[c] * (x - m[c]) + b[c], with m[c] the mean of c's group.
// Working on x - m (never on x alone) keeps float32 exact when the activations carry a large offset.
template <typename T>
static void coefficients(int64_t n, int64_t C, int64_t G, const T* gamma, const T* beta, const T* scale,
                         const T* shift, const T* mean, const T* rstd, T* m, T* a, T* b) {
  const int64_t Cg = C / G;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / Cg;
    const T k = scale ? T(1) + scale[n * C + c] : T(1);
    m[c] = mean[n * G + g];
    a[c] = rstd[n * G + g] * (gamma ? gamma[c] : T(1)) * k;
    b[c] = (beta ? beta[c] : T(0)) * k + (shift ? shift[n * C + c] : T(0));
  }
}

template <typename T, int CT>
static void forward_kernel(const T* x, T* out, T* mean, T* rstd, const T* gamma, const T* beta, const T* scale,
                           const T* shift, int64_t N, int64_t C_, int64_t HW, int64_t G, bool silu, double eps) {
  const int64_t C = CT ? CT : C_;  // a compile-time width unrolls the channel loops
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(C), pivot(C), m(C), a(C), b(C);
    const int64_t Cg = C / G;
    const double count = double(Cg * HW);
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * HW * C;
      T* on = out + n * HW * C;
      // Pass 1: the mean, summing x - (the channel's first pixel) so that an offset cannot swamp it.
      std::copy(xn, xn + C, pivot.begin());
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t p = 0; p < HW; ++p) {
        const T* row = xn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] += row[c] - pivot[c];
      }
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) s += double(acc[c]) + double(HW) * double(pivot[c]);
        mean[n * G + g] = T(s / count);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) m[c] = mean[n * G + g];
      }
      // Pass 2: the variance around that mean.
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t p = 0; p < HW; ++p) {
        const T* row = xn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) { const T d = row[c] - m[c]; acc[c] += d * d; }
      }
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) s += acc[c];
        rstd[n * G + g] = T(1.0 / std::sqrt(s / count + eps));
      }
      // Pass 3: normalise, modulate, gate.
      coefficients(n, C, G, gamma, beta, scale, shift, mean, rstd, m.data(), a.data(), b.data());
      for (int64_t p = 0; p < HW; ++p) {
        const T* row = xn + p * C;
        T* orow = on + p * C;
        if (silu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T y = a[c] * (row[c] - m[c]) + b[c];
            orow[c] = y / (T(1) + gate_exp(-y));
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) orow[c] = a[c] * (row[c] - m[c]) + b[c];
        }
      }
    }
  });
}

template <typename T, int CT>
static void backward_kernel(const T* dout, const T* x, const T* mean, const T* rstd, const T* gamma, const T* beta,
                            const T* scale, const T* shift, T* dx, T* sum_dy, T* sum_dy_xhat,
                            int64_t N, int64_t C_, int64_t HW, int64_t G, bool silu) {
  const int64_t C = CT ? CT : C_;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> m(C), a(C), b(C), s1(C), s2(C), A(C), B(C), D(C);
    const int64_t Cg = C / G;
    const double count = double(Cg * HW);
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * HW * C;
      const T* gn = dout + n * HW * C;
      T* dn = dx + n * HW * C;
      coefficients(n, C, G, gamma, beta, scale, shift, mean, rstd, m.data(), a.data(), b.data());
      // Pass 1: dy (the gradient at y, through the gate) into dx's memory, and per channel
      // s1 = sum dy, s2 = sum dy * (x - m).
      std::fill(s1.begin(), s1.end(), T(0));
      std::fill(s2.begin(), s2.end(), T(0));
      for (int64_t p = 0; p < HW; ++p) {
        const T* row = xn + p * C;
        const T* grow = gn + p * C;
        T* drow = dn + p * C;
        if (silu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T d = row[c] - m[c];
            const T y = a[c] * d + b[c];
            const T sg = T(1) / (T(1) + gate_exp(-y));
            const T dy = grow[c] * sg * (T(1) + y * (T(1) - sg));
            drow[c] = dy; s1[c] += dy; s2[c] += dy * d;
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T dy = grow[c];
            drow[c] = dy; s1[c] += dy; s2[c] += dy * (row[c] - m[c]);
          }
        }
      }
      // dxhat = k dy with k = gamma (1 + scale); dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
      // the means over the group, written per channel as dx = A dy + B (x - m) + D.
      for (int64_t g = 0; g < G; ++g) {
        const T r = rstd[n * G + g];
        double m1 = 0, m2 = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const T k = (gamma ? gamma[c] : T(1)) * (scale ? T(1) + scale[n * C + c] : T(1));
          const T sdxh = r * s2[c];
          sum_dy[n * C + c] = s1[c];
          sum_dy_xhat[n * C + c] = sdxh;
          m1 += double(k) * s1[c];
          m2 += double(k) * sdxh;
        }
        const T M1 = T(m1 / count), M2 = T(m2 / count);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const T k = (gamma ? gamma[c] : T(1)) * (scale ? T(1) + scale[n * C + c] : T(1));
          A[c] = r * k;
          B[c] = -r * r * M2;
          D[c] = -r * M1;
        }
      }
      // Pass 2: dx in place.
      for (int64_t p = 0; p < HW; ++p) {
        const T* row = xn + p * C;
        T* drow = dn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) drow[c] = A[c] * drow[c] + B[c] * (row[c] - m[c]) + D[c];
      }
    }
  });
}

// The kernels index raw memory: refuse anything but the layout they assume, with a message.
static void check_inputs(const at::Tensor& x, int64_t G, std::initializer_list<const c10::optional<at::Tensor>*> per_channel,
                         std::initializer_list<const c10::optional<at::Tensor>*> per_image_channel) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group_norm_act kernel: x must be a 4-D CPU tensor in channels_last layout, got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(G > 0 && C % G == 0, "group_norm_act kernel: ", C, " channels are not divisible by ", G, " groups");
  for (auto* t : per_channel)
    if (t->has_value() && (*t)->defined())
      TORCH_CHECK((*t)->numel() == C && (*t)->is_contiguous() && (*t)->scalar_type() == x.scalar_type(),
                  "group_norm_act kernel: weight/bias must be contiguous [", C, "] of x's dtype");
  for (auto* t : per_image_channel)
    if (t->has_value() && (*t)->defined())
      TORCH_CHECK((*t)->numel() == N * C && (*t)->is_contiguous() && (*t)->scalar_type() == x.scalar_type(),
                  "group_norm_act kernel: scale/shift must be contiguous [", N, ", ", C, "] of x's dtype");
}

std::vector<at::Tensor> gn_forward(const at::Tensor& x, int64_t G, const c10::optional<at::Tensor>& gamma,
                                   const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& scale,
                                   const c10::optional<at::Tensor>& shift, bool silu, double eps) {
  check_inputs(x, G, {&gamma, &beta}, {&scale, &shift});
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mean = at::empty({N, G}, x.options()), rstd = at::empty({N, G}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_forward", [&] {
    GM_DISPATCH_C(C, [&] { forward_kernel<scalar_t, CT>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                             rstd.data_ptr<scalar_t>(), ptr<scalar_t>(gamma), ptr<scalar_t>(beta),
                             ptr<scalar_t>(scale), ptr<scalar_t>(shift), N, C, HW, G, silu, eps); });
  });
  return {out, mean, rstd};
}

std::vector<at::Tensor> gn_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& rstd, int64_t G, const c10::optional<at::Tensor>& gamma,
                                    const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& scale,
                                    const c10::optional<at::Tensor>& shift, bool silu) {
  check_inputs(x, G, {&gamma, &beta}, {&scale, &shift});
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.scalar_type() == x.scalar_type(),
              "group_norm_act kernel: the gradient must match x, got ", dout.sizes());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto g = dout.contiguous(at::MemoryFormat::ChannelsLast);
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto sum_dy = at::empty({N, C}, x.options()), sum_dy_xhat = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_backward", [&] {
    GM_DISPATCH_C(C, [&] { backward_kernel<scalar_t, CT>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                              rstd.data_ptr<scalar_t>(), ptr<scalar_t>(gamma), ptr<scalar_t>(beta),
                              ptr<scalar_t>(scale), ptr<scalar_t>(shift), dx.data_ptr<scalar_t>(),
                              sum_dy.data_ptr<scalar_t>(), sum_dy_xhat.data_ptr<scalar_t>(), N, C, HW, G, silu); });
  });
  return {dx, sum_dy, sum_dy_xhat};
}
