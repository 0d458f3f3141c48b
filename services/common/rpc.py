"""Domain errors on the wire: the servicer decorator, the status builders and the way back.

Servicers wrap every RPC method in :func:`rpc_method`.  A :class:`~vgpusim.common.errors.VgpusimError`
raised by the core ends the RPC with a rich status: the error's gRPC code, its message, and one
``google.rpc.ErrorInfo`` detail (``reason``, ``domain="vgpusim.local"``, ``metadata``), carried in
the ``grpc-status-details-bin`` trailer.  Any other exception is logged with its traceback and
sent as INTERNAL with reason ``INTERNAL``: UNKNOWN never reaches the wire.  The client side
(:func:`error_from_rpc_error`, used by :mod:`vgpusim.common.clients`) rebuilds the same domain class.

Also here: the channel and server options both ends share (message size, keepalive), so that a
client never pings faster than the server allows.

Glossary:
- rich status: ``google.rpc.Status`` = code + message + details (``Any``-packed messages).
- ErrorInfo: the detail naming the failure: ``reason`` (UPPER_SNAKE_CASE), ``domain``, ``metadata``.
- AbortError: what ``context.abort*`` raises inside a grpc.aio handler; it must pass through.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar, overload

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vgpusim.common.errors import ERROR_DOMAIN, Unavailable, VgpusimError, error_class_for

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "SERVER_OPTIONS",
    "STATUS_DETAILS_KEY",
    "error_from_rpc_error",
    "error_from_status",
    "error_info_of",
    "grpc_status_for",
    "internal_status",
    "rich_status",
    "rpc_method",
    "status_for",
]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Keepalive: clients ping an idle connection every 30 s (detecting a dead peer within ~40 s); the
# server allows pings down to every 10 s, so a client is never sent GOAWAY "too_many_pings".
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarting peer on a local socket comes back in well under a second: retry quickly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.so_reuseport", 0),
)


def rich_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """A ``google.rpc.Status`` with one ErrorInfo detail in :data:`ERROR_DOMAIN`."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=dict(metadata or {}))
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def status_for(error: VgpusimError) -> status_pb2.Status:
    """The rich status that carries ``error`` to a client."""
    return rich_status(type(error).code, error.message, error.reason, error.metadata)


def internal_status(exc: BaseException, where: str) -> status_pb2.Status:
    """INTERNAL (reason ``INTERNAL``) for an unexpected exception ``exc`` raised in ``where``."""
    return rich_status(
        grpc.StatusCode.INTERNAL,
        f"internal error in {where}: {type(exc).__name__}: {exc}",
        "INTERNAL",
        {"errno": "EIO", "exception": type(exc).__name__},
    )


def grpc_status_for(status: status_pb2.Status) -> grpc.Status:
    """The ``grpc.Status`` for ``context.abort_with_status`` (code, message, details trailer)."""
    return rpc_status.to_status(status)


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The first ErrorInfo detail of ``status``, or None."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    *,
    peer: str = "",
) -> VgpusimError:
    """Rebuild the domain error a server sent (``status`` is the trailer's rich status, if any).

    Without a vgpusim ErrorInfo (a transport failure, a foreign server) the class still follows
    the code; UNAVAILABLE becomes :class:`Unavailable` naming ``peer``.
    """
    info = error_info_of(status) if status is not None else None
    if info is None or info.domain != ERROR_DOMAIN:
        meta = {"grpc_code": code.name}
        if peer:
            meta["peer"] = peer
        if code is grpc.StatusCode.UNAVAILABLE:
            where = f"{peer} is unavailable" if peer else "peer unavailable"
            return Unavailable(f"{where}: {message}", metadata=meta)
        cls = error_class_for(code)
        prefix = f"{peer}: " if peer else ""
        return cls(f"{prefix}{message or code.name}", reason=cls.default_reason, metadata=meta)
    cls = error_class_for(code, info.reason)
    meta = dict(info.metadata)
    errno_value = getattr(_errno, meta.get("errno", ""), None)
    try:
        return cls(message, reason=info.reason, errno=errno_value, metadata=meta)
    except ValueError:  # a malformed reason from a misbehaving server
        return cls(message, errno=errno_value, metadata=meta)


def error_from_rpc_error(exc: grpc.aio.AioRpcError, *, peer: str = "") -> VgpusimError:
    """The domain error for a failed call (reads the ``grpc-status-details-bin`` trailer)."""
    status: status_pb2.Status | None = None
    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            break
    return error_from_status(exc.code(), exc.details() or "", status, peer=peer)


async def _abort_for(exc: Exception, context: Any, where: str) -> None:
    """Abort the RPC for ``exc`` (always raises AbortError)."""
    if isinstance(exc, VgpusimError):
        _log.debug("rpc failed", extra={"rpc": where, "reason": exc.reason, "error": exc.message})
        status = status_for(exc)
    else:
        _log.error("unexpected exception in %s", where, exc_info=exc, extra={"rpc": where})
        status = internal_status(exc, where)
    await context.abort_with_status(grpc_status_for(status))


@overload
def rpc_method(fn: Callable[P, AsyncIterator[Y]]) -> Callable[P, AsyncIterator[Y]]: ...
@overload
def rpc_method(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...
def rpc_method(fn: Callable[P, Any]) -> Callable[P, Any]:
    """Decorate an async servicer method ``(self, request_or_iterator, context)``.

    Works for coroutine methods (unary and client-streaming responses, or ``context.write``
    streaming) and for async-generator methods (server and bidi streaming).  Domain errors become
    their rich status, anything else INTERNAL with the traceback logged; ``AbortError`` (from
    ``context.abort``) and cancellation pass through untouched.  The context must be the last
    positional argument.
    """
    where = fn.__qualname__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(fn(*args, **kwargs)) as items:
                    async for item in items:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, args[-1], where)

        return stream_wrapper
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def unary_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await fn(*args, **kwargs)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, args[-1], where)

        return unary_wrapper
    raise TypeError(f"rpc_method needs an async def or async generator, got {fn!r}")
