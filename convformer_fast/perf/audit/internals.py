"""Every private torch and Triton internal the audit relies on, in one place.

Compiling for a GPU without one, and capturing setup.py's nvcc command without building,
needs parts of torch and Triton that are not public API:

* ``triton.runtime.driver.driver`` (``_active``, ``set_active``): :class:`TargetDriver`, a
  stand-in that only names the target GPU, is the active driver while compiling;
* ``triton.knobs.compilation`` / ``.nvidia`` (``scope``, ``always_compile``,
  ``dump_ptxas_log``): compile afresh (``--fresh``), print ptxas's log;
* TRITON_INTERPRET, read when Triton and the kernels are imported, and
  ``triton.language.standard.cdiv`` being a ``JITFunction`` when compiled: tells a compiled
  import from an interpreted one;
* ``.fn`` of ``Autotuner`` / ``Heuristics``, ``Autotuner.nargs`` / ``arg_names`` /
  ``prune_configs(kwargs)``, ``Config.all_kwargs``: the ``@triton.jit`` function and the
  configurations the autotuner may pick;
* ``triton.compiler.make_backend``, ``CUDABackend.parse_options(opts)`` /
  ``make_cubin(src, metadata, opt, capability)``: ptxas rerun for a kernel Triton took
  from its disk cache;
* ``triton/backends/nvidia/bin/{ptxas,cuobjdump}``: the GPU tools in Triton's wheel;
* ``torch.utils.cpp_extension._write_ninja_file_and_compile_objects`` (torch calls it with
  keywords) and ``_join_cuda_home``: replaced, in a child process, by a recorder of
  setup.py's nvcc command (:data:`CAPTURE_BUILD`);
* torch.utils.cpp_extension's log record "No CUDA runtime is found, using CUDA_HOME=...":
  silenced (:func:`quiet_cuda_home_notice`).

:data:`CHECKED_AGAINST` names the releases checked. :func:`check_triton` and
:func:`check_torch` (run before the audit starts) and the guards below turn a changed
internal into one line naming it and those releases, instead of an AttributeError deep
inside Triton or torch.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os

from .errors import AuditError

#: Releases this module was checked against: the audit runs on the first here; the GPU
#: machines run the second (triton 3.6.0's wheel was run here too, with torch 2.14.1;
#: torch 2.11.0's cpp_extension was read from its wheel).
CHECKED_AGAINST = "torch 2.14.1 / triton 3.8.0 and torch 2.11.0 / triton 3.6.0"
INTERPRET_ENV_VAR = "TRITON_INTERPRET"


class InternalChanged(AuditError, AttributeError):
    """A private internal the audit relies on is gone or changed. Also an AttributeError,
    so that Triton's own ``hasattr`` probes of the stand-in driver still read "absent"."""


def changed(package: str, what: str) -> InternalChanged:
    version = getattr(importlib.import_module(package), "__version__", "?")
    return InternalChanged(f"{package} {version}: {what} (a private internal the kernel audit relies "
                           f"on: convformer_fast/perf/audit/internals.py, checked against "
                           f"{CHECKED_AGAINST})")


# (dotted path, parameters it must have or None, whether they are passed by position: then
# they must come first, in this order, and what its source must read or None)
_TRITON_INTERNALS = (
    ("triton.runtime.driver.driver.set_active", None, False, None),
    ("triton.runtime.driver.driver._active", None, False, None),
    ("triton.knobs.compilation.scope", None, False, None),
    ("triton.knobs.compilation.always_compile", None, False, None),
    ("triton.knobs.nvidia.scope", None, False, None),
    ("triton.knobs.nvidia.dump_ptxas_log", None, False, None),
    ("triton.backends.compiler.GPUTarget", None, False, None),
    ("triton.compiler.make_backend", None, False, None),
    ("triton.backends.nvidia.compiler.CUDABackend.parse_options", ("self", "opts"), True, None),
    ("triton.backends.nvidia.compiler.CUDABackend.make_cubin",
     ("self", "src", "metadata", "opt", "capability"), True, None),
    ("triton.runtime.jit.JITFunction", None, False, None),
    ("triton.runtime.jit.KernelInterface.warmup", None, False, None),
    # The arguments reach the pruning through self.nargs, which only a launch sets.
    ("triton.runtime.autotuner.Autotuner.prune_configs", ("self", "kwargs"), True, "self.nargs"),
    ("triton.runtime.autotuner.Config.all_kwargs", None, False, None),
    ("triton.language.standard.cdiv", None, False, None),
)
_TORCH_INTERNALS = (
    ("torch.utils.cpp_extension._write_ninja_file_and_compile_objects",
     ("sources", "objects", "cflags", "post_cflags", "cuda_cflags", "cuda_post_cflags"), False, None),
    ("torch.utils.cpp_extension._join_cuda_home", None, False, None),
)
_checked: set[str] = set()


def _lookup(dotted: str):
    """The object at a dotted path: the longest importable module, then its attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
            break
        except ImportError:
            continue
    for part in parts[split:]:
        found = getattr(found, part)
    return found


def _check(package: str, internals) -> None:
    if package in _checked:
        return
    for dotted, parameters, positional, reads in internals:
        try:
            found = _lookup(dotted)
        except AttributeError:
            raise changed(package, f"{dotted} is gone") from None
        if parameters is not None:
            names = list(inspect.signature(found).parameters)
            if (names[:len(parameters)] != list(parameters) if positional
                    else not set(parameters) <= set(names)):
                raise changed(package, f"{dotted} takes ({', '.join(names)}), not ({', '.join(parameters)})")
        if reads is not None and reads not in inspect.getsource(found):
            raise changed(package, f"{dotted} no longer reads {reads}")
    _checked.add(package)


def check_triton() -> None:
    """Every Triton internal the audit uses is there (checked once per process)."""
    with without_interpreter():
        _check("triton", _TRITON_INTERNALS)


def check_torch() -> None:
    """Every torch internal the audit uses is there (checked once per process)."""
    quiet_cuda_home_notice()
    _check("torch", _TORCH_INTERNALS)


# ---------------------------------------------------------------------------- Triton


class TargetDriver:
    """Stands in for Triton's CUDA driver while compiling: it names the target GPU and
    nothing else. The device id is the arch, so each target keeps its own kernel cache."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def __getattr__(self, name: str):  # only for what the methods above do not provide
        raise changed("triton", f"Triton asked the active driver for {name!r}, which the audit's "
                                "stand-in driver (TargetDriver) does not provide")


