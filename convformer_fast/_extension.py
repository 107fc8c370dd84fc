"""Loads the compiled extension convformer_fast._C, or records why it could not be loaded.

The package always imports; backends that need the extension report it unavailable.
"""

from __future__ import annotations

import os

REBUILD_COMMAND = "pip install --no-build-isolation -e ."


def _load() -> str | None:
    if os.environ.get("CONVFORMER_FAST_DISABLE_EXTENSION") == "1":
        return "convformer_fast._C disabled by CONVFORMER_FAST_DISABLE_EXTENSION=1"
    try:
        from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
    except ImportError as error:
        text = str(error)
        if "undefined symbol" in text or "version" in text.lower():
            return (
                f"convformer_fast._C does not match the installed torch ({text}); it was built "
                f"against another torch version: rebuild it with `{REBUILD_COMMAND}`"
            )
        return f"convformer_fast._C is not built ({text}); build it with `{REBUILD_COMMAND}`"
    except OSError as error:
        return f"convformer_fast._C failed to load ({error}); rebuild it with `{REBUILD_COMMAND}`"
    return None


EXTENSION_ERROR: str | None = _load()


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None
