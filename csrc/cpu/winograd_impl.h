// The Winograd input and output transforms (winograd.h), templated on the element type.
// Like attention_impl.h, this file is included INSIDE a namespace once per CPU capability
// (winograd.cpp: baseline; kernels_avx2.cpp: AVX2 + FMA), after fast_exp.h and simd.h,
// so it has no #include of its own and no include guard. Needs winograd.h, scratch.h,
// <ATen/Parallel.h>, <algorithm>, <vector>.

// x~[a][c][n tiles + t] = sum_i B^T[a][i] x[n][c][t m + i - pad]   (0 outside the row)
template <typename T>
void input_transform(const T* x, T* x_t, const WinogradPlan& plan, const QkvGeometry& g, int64_t tiles) {
  const int64_t C = g.channels(), L = g.length(), m = plan.tile, alpha = plan.points(), pad = g.pad();
  const int64_t columns = g.batch * tiles;
  // One input row split into m phases: phase[p][u] = x[u m + p - pad], so input i of tile t
  // is phase[i % m][t + i / m]: contiguous in t, hence whole vectors of tiles at a time.
  const int64_t phase_len = (tiles + kVec - 1) / kVec * kVec + (alpha - 1) / m + 1;
  const std::vector<T> bt(plan.input_transform.begin(), plan.input_transform.end());
  std::vector<int64_t> offset(alpha);  // where input i of tile 0 sits in `phases`
  for (int64_t i = 0; i < alpha; ++i) offset[i] = (i % m) * phase_len + i / m;
  at::parallel_for(0, g.batch * C, 8, [&](int64_t begin, int64_t end) {
    T* phases = scratch<T, 0>(m * phase_len);
    T* tail = scratch<T, 1>(kVec);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / C, c = row % C;
      const T* xr = x + row * L;
      for (int64_t p = 0; p < m; ++p)
        for (int64_t u = 0, l = p - pad; u < phase_len; ++u, l += m)
          phases[p * phase_len + u] = (l >= 0 && l < L) ? xr[l] : T(0);
      for (int64_t t0 = 0; t0 < tiles; t0 += kVec) {
        for (int64_t a = 0; a < alpha; ++a) {
          Vec<T> acc{};
          for (int64_t i = 0; i < alpha; ++i)
            acc += bt[a * alpha + i] * load(phases + offset[i] + t0);
          T* out = x_t + (a * C + c) * columns + n * tiles + t0;
          if (t0 + kVec <= tiles) {
            store(out, acc);
          } else {  // the last tiles of a row: the next lanes belong to the next sample
            store(tail, acc);
            std::copy_n(tail, tiles - t0, out);
          }
        }
      }
    }
  });
}

// y[n][o][t m + j] = bias[o] + sum_a A^T[j][a] products[a][o][(n - n0) tiles + t] for the
// samples n0 .. n0 + samples of one chunk. `products` may be read up to kVec - 1 elements
// past its end (the caller allocates that slack).
template <typename T>
void output_transform(const T* products, const T* bias, T* y, const WinogradPlan& plan, const QkvGeometry& g,
                      int64_t tiles, int64_t n0, int64_t samples) {
  const int64_t L = g.length(), O = g.out_channels(), m = plan.tile, alpha = plan.points();
  const int64_t cols = samples * tiles;
  const std::vector<T> a_t(plan.output_transform.begin(), plan.output_transform.end());
  at::parallel_for(0, samples * O, 16, [&](int64_t begin, int64_t end) {
    const int64_t padded_tiles = (tiles + kVec - 1) / kVec * kVec;
    T* outputs = scratch<T, 1>(m * padded_tiles);  // outputs[j][t]
    T* interleaved = scratch<T, 2>(padded_tiles * m);  // y's row, t m + j ordered
    for (int64_t row = begin; row < end; ++row) {
      // Channel-major: consecutive rows continue each plane's stream in memory.
      const int64_t o = row / samples, s = row % samples;
      const T* src = products + o * cols + s * tiles;
      for (int64_t i = 0; i < m * padded_tiles; i += kVec) store(outputs + i, broadcast(bias[o]));
      // Plane by plane, so that each plane's row streams in once (the planes are far apart).
      for (int64_t a = 0; a < alpha; ++a) {
        const T* plane = src + a * O * cols;
        for (int64_t t0 = 0; t0 < tiles; t0 += kVec) {
          const Vec<T> v = load(plane + t0);
          for (int64_t j = 0; j < m; ++j) {
            T* acc = outputs + j * padded_tiles + t0;
            store(acc, load(acc) + a_t[j * alpha + a] * v);
          }
        }
      }
      for (int64_t t = 0; t < tiles; ++t)
        for (int64_t j = 0; j < m; ++j) interleaved[t * m + j] = outputs[j * padded_tiles + t];
      std::copy_n(interleaved, L, y + ((n0 + s) * O + o) * L);
    }
  });
}

