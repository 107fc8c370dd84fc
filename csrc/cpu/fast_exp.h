// exp() in plain arithmetic, so that loops calling it auto-vectorise on any CPU (SSE2 /
// NEON baseline; the extension is not compiled per CPU capability, so ATen's
// at::vec::Vectorized would fall back to one std::exp call per element).
//
// float: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then the classic degree-6
// minimax polynomial for exp(r) (relative error ~2e-7, i.e. about 1-2 ulp), scaled by 2^n
// through the exponent bits. Inputs are clamped to [-87, 88] so 2^n stays a normal float;
// softmax only feeds it x <= 0 after max subtraction, where exp(-87) ~ 1.6e-38 is
// indistinguishable from 0 next to the row maximum's exp(0) = 1. NaN propagates (the
// polynomial of a NaN is NaN).
// double: std::exp (the float64 path exists for gradcheck, where accuracy is the point).
//
// Included INSIDE a namespace by each CPU-capability build of the attention kernels (see
// attention_impl.h), after <bit>, <cmath> and <cstdint>: no includes, no include guard.

// Branch-free so that it vectorises: clamps become min/max, rounding uses the 1.5 * 2^23
// trick (exact under round-to-nearest), the 2^n scale is built from exponent bits.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t exponent = static_cast<int32_t>(n == n ? n : 0.0f) + 127;  // NaN: p is NaN anyway
  return p * std::bit_cast<float>(static_cast<uint32_t>(exponent) << 23);
}

inline double fast_exp(double x) { return std::exp(x); }
