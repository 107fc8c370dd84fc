"""Loads the compiled extension convformer_fast._C, or records why it could not be loaded.

The package always imports; backends that need the extension report it unavailable, and
``"auto"`` falls back to the ``torch`` backend with one warning carrying the reason. A
``_C`` that is present but unusable is told apart from one that was never built, because
the remedy differs in what the user must know:

* built against another torch (C++ symbols it links to are gone): rebuild;
* damaged, or built for another platform or Python: rebuild;
* built from older sources (an op this Python code calls is not registered): rebuild; that
  check needs the op registry, so :data:`convformer_fast.ops.EXTENSION_ERROR` makes it on
  top of :data:`LOAD_ERROR`.

A shared library cut short (an interrupted build or copy) is checked before it is loaded:
the dynamic loader maps pages past the end of such a file and the process dies of SIGBUS,
which no ``except`` can catch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import struct

import torch

REBUILD_COMMAND = "pip install --no-build-isolation -e ."
DISABLE_ENV_VAR = "CONVFORMER_FAST_DISABLE_EXTENSION"


def _elf_truncation(path: str) -> str | None:
    """How an ELF shared library is cut short (its tables or a loadable segment run past the
    end of the file), or None if it is whole or not ELF (other formats fail cleanly)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = handle.read(64)
            if header[:4] != b"\x7fELF":
                return None
            wide, order = header[4] == 2, "<" if header[5] == 1 else ">"
            if len(header) < (64 if wide else 52):
                return f"{size} bytes, shorter than an ELF header"
            # e_phoff, e_shoff, (e_flags, e_ehsize), e_phentsize, e_phnum, e_shentsize, e_shnum
            ph_offset, sh_offset, ph_size, ph_count, sh_size, sh_count = struct.unpack_from(
                order + ("QQ6xHHHH" if wide else "II6xHHHH"), header, 32 if wide else 28)
            if ph_offset + ph_size * ph_count > size or sh_offset + sh_size * sh_count > size:
                return f"{size} bytes, its ELF tables end past the end of the file"
            handle.seek(ph_offset)
            table = handle.read(ph_size * ph_count)
        for i in range(ph_count):  # p_type, p_offset, p_filesz of each program header
            kind, offset, file_size = struct.unpack_from(order + ("I4xQ16xQ" if wide else "II8xI"),
                                                         table, i * ph_size)
            if kind == 1 and offset + file_size > size:  # PT_LOAD
                return f"{size} bytes, a loadable segment ends at byte {offset + file_size}"
    except (OSError, struct.error) as error:
        return f"unreadable ELF header ({error})"
    return None


def _load() -> str | None:
    if os.environ.get(DISABLE_ENV_VAR) == "1":
        return f"convformer_fast._C disabled by {DISABLE_ENV_VAR}=1"
    module = f"{__package__}._C"
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin and spec.origin.endswith((".so", ".pyd")):
        truncation = _elf_truncation(spec.origin)
        if truncation:
            return (f"convformer_fast._C is damaged ({spec.origin}: {truncation}); rebuild it with "
                    f"`{REBUILD_COMMAND}`")
    try:
        importlib.import_module(module)  # importing runs the TORCH_LIBRARY registrations
    except ModuleNotFoundError as error:
        if error.name != module:  # _C was found, but something it imports was not
            return f"convformer_fast._C failed to load ({error}); rebuild it with `{REBUILD_COMMAND}`"
        return f"convformer_fast._C is not built; build it with `{REBUILD_COMMAND}`"
    except ImportError as error:  # found, but the dynamic loader refused it
        if "undefined symbol" in str(error):
            return (f"convformer_fast._C was built against another torch than the imported "
                    f"torch {torch.__version__} ({error}); rebuild it with `{REBUILD_COMMAND}`")
        return f"convformer_fast._C failed to load ({error}); rebuild it with `{REBUILD_COMMAND}`"
    except OSError as error:
        return f"convformer_fast._C failed to load ({error}); rebuild it with `{REBUILD_COMMAND}`"
    return None


#: Why convformer_fast._C could not be loaded, or None once it is.
LOAD_ERROR: str | None = _load()
