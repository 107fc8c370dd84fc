// Geometry of the folded Q/K/V projection of one DMHCSA layer, shared by the CPU kernels
// in csrc/cpu and the CUDA kernels in kernels/ (plain C++: no PyTorch types).
//
// A DMHCSA input is x (N, S, F): S tokens of F features. The folded projection is ONE
// 1-D convolution with kernel k (odd, zero padding k/2) and 3C output channels (Q, K and V
// stacked), viewed as conv(n, c_in, l) over a length axis:
//   spatial  layout: channels C = F (embed dim), length = S (joints);   x[n][l][c]
//   temporal layout: channels C = S (frames),    length = F (J*d);     x[n][c][l]
// The result is stored in conv layout y (N, 3C, length) and handed out as the strided view
// qkv (3, N, h, S, F/h) = Q, K, V split into heads (no copy):
//   spatial : heads split the channels (head, e) = divmod(c, F/h), token = l
//   temporal: heads split the length   (head, e) = divmod(l, F/h), token = c
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CF_HOST_DEVICE inline
#endif

namespace convformer_fast {

struct QkvGeometry {
  int64_t batch = 0;        // N
  int64_t tokens = 0;       // S
  int64_t features = 0;     // F
  int64_t heads = 1;        // h
  int64_t kernel_size = 1;  // k, odd
  bool spatial = true;

  CF_HOST_DEVICE int64_t channels() const { return spatial ? features : tokens; }
  CF_HOST_DEVICE int64_t length() const { return spatial ? tokens : features; }
  CF_HOST_DEVICE int64_t out_channels() const { return 3 * channels(); }
  CF_HOST_DEVICE int64_t head_dim() const { return features / heads; }
  CF_HOST_DEVICE int64_t pad() const { return kernel_size / 2; }

  // Offset of conv-view element (n, c, l) in the contiguous input x (N, S, F).
  CF_HOST_DEVICE int64_t x_offset(int64_t n, int64_t c, int64_t l) const {
    return spatial ? (n * tokens + l) * features + c : (n * tokens + c) * features + l;
  }

  // Offset of conv output channel co at (n, l) in y (N, 3C, length).
  CF_HOST_DEVICE int64_t y_offset(int64_t n, int64_t co, int64_t l) const {
    return (n * out_channels() + co) * length() + l;
  }
};

}  // namespace convformer_fast
