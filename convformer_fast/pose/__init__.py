"""The pose system around ConvFormerFast: training, evaluation and video inference.

* :mod:`.train` -- ``convformer-fast train`` (paper recipe, checkpoints, CSV/TensorBoard,
  mixed precision, DDP through torchrun).
* :mod:`.evaluate` -- ``convformer-fast eval``: Protocols I-III in the paper's table layout.
* :mod:`.infer` -- ``convformer-fast infer``: 2D keypoints of a video -> 3D poses, ``--render``.
* :mod:`.lifting` -- whole-sequence lifting with the spatial part computed once per frame.
* :mod:`.stream` -- :class:`StreamingLifter`: real-time lifting, one frame in, one pose out,
  and ``convformer-fast infer --stream``.
* :mod:`.checkpoint`, :mod:`.keypoints`, :mod:`.render`, :mod:`.datasets` -- the pieces.

Heavy optional imports (matplotlib, tqdm, tensorboard) happen inside the functions that use them.
"""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .keypoints import coco_to_h36m, fill_missing, prepare_keypoints
from .lifting import lift_sequence
from .stream import StreamingLifter

__all__ = ["CheckpointError", "StreamingLifter", "coco_to_h36m", "fill_missing", "lift_sequence",
           "load_checkpoint", "model_from_checkpoint", "prepare_keypoints", "save_checkpoint"]
