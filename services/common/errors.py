"""The one domain error hierarchy of vgpusim, and its mapping to gRPC status codes.

Every service core raises these (never grpc errors); servicers and clients translate them through the
single table :data:`GRPC_CODE` here.  Each class is named after the errno it models, carries a machine
readable ``reason`` (UPPER_SNAKE_CASE, sent as ``google.rpc.ErrorInfo.reason``) and string ``metadata``
(sent as ``ErrorInfo.metadata``), so a client can act on what went wrong without parsing English.

Glossary:
- reason: stable identifier of the failure, e.g. ``UUID_IN_USE`` or ``APERTURE_EXHAUSTED``.
- errno: the Linux errno the kernel would return in the same situation (``metadata["errno"]``).
- domain: ``ErrorInfo.domain``, always :data:`ERROR_DOMAIN`.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Mapping
from typing import ClassVar

import grpc

ERROR_DOMAIN = "vgpusim.local"
_REASON_RE = re.compile(r"^[A-Z][A-Z0-9_]+[A-Z0-9]$")


class VgpusimError(Exception):
    """Base of every error a vgpusim core raises on purpose.

    ``message`` is for humans; ``reason`` and ``metadata`` are for programs.  Subclasses fix the
    gRPC code and the default errno.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_errno: ClassVar[int] = _errno.EIO
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        errno: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if not _REASON_RE.match(self.reason) or len(self.reason) > 63:
            raise ValueError(f"malformed error reason {self.reason!r}")
        self.errno = self.default_errno if errno is None else errno
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.metadata.setdefault("errno", _errno.errorcode.get(self.errno, str(self.errno)))

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, metadata={self.metadata!r})"


class InvalidArgument(VgpusimError):
    """EINVAL: the request itself is malformed (bad UUID, misaligned IOVA, unknown enum...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_errno = _errno.EINVAL
    default_reason = "INVALID_ARGUMENT"


class TooBig(InvalidArgument):
    """E2BIG: a count or size above a fixed limit (e.g. more than 512 pages in one pin)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_errno = _errno.E2BIG
    default_reason = "TOO_BIG"


class NotFound(VgpusimError):
    """ENOENT/ENODEV: the named object (parent, type, device, container, VM) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_errno = _errno.ENODEV
    default_reason = "NOT_FOUND"


class AlreadyExists(VgpusimError):
    """EEXIST: the object exists already (UUID in use, overlapping mapping)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_errno = _errno.EEXIST
    default_reason = "ALREADY_EXISTS"


class Busy(VgpusimError):
    """EBUSY/EAGAIN: the object is in use or a conflicting operation is in flight; retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    default_errno = _errno.EBUSY
    default_reason = "BUSY"


class WrongState(VgpusimError):
    """The object is not in a state that allows the operation (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_errno = _errno.EINVAL
    default_reason = "WRONG_STATE"


class Exhausted(VgpusimError):
    """ENOSPC/ENOMEM: a resource ran out; ``reason`` names which (e.g. ``APERTURE_EXHAUSTED``)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_errno = _errno.ENOSPC
    default_reason = "RESOURCE_EXHAUSTED"


class PermissionDenied(VgpusimError):
    """EPERM/EACCES: the caller may not do this (prot mismatch, not the owner)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_errno = _errno.EPERM
    default_reason = "PERMISSION_DENIED"


class NotSupported(VgpusimError):
    """ENOTTY/EOPNOTSUPP: the operation exists but this object does not implement it."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_errno = _errno.ENOTTY
    default_reason = "NOT_SUPPORTED"


class Unavailable(VgpusimError):
    """A peer service is down or restarting; retryable."""

    code = grpc.StatusCode.UNAVAILABLE
    default_errno = _errno.EAGAIN
    default_reason = "PEER_UNAVAILABLE"


class TimedOut(VgpusimError):
    """ETIMEDOUT: a bounded wait expired (a peer that does not release, a deadline)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_errno = _errno.ETIMEDOUT
    default_reason = "TIMED_OUT"


class Aborted(VgpusimError):
    """A concurrent modification won the race; the caller may retry the whole operation."""

    code = grpc.StatusCode.ABORTED
    default_errno = _errno.EAGAIN
    default_reason = "ABORTED"


# The single table from gRPC code back to domain class (used by clients to rebuild errors).
_BY_CODE: dict[grpc.StatusCode, type[VgpusimError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: TooBig,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: WrongState,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: NotSupported,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: TimedOut,
    grpc.StatusCode.ABORTED: Aborted,
}

ALL_ERRORS: tuple[type[VgpusimError], ...] = (
    InvalidArgument,
    TooBig,
    NotFound,
    AlreadyExists,
    Busy,
    WrongState,
    Exhausted,
    PermissionDenied,
    NotSupported,
    Unavailable,
    TimedOut,
    Aborted,
)


def error_class_for(code: grpc.StatusCode, reason: str | None = None) -> type[VgpusimError]:
    """The domain class a client raises for a status ``code`` (``Busy`` when the reason says so)."""
    if code is grpc.StatusCode.UNAVAILABLE and reason and reason != Unavailable.default_reason:
        return Busy
    return _BY_CODE.get(code, VgpusimError)
