// Folded conv-QKV projection, direct form: one thread per output element.
//
// y[n][co][l] = bias[co] + sum_{c, tap} weight[co][c][tap] * x(n, c, l + tap - k/2)
// with the index maps of QkvGeometry (qkv_layout.h); y is then viewed as head-split qkv. Accumulates in acc_t (fp32 for
// fp16/bf16 inputs). Plain CUDA C++: no PyTorch types, so it builds on its own.
#pragma once

#include "qkv_layout.h"

namespace convformer_fast {

template <typename scalar_t, typename acc_t>
__global__ void qkv_projection_direct_kernel(const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ weight,
                                             const scalar_t* __restrict__ bias,
                                             scalar_t* __restrict__ y, QkvGeometry g) {
  const int64_t length = g.length(), channels = g.channels(), k = g.kernel_size;
  const int64_t out_channels = g.out_channels(), pad = g.pad();
  const int64_t total = g.batch * out_channels * length;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = idx % length;
    const int64_t co = (idx / length) % out_channels;
    const int64_t n = idx / (length * out_channels);
    acc_t acc = static_cast<acc_t>(bias[co]);
    const scalar_t* w = weight + co * channels * k;
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t tap = 0; tap < k; ++tap) {
        const int64_t src = l + tap - pad;
        if (src >= 0 && src < length) {
          acc += static_cast<acc_t>(w[c * k + tap]) * static_cast<acc_t>(x[g.x_offset(n, c, src)]);
        }
      }
    }
    y[g.y_offset(n, co, l)] = static_cast<scalar_t>(acc);
  }
}

}  // namespace convformer_fast
