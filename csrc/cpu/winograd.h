// Winograd / Toom-Cook minimal filtering for the temporal conv-QKV projection on the CPU.
//
// A temporal layer's folded projection is a Conv1d with C = T channels (frames) sliding a
// kernel of r taps along the J*d features (docs/ARCHITECTURE.md section 2): at T = 243 it is 78 %
// of the fast model's FLOPs. F(m, r) computes m outputs of an r-tap correlation from
// alpha = m + r - 1 inputs with alpha multiplications instead of m * r:
//     y = A^T [ (G g) . (B^T d) ]       (g: r taps, d: alpha inputs, y: m outputs)
// Because the conv mixes channels, the elementwise product becomes, for each of the alpha
// points, a GEMM over channels:  Y~[a] (3C x tiles) = W~[a] (3C x C) @ X~[a] (C x tiles),
// with W~[a] = sum_k G[a][k] W[:, :, k] (precomputed once per weight) and X~ = B^T applied
// to every input tile. The GEMMs do alpha / (m r) of the direct convolution's work: 10/28
// for r = 7, m = 4.
//
// The matrices come from Toom-Cook at the points 0, +-1, +-2, +-1/2, +-3/4 and infinity:
// with V_n the alpha x n evaluation matrix of polynomials of degree < n at those points,
// A^T = V_m^T, G = V_r and B^T = V_alpha^-T (correlation is the transpose of polynomial
// multiplication). In float32 the result stays within about 10x the rounding error of the
// direct convolution (relative error ~3e-6 for r = 7, alpha = 10), well inside the fp32
// tolerance every backend is tested against; larger alpha grows the error quickly, so
// alpha is capped at kMaxWinogradPoints.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kernel_limits.h"
#include "qkv_layout.h"

namespace convformer_fast::cpu {

struct WinogradPlan {
  int64_t tile = 0;         // m outputs per tile
  int64_t kernel_size = 0;  // r taps
  int64_t points() const { return tile + kernel_size - 1; }  // alpha
  std::vector<double> input_transform;   // B^T, alpha x alpha, row-major
  std::vector<double> kernel_transform;  // G, alpha x r
  std::vector<double> output_transform;  // A^T, m x alpha
};

// The transforms of F(tile, kernel_size); throws a ValueError naming `op` if alpha is out of
// range (tile < 1, or tile + kernel_size - 1 > kMaxWinogradPoints).
WinogradPlan winograd_plan(const char* op, int64_t tile, int64_t kernel_size);

// W~ (alpha, 3C, C) from the folded weight (3C, C, r): the GEMM operands of every point.
at::Tensor winograd_weight(const at::Tensor& weight, int64_t tile);

// y (N, 3C, L) = the temporal Conv1d of x (N, C, L) with bias, computed through W~.
at::Tensor temporal_winograd_projection(const at::Tensor& x, const at::Tensor& transformed_weight,
                                        const at::Tensor& bias, const QkvGeometry& g);

}  // namespace convformer_fast::cpu
