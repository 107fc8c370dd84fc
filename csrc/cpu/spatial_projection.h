// The folded conv-QKV projection of the spatial layout on the CPU as im2col GEMMs
// (spatial_projection.cpp), and the chunk step it shares with the fused spatial block
// (spatial_attention_residual.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "cpu/gemm.h"
#include "qkv_layout.h"

namespace convformer_fast::cpu {

// y (N, 3F, J) = Conv1d over the joints of x (N, J, F), for float32 / float64 x, weight, bias.
at::Tensor spatial_projection(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const QkvGeometry& g);

// weight_t (k F, 3F), weight_t[tap F + c][co] = weight[co][c][tap]: the GEMM's right operand.
at::Tensor projection_gemm_weight(const at::Tensor& weight, const QkvGeometry& g);

// Frames per chunk: the chunk's im2col rows (frames J x k F) and products (frames J x 3F)
// stay in L2 (about 384 rows).
inline int64_t frames_per_projection_chunk(const QkvGeometry& g) {
  return std::max<int64_t>(1, 384 / g.tokens);
}

// c (frames J, 3F) = bias + im2col(x) @ weight_t for `frames` consecutive frames x (frames, J, F):
// the folded projection in row layout (row f J + j holds Q, K and V of joint j of frame f).
// Single-threaded; im2col: scratch of frames J k F elements.
template <typename T>
void project_frames(const T* x, int64_t frames, const T* weight_t, const T* bias, T* c, T* im2col,
                    const QkvGeometry& g) {
  const int64_t J = g.tokens, F = g.features, k = g.kernel_size, pad = g.pad();
  const int64_t K = k * F, out = 3 * F, rows = frames * J;
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t j = 0; j < J; ++j) {
      T* row = im2col + (f * J + j) * K;
      for (int64_t tap = 0; tap < k; ++tap) {
        const int64_t src = j + tap - pad;
        if (src >= 0 && src < J) {
          std::memcpy(row + tap * F, x + (f * J + src) * F, F * sizeof(T));
        } else {
          std::fill_n(row + tap * F, F, T(0));
        }
      }
    }
  for (int64_t r = 0; r < rows; ++r) std::copy_n(bias, out, c + r * out);
  gemm<T>(false, false, rows, out, K, T(1), im2col, K, weight_t, out, T(1), c, out);
}

}  // namespace convformer_fast::cpu
