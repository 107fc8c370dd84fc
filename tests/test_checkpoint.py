"""Checkpoints: round trip, config checks that name the mismatched field, damaged, foreign
and edited files."""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile

import numpy as np
import pytest
import torch

import convformer_fast as cf
from convformer_fast.pose.checkpoint import (CheckpointError, config_from_state_dict, load_checkpoint,
                                             load_model_weights, model_from_checkpoint, save_checkpoint)

SMALL = dict(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, kernel_sizes=(3, 5),
             spatial_depth=1, temporal_depth=2, mlp_ratio=2.0)


def _model(**overrides):
    torch.manual_seed(0)
    return cf.ConvFormerFast(**{**SMALL, **overrides}, backend="torch")


def test_round_trip_restores_config_weights_optimizer_and_epoch(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.95)
    x = torch.randn(3, 5, 17, 2)
    model(x).square().mean().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "c.pt", model, opt, sched, epoch=7, metrics={"test_mpjpe_mm": 1.5})

    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 7 and ckpt["metrics"]["test_mpjpe_mm"] == 1.5
    assert tuple(ckpt["config"]["kernel_sizes"]) == (3, 5) and ckpt["config"]["num_frames"] == 5
    restored = model_from_checkpoint(ckpt, backend="eager")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=1e-5, atol=1e-6)
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert ckpt["scheduler"]["last_epoch"] == 1


@pytest.mark.parametrize("field, value", [("num_frames", 7), ("embed_dim", 16), ("kernel_sizes", (3, 3)),
                                          ("temporal_depth", 1), ("num_heads", 2), ("num_joints", 15)])
def test_other_config_names_the_field_not_a_key_dump(tmp_path, field, value):
    path = save_checkpoint(tmp_path / "c.pt", _model())
    other = _model(**{field: value})
    with pytest.raises(CheckpointError) as err:
        load_model_weights(other, load_checkpoint(path))
    message = str(err.value)
    assert f"{field}: checkpoint has" in message
    assert "size mismatch" not in message and "spatial_blocks.0" not in message


def test_stored_config_must_describe_the_weights(tmp_path):
    model = _model()
    state = {"format": 1, "config": {**model.config, "embed_dim": 16}, "model": model.state_dict()}
    torch.save(state, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="embed_dim: weights has 8, config has 16"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_config_is_recovered_from_a_bare_state_dict(tmp_path):
    model = _model(num_heads=8)
    inferred = config_from_state_dict(model.state_dict())
    for key in ("num_frames", "num_joints", "embed_dim", "spatial_depth", "temporal_depth", "kernel_sizes"):
        assert inferred[key] == model.config[key], key
    assert inferred["mlp_ratio"] == 2.0
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    restored = model_from_checkpoint(tmp_path / "bare.pt", backend="torch")
    x = torch.randn(2, 5, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model.eval()(x))


def test_bad_files_name_the_file_and_key(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    torch.save({"config": SMALL}, tmp_path / "nomodel.pt")
    with pytest.raises(CheckpointError, match="key 'model' missing"):
        load_checkpoint(tmp_path / "nomodel.pt")
    torch.save({"config": SMALL, "model": _model().state_dict(), "epoch": "7"}, tmp_path / "epoch.pt")
    with pytest.raises(CheckpointError, match="epoch.pt: key 'epoch' holds a str, expected int"):
        load_checkpoint(tmp_path / "epoch.pt")


def _flip_a_weight_byte(data: bytes, path) -> bytes:
    """The file with one byte of a tensor record flipped (its zip CRC left as it was)."""
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)
    # The data starts after the local header: 30 bytes, the name, and an extra field that
    # torch.save uses as alignment padding (absent from the central directory's copy).
    name_length, extra_length = struct.unpack_from("<HH", data, record.header_offset + 26)
    start = record.header_offset + 30 + name_length + extra_length
    damaged = bytearray(data)
    damaged[start + 8] ^= 0xFF
    return bytes(damaged)


# Damaged or foreign files: how each is made from a good checkpoint's bytes, and what the
# error must say besides the file name.
DAMAGED_FILES = {
    "truncated": (lambda data, path: data[: len(data) // 2], "truncated or corrupted"),
    "truncated_tail": (lambda data, path: data[:-10], "truncated or corrupted"),
    "empty": (lambda data, path: b"", r"the file is empty \(0 bytes\)"),
    "random_bytes": (lambda data, path: bytes(random.Random(0).getrandbits(8) | 1 for _ in range(4096)),
                     "not a torch checkpoint"),
    "json": (lambda data, path: json.dumps({"config": SMALL}).encode(), r"not a torch checkpoint \(text: JSON"),
    "npz": (lambda data, path: _npz_bytes(), r"a zip archive of \['weights.npy'\], not a torch.save checkpoint .*npz"),
    "flipped_weight_byte": (_flip_a_weight_byte, "corrupted: record .* fails its CRC32 check"),
}


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weights=np.zeros(3))
    return buffer.getvalue()


@pytest.mark.parametrize("damage", DAMAGED_FILES)
def test_damaged_or_foreign_file_names_the_file_and_the_damage(tmp_path, damage):
    good = save_checkpoint(tmp_path / "good.pt", _model())
    make, expected = DAMAGED_FILES[damage]
    bad = tmp_path / f"{damage}.pt"
    bad.write_bytes(make(open(good, "rb").read(), good))
    with pytest.raises(CheckpointError, match=f"{damage}.pt: {expected}"):
        load_checkpoint(bad)


def test_whole_pickled_module_is_refused_with_what_to_save_instead(tmp_path):
    torch.save(_model(), tmp_path / "module.pt")  # needs weights_only=False: arbitrary code
    with pytest.raises(CheckpointError, match=r"module.pt: holds pickled Python objects "
                                              r"\(convformer_fast.fast.ConvFormerFast\).*state_dict"):
        load_checkpoint(tmp_path / "module.pt")


def test_missing_or_misshapen_weights_name_the_weight(tmp_path):
    model = _model()
    weights = model.state_dict()
    del weights["temporal_blocks.1.attn.theta"]
    torch.save({"config": model.config, "model": weights}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing.pt: weights do not fit the model: 1 missing "
                                              r"from the checkpoint \(e.g. \['temporal_blocks.1.attn.theta'\]\)"):
        model_from_checkpoint(tmp_path / "missing.pt", backend="torch")
    weights = model.state_dict()
    weights["temporal_blocks.0.attn.theta"] = torch.zeros(7)
    torch.save({"config": model.config, "model": weights}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape.pt: 1 weight\(s\) of the wrong shape: "
                                              r"temporal_blocks.0.attn.theta: checkpoint has \(7,\)"):
        model_from_checkpoint(tmp_path / "shape.pt", backend="torch")
    torch.save(torch.nn.Linear(2, 3).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="linear.pt: weight 'spatial_pos_embed' missing, expected a "
                                              "ConvFormer state_dict"):
        load_checkpoint(tmp_path / "linear.pt")


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, _model(), epoch=1)
    save_checkpoint(path, _model(), epoch=2)
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]
