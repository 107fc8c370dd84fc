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

// The float algorithm on a float or on a vector of floats (simd.h), given how to turn the
// rounded n into the float 2^n. Branch-free so that it vectorises: clamps become min/max,
// rounding uses the 1.5 * 2^23 trick (exact under round-to-nearest).
template <typename F, typename PowerOfTwo>
inline F fast_exp_float(F x, PowerOfTwo power_of_two) {
  x = x < -87.0f ? F{} - 87.0f : x;
  x = x > 88.0f ? F{} + 88.0f : x;
  const F n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const F r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln2, in two parts
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * power_of_two(n == n ? n : F{});  // NaN: p is NaN anyway
}

inline float fast_exp(float x) {
  return fast_exp_float(x, [](float n) {
    return std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  });
}

inline double fast_exp(double x) { return std::exp(x); }
