// The folded conv-QKV projection of the temporal layout as one GEMM per sample.
//
// A short temporal layer has few channels (C = T frames: 9, 27, 43) sliding a k-tap kernel
// along many positions (L = J*d = 544). oneDNN's convolution runs that shape at a fraction
// of the machine's GEMM rate, and inside the model slower still than alone (7-9 ms against
// 2.4 ms at T = 9, batch 256); as a GEMM it is
//   y[n] (3C x L) = W (3C x C k) @ im2col(x[n]) (C k x L),
// whose right operand is C k shifted copies of x[n]'s rows: built in a per-thread scratch
// buffer that stays in L2 (63 x 544 floats at T = 9), and multiplied straight into y's conv
// layout with no transpose. Each worker takes whole samples.
#include "cpu/temporal_projection.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/scratch.h"

namespace convformer_fast::cpu {
namespace {

// im2col (C k, L) of one sample x (C, L): row c k + tap is x[c] shifted by tap - pad, zero
// where the kernel hangs over either end (the weight's (3C, C, k) layout flattened).
template <typename T>
void temporal_im2col(const T* x, T* col, int64_t channels, int64_t length, int64_t k, int64_t pad) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t tap = 0; tap < k; ++tap) {
      T* row = col + (c * k + tap) * length;
      const int64_t shift = tap - pad;
      const int64_t lo = std::clamp<int64_t>(-shift, 0, length);
      const int64_t hi = std::clamp<int64_t>(length - shift, lo, length);
      std::fill(row, row + lo, T(0));
      std::memcpy(row + lo, x + c * length + lo + shift, (hi - lo) * sizeof(T));
      std::fill(row + hi, row + length, T(0));
    }
}

template <typename T>
void temporal_gemm_kernel(const T* x, const T* weight, const T* bias, T* y, const QkvGeometry& g) {
  const int64_t C = g.channels(), L = g.length(), k = g.kernel_size, K = C * k, M = 3 * C;
  at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
    T* col = scratch<T, 0>(K * L);
    for (int64_t n = begin; n < end; ++n) {
      temporal_im2col(x + n * C * L, col, C, L, k, g.pad());
      T* yn = y + n * M * L;
      for (int64_t co = 0; co < M; ++co) std::fill_n(yn + co * L, L, bias[co]);
      gemm<T>(false, false, M, L, K, T(1), weight, K, col, L, T(1), yn, L);
    }
  });
}

}  // namespace

at::Tensor temporal_gemm_projection(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
                                    const QkvGeometry& g) {
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty({g.batch, g.out_channels(), g.length()}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "temporal_gemm_projection", [&] {
    temporal_gemm_kernel(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                         bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), g);
  });
  return y;
}

}  // namespace convformer_fast::cpu