@contextlib.contextmanager
def compiling_for(arch: int, fresh: bool = False):
    """Triton compiles for ``sm_<arch>`` (``fresh``: not from its disk cache) and prints
    ptxas's log."""
    check_triton()
    from triton import knobs
    from triton.runtime import driver

    previous = driver._active  # restored as it was (possibly unset), not re-created
    with without_interpreter(), knobs.compilation.scope(), knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = fresh
        driver.set_active(TargetDriver(arch))
        try:
            yield
        finally:
            driver._active = previous


@contextlib.contextmanager
def without_interpreter():
    """Import the kernels compiled, not interpreted: TRITON_INTERPRET is read when they are
    defined."""
    saved = os.environ.pop(INTERPRET_ENV_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[INTERPRET_ENV_VAR] = saved


def triton_imported_interpreted() -> bool:
    """Whether Triton built its own library (``tl.cdiv``, ...) as interpreted functions: it
    does when it is imported with TRITON_INTERPRET set, and nothing compiles after that."""
    check_triton()
    import triton.language.standard as triton_standard
    from triton.runtime.jit import JITFunction

    return not isinstance(triton_standard.cdiv, JITFunction)


def jit_function(kernel):
    """The ``@triton.jit`` function under autotune / heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    inner = kernel
    while not isinstance(inner, JITFunction):
        if not hasattr(inner, "fn"):
            raise changed("triton", f"{type(inner).__name__} no longer keeps the function it wraps in .fn")
        inner = inner.fn
    return inner


def under_autotuner(kernel):
    """What an autotuned kernel runs for each configuration (itself when not autotuned)."""
    from triton.runtime.autotuner import Autotuner

    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def autotune_candidates(kernel, args: tuple, kwargs: dict) -> list[dict]:
    """The configurations the autotuner may pick for these arguments (after its pruning,
    which sees the arguments as at a launch), as launch keyword arguments; [{}] for a
    kernel without autotuning."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [{}]
    for name in ("arg_names", "configs"):
        if not hasattr(kernel, name):
            raise changed("triton", f"Autotuner.{name} is gone")
    kernel.nargs = dict(zip(kernel.arg_names, args))
    try:
        configs = kernel.prune_configs(dict(kwargs))
    finally:
        kernel.nargs = None
    return [c.all_kwargs() for c in configs]


def rerun_ptxas(compiled, arch: int) -> tuple[bytes, str]:
    """(cubin, ptxas's log) of Triton's own last compile stage, run again on a compiled
    kernel's PTX with the kernel's options."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", arch, 32))
    options = backend.parse_options(dict(compiled.metadata._asdict()))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        cubin = backend.make_cubin(compiled.asm["ptx"], {}, options, arch)
    return cubin, log.getvalue()


def triton_tool(name: str) -> str:
    """A GPU tool shipped inside Triton's wheel (ptxas, cuobjdump)."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise AuditError(f"{name} not found at {path} (it ships with triton's NVIDIA backend)")
    return path


# ----------------------------------------------------------------------------- torch

_CUDA_HOME_NOTICE = "No CUDA runtime is found"


class _WithoutCudaHomeNotice(logging.Filter):
    """Drops the one record torch.utils.cpp_extension logs when imported on a machine
    without a GPU: the audit compiles with the toolkit on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CUDA_HOME_NOTICE)


def quiet_cuda_home_notice() -> None:
    """Silence "No CUDA runtime is found, using CUDA_HOME=..." (logged when
    torch.utils.cpp_extension is imported on a machine without a GPU) and nothing else
    it logs. Call before that import."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _WithoutCudaHomeNotice) for f in logger.filters):
        logger.addFilter(_WithoutCudaHomeNotice())


#: Marks the line of :data:`CAPTURE_BUILD`'s output that holds the captured command.
CAPTURED_MARK = "@@NVCC@@"

#: Runs setup.py's build_ext with torch's ninja step replaced by a recorder: prints the nvcc
#: command line of the real build (JSON after :data:`CAPTURED_MARK`), compiling nothing.
CAPTURE_BUILD = rf"""
import json, logging, runpy, sys, tempfile
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not str(record.msg).startswith({_CUDA_HOME_NOTICE!r}))
import torch.utils.cpp_extension as ext
class Captured(Exception):
    pass
def record(sources, objects, cflags, post_cflags, cuda_cflags, cuda_post_cflags, *args, **kwargs):
    print({CAPTURED_MARK!r} + json.dumps(dict(sources=sources, cuda_cflags=cuda_cflags,
          cuda_post_cflags=cuda_post_cflags, nvcc=ext._join_cuda_home("bin", "nvcc"))))
    raise Captured()
ext._write_ninja_file_and_compile_objects = record
tmp = tempfile.mkdtemp()
sys.argv = ["setup.py", "-q", "build_ext", "--build-temp", tmp, "--build-lib", tmp]
try:
    runpy.run_path("setup.py", run_name="__main__")
except Captured:
    pass
"""
