"""Errors that engines raise and servers map to gRPC status codes.

Engines stay free of gRPC: they raise these, and `services.common.runtime` turns each into its
status code with a `google.rpc.Status` (ErrorInfo carrying `reason`) in the standard
`grpc-status-details-bin` trailer, so a client never sees a bare UNKNOWN, and
`services.common.client` rebuilds the same exception on the calling side.
"""

from __future__ import annotations

from collections.abc import Callable


class GFlowError(Exception):
    """Base class. `reason` is a short machine-readable code (UPPER_SNAKE_CASE)."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidArgumentError(GFlowError):
    """Bad input. Always name the offending field and how to fix it. `field` and `description`
    travel apart (a BadRequest field violation) so a remote caller gets both back."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str | None = None):
        super().__init__(f"{field}: {message}", reason=reason)
        self.field = field
        self.description = message


class NotFoundError(GFlowError):
    """An artifact or resource that was referenced does not exist."""

    reason = "NOT_FOUND"


class ResourceExhaustedError(GFlowError):
    """A worker is full or a request exceeds a limit (memory, size, concurrency)."""

    reason = "RESOURCE_EXHAUSTED"


class UnavailableError(GFlowError):
    """A dependency (object store, GPU) is down or unreachable."""

    reason = "UNAVAILABLE"


class FailedPreconditionError(GFlowError):
    """A missing model, weights file or optional package. Say what to install or where."""

    reason = "FAILED_PRECONDITION"


class IntegrityError(GFlowError):
    """Stored bytes do not match their recorded checksum, or a codec header disagrees."""

    reason = "DATA_LOSS"


class CancelledError(GFlowError):
    """The caller went away; long work stops at its next progress report."""

    reason = "CANCELLED"


class DeadlineError(GFlowError):
    """The caller's deadline passed before the work finished."""

    reason = "DEADLINE_EXCEEDED"


# (done, total, message): how engines report progress on long work.
ProgressFn = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """Default progress sink for engines called without one."""
