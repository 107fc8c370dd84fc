"""Package-level behaviour: fallback when _C is disabled, missing, stale or damaged; the CLI."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli import app as cli

# Run in a fresh interpreter (the extension is loaded once per process): the package must
# import, report why _C is unusable, fall back with exactly one warning that carries the
# reason, and refuse the explicit 'cpu' backend and the raw ops with the same reason.
FALLBACK_SCRIPT = """
import sys, warnings, torch
import convformer_fast as cf
from convformer_fast._extension import REBUILD_COMMAND
expected_file, reason_fragment = sys.argv[1], sys.argv[2]
assert cf.__file__.startswith(expected_file), (cf.__file__, expected_file)
assert not cf.extension_loaded()
reason = cf.available_backends()["cpu"].reason
assert not cf.available_backends()["cpu"].available
assert reason_fragment in reason, reason
if "DISABLE" not in reason:
    assert f"`{REBUILD_COMMAND}`" in reason, reason
x = torch.randn(1, 3, 5, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        model = cf.ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, num_heads=2).eval()
        with torch.no_grad():
            out = model(x); model(x)
assert [str(w.message) for w in caught] == [
    f"convformer_fast: backend 'auto' falls back to 'torch': {reason}"], [str(w.message) for w in caught]
with torch.no_grad():
    assert torch.equal(out, model.set_backend("torch")(x))
try:
    cf.ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, num_heads=2, backend="cpu")
except ValueError as error:
    assert f"'cpu' is unavailable: {reason}" in str(error), error
else:
    raise AssertionError("explicit unavailable backend did not raise")
try:
    cf.ops.attention(torch.randn(3, 1, 2, 5, 2))
except RuntimeError as error:
    # The op names itself and the reason: the whole load error, or for an older build that
    # lacks this op, that it is missing and how to rebuild.
    assert str(error) == f"attention: {reason}" or str(error) == (
        "attention: convformer_fast._C does not register convformer_fast::attention (it is older than "
        f"this package's Python code); rebuild it with `{REBUILD_COMMAND}`"), error
else:
    raise AssertionError("the raw op ran without _C")
print("ok")
"""

# _C as the user can meet it. "stale_torch": a shared library that links to a C++ symbol the
# imported torch does not have, which is how an extension built against another torch fails
# (the dynamic loader's "undefined symbol" ImportError). "truncated": the real library cut
# short (an interrupted build or copy). "not_a_library": junk under _C's name. "older_sources": a _C that registers
# only the first op, as one built before the others were added would.
STALE_TORCH_SOURCE = """
extern void _ZN3c1021symbol_of_other_torchEv(void);
void PyInit__C(void) { _ZN3c1021symbol_of_other_torchEv(); }
"""
OLDER_SOURCES_MODULE = """
import torch
_lib = torch.library.Library("convformer_fast", "DEF")
_lib.define("qkv_projection(Tensor x, Tensor weight, Tensor bias, int num_heads, str layout) -> Tensor")
"""
EXTENSION_STATES = {
    "disabled": "disabled by CONVFORMER_FAST_DISABLE_EXTENSION=1",
    "missing": "convformer_fast._C is not built; build it with",
    "stale_torch": f"convformer_fast._C was built against another torch than the imported torch "
                   f"{torch.__version__} (",
    "truncated": "convformer_fast._C is damaged (",
    "not_a_library": "convformer_fast._C failed to load (",
    "older_sources": "convformer_fast._C is older than this package's Python code (ops "
                     "['convformer_fast::attention', 'convformer_fast::attention_backward', "
                     "'convformer_fast::feed_forward_residual', ",
}


def _package_copy(root: Path, state: str) -> Path:
    """A copy of the package under ``root`` whose _C is in ``state``; returns the copy."""
    package = root / "convformer_fast"
    keep_built = state == "disabled"  # the real _C, switched off by the environment
    shutil.copytree(Path(cf.__file__).parent, package, ignore=shutil.ignore_patterns(
        *(() if keep_built else ("_C*.so", "_C*.pyd")), "__pycache__"))
    if state == "stale_torch":
        compiler = shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("cc")
        if compiler is None:
            pytest.skip("needs a C compiler to build the stale library")
        (root / "stale.c").write_text(STALE_TORCH_SOURCE)
        target = package / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(target), str(root / "stale.c")], check=True)
    elif state == "truncated":  # the real library cut short: loading it would be a SIGBUS
        built = next(Path(cf.__file__).parent.glob("_C*.so"), None)
        if built is None:
            pytest.skip("needs the built _C to damage")
        (package / built.name).write_bytes(built.read_bytes()[:4096])
    elif state == "not_a_library":
        (package / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file" * 100)
    elif state == "older_sources":
        (package / "_C.py").write_text(OLDER_SOURCES_MODULE)
    return package


@pytest.mark.parametrize("state", EXTENSION_STATES)
def test_unusable_extension_falls_back_with_one_clear_warning(tmp_path, state):
    # `python -S` with site-packages on PYTHONPATH: no .pth file runs, so an editable install
    # of the package elsewhere cannot supply its own _C when the copy has none.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    env.pop("CONVFORMER_FAST_DISABLE_EXTENSION", None)
    if state == "disabled":
        env["CONVFORMER_FAST_DISABLE_EXTENSION"] = "1"
    package = _package_copy(tmp_path, state)
    result = subprocess.run([sys.executable, "-S", "-c", FALLBACK_SCRIPT, str(package),
                             EXTENSION_STATES[state]],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
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
