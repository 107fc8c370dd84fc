"""Package-level behaviour: missing extension fallback, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import convformer_fast as cf
from convformer_fast import cli

MISSING_EXTENSION_SCRIPT = """
import warnings, torch
import convformer_fast as cf
assert not cf.extension_loaded()
info = cf.available_backends()
assert not info["cpu"].available and "DISABLE_EXTENSION" in info["cpu"].reason, info["cpu"]
model = cf.ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, num_heads=2).eval()
x = torch.randn(1, 3, 5, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model(x); model(x)
fallbacks = [w for w in caught if "falls back to 'torch'" in str(w.message)]
assert len(fallbacks) == 1, [str(w.message) for w in caught]
try:
    cf.ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, num_heads=2, backend="cpu")
except ValueError as error:
    assert "'cpu' is unavailable" in str(error), error
else:
    raise AssertionError("explicit unavailable backend did not raise")
print("ok")
"""


def test_missing_extension_falls_back_with_one_warning():
    env = dict(os.environ, CONVFORMER_FAST_DISABLE_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", MISSING_EXTENSION_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"convformer_fast {cf.__version__}" in out
    for name in cf.available_backends():
        assert name in out


def test_cli_check_runs_every_available_backend(capsys):
    assert cli.main(["check", "--preset", "h36m-9", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for name, info in cf.available_backends().items():
        if info.available:
            table = out.split("max |fast - eager|", 1)[1]
            assert any(line.startswith(name + " ") for line in table.splitlines()), out
