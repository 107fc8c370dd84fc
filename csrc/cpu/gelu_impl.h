// Exact (erf) GELU in place, as nn.GELU() computes it, on whole vectors (simd.h). Included
// INSIDE a namespace per CPU capability (feed_forward_residual.cpp: baseline; kernels_avx2.cpp:
// AVX2 + FMA) after fast_exp.h and simd.h; no includes, no include guard.
//
// float: erf from Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7) on the branch-free
// exp; double: std::erf (the float64 path exists for gradcheck, where accuracy is the point).

template <typename V>
inline V gelu_float(V x) {
  const V z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
  const V t = 1.0f / (1.0f + 0.3275911f * z);
  const V poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const V erf_abs = 1.0f - poly * fast_exp(-z * z);
  return 0.5f * x * (1.0f + (x < 0.0f ? -erf_abs : erf_abs));
}

inline void gelu_inplace(float* data, int64_t n) {
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) store(data + i, gelu_float(load(data + i)));
  for (; i < n; ++i) data[i] = gelu_float(data[i]);
}

inline void gelu_inplace(double* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) data[i] = 0.5 * data[i] * (1.0 + std::erf(data[i] * 0.70710678118654752));
}
