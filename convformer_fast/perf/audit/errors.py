"""The audit's one exception type."""

from ...errors import UserError


class AuditError(UserError):
    """The audit cannot run as asked (bad argument, missing tool, changed torch or Triton
    internals): one line for the user; ``convformer-fast kernels`` exits with 2."""
