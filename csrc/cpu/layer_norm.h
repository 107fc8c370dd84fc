// LayerNorm over rows, as torch.nn.LayerNorm computes it, for the fused block kernels.
#pragma once

#include <cmath>
#include <cstdint>

namespace convformer_fast::cpu {

// dst[r][:] = (src[r][:] - mean_r) / sqrt(var_r + eps) * gamma + beta for `rows` rows of
// `dim`, biased variance in two passes (as ATen does: no cancellation of a one-pass sum).
template <typename T>
void layer_norm_rows(const T* src, T* dst, int64_t rows, int64_t dim, const T* gamma, const T* beta, T eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = src + r * dim;
    T* y = dst + r * dim;
    T mean = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += x[i];
    mean /= T(dim);
    for (int64_t i = 0; i < dim; ++i) var += (x[i] - mean) * (x[i] - mean);
    const T inv_std = T(1) / std::sqrt(var / T(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) y[i] = (x[i] - mean) * inv_std * gamma[i] + beta[i];
  }
}

}  // namespace convformer_fast::cpu
