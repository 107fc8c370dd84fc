"""Every file the package writes goes through :func:`atomic_write` or :func:`atomic_open`
(or :func:`write_text` / :func:`write_json`): the content is written to
a temporary file in the destination's folder, flushed to disk, then renamed over the
destination. A run that fails or is killed at any moment leaves either the old file or the
complete new one, never a truncated file, and an old good file is never clobbered by a
failed write. (``os.replace`` is atomic within one file system, hence the same folder.)
Ctrl-C during a write takes effect when the write is done. A process killed outright
(SIGKILL, power loss) may leave its hidden temporary file (``.<name>.tmp-<pid>-<hex>``)
behind; nothing reads it.

Not covered: TensorBoard event files, which the ``tensorboard`` package appends to as a
stream (a half-written last record is skipped by its reader).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
from typing import IO, Any, Callable, Iterator

from .errors import OutputError

__all__ = ["atomic_write", "atomic_open", "check_writable", "make_folder", "write_text", "write_json", "temporary_name"]


def temporary_name(path: str) -> str:
    """A hidden, unique sibling of ``path`` with the same extension (writers such as
    ``savefig`` and ``animation.save`` choose the format by the extension)."""
    folder, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt: a write is
    finished rather than abandoned half-way (some writers, torch.save among them, fail with
    their own error when interrupted inside). Only in the main thread, and only where
    Python's default handler is installed."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _replacing(path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on a clean exit, sync it and rename it over
    ``path``; on any exception remove it. Ctrl-C waits for the end of the write."""
    with _interrupts_deferred():
        with _replacing_now(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _replacing_now(path) -> Iterator[str]:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory, expected a file path to write")
    make_folder(folder, f"{path}: cannot create its folder")
    tmp = temporary_name(path)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as handle:  # the data reaches the disk before the rename
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from exc
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _sync_folder(folder)


def check_writable(path, option: str) -> None:
    """Fail before the work rather than after it: ``path`` must not be a folder, and its
    folder (or, when that does not exist yet, the nearest one above it) must be writable."""
    if path is None:
        return
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is a directory, expected a file path to write")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot be written ({folder} is not a writable folder)")


def make_folder(folder, what: str = "") -> str:
    """``os.makedirs(folder, exist_ok=True)``; an OutputError naming it when that fails."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what or 'cannot create the folder'} {folder} ({exc.strerror or exc})") from exc
    return folder


def atomic_write(path, write: Callable[[str], Any], defer_interrupts: bool = True) -> str:
    """Call ``write(temporary path)``, then move the result to ``path`` in one step.

    For writers that take a file name (``torch.save``, ``savefig``, ``animation.save``);
    :func:`atomic_open` gives a file object instead. ``defer_interrupts=False`` for a
    ``write`` that computes for long (an export's compile): Ctrl-C then stops it at once,
    and the temporary file is removed.

    Returns:
        ``path`` (as a string).

    Raises:
        OutputError: the folder cannot be created or the file cannot be written or renamed
            (permissions, no space, a folder of that name); the message names ``path``.
        Anything ``write`` raises otherwise; the temporary file is removed either way.
    """
    with (_replacing if defer_interrupts else _replacing_now)(path) as tmp:
        write(tmp)
    return os.fspath(path)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """``with atomic_open(path) as handle:`` a file object whose content replaces ``path``
    when the block ends without an exception (and never otherwise). ``mode`` is ``"wb"``
    or ``"w"``; a writer given a file object never renames it (``np.save`` appends no
    ``.npy``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: got {mode!r}, expected 'w' or 'wb'")
    with _replacing(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return os.fspath(path)


def write_json(path, data, **dump_kwargs) -> str:
    """Write ``data`` as indented JSON atomically (``default=str`` for other objects)."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("default", str)
    return write_text(path, json.dumps(data, **dump_kwargs) + "\n")
