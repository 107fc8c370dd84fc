// Portable short vectors for the CPU kernels: GCC / Clang vector extensions, which the
// compiler lowers to whatever the translation unit targets (an SSE or NEON register of 4
// floats, an AVX2 register of 8). No intrinsics, so the same source builds on any x86-64 or ARM
// machine; each CPU-capability build of a kernel includes this file inside its own
// namespace (like fast_exp.h, which must come first), after <cstdint>, <cstring>, <cmath>.
//
// Why not loops over plain arrays: GCC keeps a small `float acc[24]` accumulator in memory
// (zeroed with `rep stos`, every += a load and a store), while an array of vector values is
// held in registers across a loop.

// These helpers are inline and never cross a library boundary, so GCC's note that passing
// 32- / 64-byte vectors by value has another ABI without AVX is moot here.
#pragma GCC diagnostic ignored "-Wpsabi"

// Lanes per vector: one native register of floats. The AVX2 build defines
// CONVFORMER_FAST_VEC_BYTES 32 before including this file; the baseline build uses 16
// (SSE2 / NEON): wider vectors than the target's registers are lowered through memory.
#ifndef CONVFORMER_FAST_VEC_BYTES
#define CONVFORMER_FAST_VEC_BYTES 16
#endif
constexpr int64_t kVec = CONVFORMER_FAST_VEC_BYTES / sizeof(float);

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVec * sizeof(float))));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVec * sizeof(double))));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned vector load
  return v;
}

template <typename T>
inline void store(T* p, const typename VecOf<T>::type& v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline Vec<T> broadcast(T x) {
  return Vec<T>{} + x;
}

// Lane-wise max that, like the scalar loops, keeps `b` where `a` is NaN.
template <typename V>
inline V lane_max(const V& a, const V& b) {
  return a > b ? a : b;
}

// Lane sum in a fixed order (deterministic, no -ffast-math reassociation needed).
template <typename V>
inline auto sum_lanes(const V& v) {
  auto s = v[0];
  for (int64_t l = 1; l < kVec; ++l) s += v[l];
  return s;
}

// fast_exp (fast_exp.h) lane-wise: the same branch-free float arithmetic on whole vectors.
inline Vec<float> fast_exp(Vec<float> x) {
  return fast_exp_float(x, [](Vec<float> n) {
    using Int = int32_t __attribute__((vector_size(sizeof(Vec<float>))));
    const Int bits = (__builtin_convertvector(n, Int) + 127) << 23;
    Vec<float> power;
    std::memcpy(&power, &bits, sizeof(power));
    return power;
  });
}

// float64 exists for gradcheck, where accuracy is the point: std::exp per lane.
inline Vec<double> fast_exp(Vec<double> x) {
  for (int64_t l = 0; l < kVec; ++l) x[l] = std::exp(x[l]);
  return x;
}
