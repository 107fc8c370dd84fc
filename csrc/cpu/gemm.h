// Row-major GEMM on raw pointers. Large products go through ATen's matmul (MKL / oneDNN /
// OpenBLAS, whatever torch uses) on non-owning tensor views; inside an at::parallel_for
// worker it runs single-threaded, so the parallelism is ours. ATen's typed raw-pointer BLAS
// entry points are not exported from libtorch, hence the thin tensor views (a few
// microseconds per call, paid only by products large enough to amortise them).
#pragma once

#include <ATen/ATen.h>

namespace convformer_fast::cpu {

// Below this many multiply-adds a BLAS call costs more than the work (the spatial attention
// is thousands of 17 x 17 x 4 problems), so plain loops run instead.
constexpr int64_t kSmallGemmMacs = 8192;

template <typename T>
inline void small_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                       const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                       int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* c_row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) c_row[j] = beta == T(0) ? T(0) : beta * c_row[j];
    for (int64_t p = 0; p < k; ++p) {
      const T a_ip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      if (trans_b) {
        for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b[j * ldb + p];
      } else {
        const T* b_row = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b_row[j];
      }
    }
  }
}

// C[m x n] = alpha * op(A)[m x k] * op(B)[k x n] + beta * C, all row-major with leading
// dimensions lda, ldb, ldc; op(X) = X^T when trans_x. (beta == 0 ignores C's contents.)
template <typename T>
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                 int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m * n * k <= kSmallGemmMacs) {
    small_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* data, bool trans, int64_t rows, int64_t cols, int64_t ld) {
    // op(X) is rows x cols; X itself is stored row-major with leading dimension ld.
    at::Tensor stored = trans ? at::from_blob(const_cast<T*>(data), {cols, rows}, {ld, 1}, options)
                              : at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1}, options);
    return trans ? stored.t() : stored;
  };
  at::Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::addmm_out(out, out, view(a, trans_a, m, k, lda), view(b, trans_b, k, n, ldb), beta, alpha);
}

}  // namespace convformer_fast::cpu
