"""The errors a user can fix, as one family.

``convformer-fast`` prints any :class:`UserError` as one line
(``convformer-fast <command>: error: <message>``) with exit code 2, and lets every other
exception through with its traceback (exit code 1): that is a bug. So raise a subclass of
:class:`UserError` for bad arguments, missing or damaged files, unwritable outputs and
unavailable backends or devices, with a message that names what was given and what was
expected, and nothing else. Each family member is a ``ValueError``, as before the family
existed, so ``except ValueError`` in library code keeps working.

The members: :class:`UsageError` (a command-line argument),
:class:`InputError` (input data that cannot be used),
:class:`OutputError` (a file that cannot be written), and those that live with their
readers: ``pose.data.formats.DatasetFormatError``, ``pose.checkpoint.CheckpointError``,
``perf.audit.AuditError``.
"""

from __future__ import annotations

__all__ = ["UserError", "UsageError", "InputError", "OutputError"]


class UserError(ValueError):
    """Something the user can fix; printed as one line, exit code 2."""


class UsageError(UserError):
    """A bad command-line argument (or combination of arguments)."""


class InputError(UserError):
    """Input data (keypoints, a video's metadata, ...) that cannot be used as given."""


class OutputError(UserError):
    """An output file cannot be written (no permission, no space, a folder in the way)."""
