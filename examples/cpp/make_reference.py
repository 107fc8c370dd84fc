"""Writes what the C++ example's test compares: an AOTInductor package of a preset with
seeded random weights, keypoints, and the eager PyTorch model's output on them.

    python examples/cpp/make_reference.py OUT_DIR [--preset h36m-9] [--batch 3]

writes OUT_DIR/model.pt2, OUT_DIR/input.bin (B, T, J, 2) and OUT_DIR/expected.bin
(B, 1, J, 3), raw little-endian float32. The C++ side (convformer_aoti.cpp) runs the
package on input.bin and compares with expected.bin.
"""

from __future__ import annotations

import argparse
import os

import torch

from convformer_fast import ConvFormer
from convformer_fast.export import to_aoti


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--preset", default="h36m-9")
    parser.add_argument("--batch", type=int, default=3, help="a batch other than the export's example (2)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)
    model = ConvFormer.from_preset(args.preset).eval()
    to_aoti(model, os.path.join(args.out_dir, "model.pt2"))
    x = torch.randn(args.batch, model.num_frames, model.num_joints, 2)
    with torch.no_grad():
        expected = model(x)
    for name, tensor in (("input.bin", x), ("expected.bin", expected)):
        tensor.contiguous().numpy().astype("<f4").tofile(os.path.join(args.out_dir, name))
    print(f"wrote {args.out_dir}/model.pt2, input.bin {tuple(x.shape)}, expected.bin {tuple(expected.shape)}")


if __name__ == "__main__":
    main()
