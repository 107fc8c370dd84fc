// The folded conv-QKV projection of the spatial layout as chunked im2col GEMMs.
//
// A spatial layer has few channels (d = 32) sliding over few positions (J = 17), and
// thousands of frames. oneDNN's convolution handles that shape poorly (it blocks over the
// tiny channel axis); as a GEMM it is (frames * J) x (k * d) times (k * d) x 3d, a shape BLAS
// runs near its peak. Each worker builds the im2col rows of a chunk of frames in a
// cache-sized scratch buffer, multiplies, and writes the result transposed into the conv
// layout y (N, 3F, J) that every backend hands out as head-split Q, K, V.
#include "cpu/spatial_projection.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/scratch.h"

namespace convformer_fast::cpu {
namespace {

template <typename T>
void spatial_projection_kernel(const T* x, const T* weight_t, const T* bias, T* y, const QkvGeometry& g) {
  const int64_t J = g.tokens, out = 3 * g.features;
  const int64_t frames_per_chunk = frames_per_projection_chunk(g);
  const int64_t chunks = (g.batch + frames_per_chunk - 1) / frames_per_chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    T* a = scratch<T, 0>(frames_per_chunk * J * g.kernel_size * g.features);
    T* c = scratch<T, 1>(frames_per_chunk * J * out);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t n0 = chunk * frames_per_chunk, frames = std::min(frames_per_chunk, g.batch - n0);
      project_frames(x + n0 * J * g.features, frames, weight_t, bias, c, a, g);
      for (int64_t f = 0; f < frames; ++f) {
        T* yf = y + (n0 + f) * out * J;
        const T* cf = c + f * J * out;
        for (int64_t co = 0; co < out; ++co)
          for (int64_t j = 0; j < J; ++j) yf[co * J + j] = cf[j * out + co];
      }
    }
  });
}

}  // namespace

at::Tensor projection_gemm_weight(const at::Tensor& weight, const QkvGeometry& g) {
  return weight.permute({2, 1, 0}).reshape({g.kernel_size * g.features, 3 * g.features}).contiguous();
}

at::Tensor spatial_projection(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                              const QkvGeometry& g) {
  const at::Tensor x = x_in.contiguous(), b = bias.contiguous(), weight_t = projection_gemm_weight(weight, g);
  at::Tensor y = at::empty({g.batch, g.out_channels(), g.length()}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_projection", [&] {
    spatial_projection_kernel(x.const_data_ptr<scalar_t>(), weight_t.const_data_ptr<scalar_t>(),
                              b.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), g);
  });
  return y;
}

}  // namespace convformer_fast::cpu
