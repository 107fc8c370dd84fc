"""The ``train``, ``eval`` and ``infer`` subcommands of ``convformer-fast``."""

from __future__ import annotations

import argparse


def add_pose_commands(subparsers) -> None:
    """Register the subcommands on the CLI's ``add_subparsers()`` object."""
    from . import evaluate, infer, train

    for name, module, help_text in (
            ("train", train, "train a ConvFormer on Human3.6M-format data (torchrun for DDP)"),
            ("eval", evaluate, "Protocols I-III of a checkpoint in the paper's table layout"),
            ("infer", infer, "2D keypoints of a video -> 3D poses (.npy), optional --render")):
        parser = subparsers.add_parser(name, help=help_text, description=module.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
