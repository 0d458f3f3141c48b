"""The client side of every hop: channels, deadline-bound calls, domain errors, health waits.

Per-service ``clients`` modules build their stubs on :func:`open_channel` and make every call
through :func:`call` (unary) or :func:`stream` (server streaming), which set a deadline and turn
``grpc.aio.AioRpcError`` into the domain error the server raised (see :mod:`vgpusim.common.rpc`).
:func:`wait_for_serving` waits for a peer's health to say SERVING; :func:`list_services` is the
``grpcurl list`` of this project.

Glossary:
- target: ``unix:/abs/path`` (or a bare ``/abs/path``) for a local service, ``host:port`` for TCP.
- peer: a human name for the other end (``vgpu_bus``), used in error messages and metadata.
- deadline: every call has one; a server passing work on uses :func:`remaining_timeout` so the
  downstream call ends no later than its own caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from vgpusim.common.errors import NotSupported, TimedOut
from vgpusim.common.paths import check_socket_path
from vgpusim.common.rpc import CHANNEL_OPTIONS, error_from_rpc_error

__all__ = [
    "DEFAULT_TIMEOUT",
    "TlsConfig",
    "call",
    "check_health",
    "list_services",
    "normalize_target",
    "open_channel",
    "remaining_timeout",
    "stream",
    "translate_errors",
    "wait_for_serving",
]

DEFAULT_TIMEOUT = 10.0
_RETRY_PAUSE_S = 0.05


@dataclass(frozen=True)
class TlsConfig:
    """Client TLS: the CA to trust, and a certificate + key for mTLS (PEM bytes)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str = ""  # expected name in the server certificate, if not the target's host

    @classmethod
    def from_files(
        cls, ca: str | Path = "", cert: str | Path = "", key: str | Path = "", *, server_name: str = ""
    ) -> TlsConfig:
        """Read the PEM files (empty path = not given)."""

        def read(path: str | Path) -> bytes | None:
            return Path(path).read_bytes() if str(path) else None

        return cls(read(ca), read(cert), read(key), server_name)


def normalize_target(target: str | os.PathLike[str]) -> str:
    """``unix:<path>`` for a filesystem path, else ``target`` unchanged; socket length checked."""
    text = os.fspath(target)
    if text.startswith("/"):
        text = f"unix:{text}"
    if text.startswith("unix:"):
        check_socket_path(text.removeprefix("unix:").removeprefix("//"))
    return text


def open_channel(
    target: str | os.PathLike[str],
    *,
    tls: TlsConfig | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target`` with the shared options (64 MiB messages, keepalive).

    Call it inside the running event loop; close it with ``await channel.close()`` or use it as
    an async context manager.  ``options`` are added after (and so override) the defaults.
    """
    opts = [*CHANNEL_OPTIONS, *options]
    text = normalize_target(target)
    if tls is None:
        return grpc.aio.insecure_channel(text, options=opts)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    creds = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
    return grpc.aio.secure_channel(text, creds, options=opts)


@contextlib.contextmanager
def translate_errors(peer: str = "") -> Iterator[None]:
    """Turn ``AioRpcError`` raised inside the block into the domain error."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc_error(exc, peer=peer) from None


def remaining_timeout(context: Any, default: float = DEFAULT_TIMEOUT) -> float:
    """The timeout for a downstream call made while serving ``context``: its remaining time,
    capped at ``default`` (``default`` when the caller set no deadline)."""
    left = context.time_remaining()
    return default if left is None else min(float(left), default)


def _check_timeout(timeout: float, peer: str) -> None:
    if timeout <= 0:
        raise TimedOut(f"no time left for the call to {peer or 'peer'}", metadata={"peer": peer})


async def call(
    method: grpc.aio.UnaryUnaryMultiCallable,
    request: Any,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    metadata: Mapping[str, str] | None = None,
    peer: str = "",
    wait_for_ready: bool | None = None,
) -> Any:
    """``await method(request)`` with a deadline ``timeout`` seconds away.

    Raises the domain error the server sent (class from the status code, reason and metadata
    from its ErrorInfo); :class:`~vgpusim.common.errors.Unavailable` naming ``peer`` when it is
    down; :class:`~vgpusim.common.errors.TimedOut` when the deadline passes or ``timeout <= 0``.
    """
    _check_timeout(timeout, peer)
    md = tuple(metadata.items()) if metadata else None
    with translate_errors(peer):
        return await method(request, timeout=timeout, metadata=md, wait_for_ready=wait_for_ready)


async def stream(
    method: grpc.aio.UnaryStreamMultiCallable,
    request: Any,
    *,
    timeout: float | None,
    metadata: Mapping[str, str] | None = None,
    peer: str = "",
) -> AsyncGenerator[Any, None]:
    """Iterate a server-streaming call, translating errors like :func:`call`.

    ``timeout=None`` is allowed here, and only here, for streams meant to last (watches, keep-alive
    streams).  The call is cancelled when the generator is closed: a caller that may stop early
    wraps it in ``contextlib.aclosing``.
    """
    if timeout is not None:
        _check_timeout(timeout, peer)
    md = tuple(metadata.items()) if metadata else None
    rpc = method(request, timeout=timeout, metadata=md)
    try:
        with translate_errors(peer):
            async for item in rpc:
                yield item
    finally:
        rpc.cancel()


async def wait_for_serving(channel: grpc.aio.Channel, service: str = "", *, timeout: float) -> None:
    """Return once ``service`` ("" = the whole server) reports SERVING on ``channel``.

    Watches ``grpc.health.v1.Health`` (waiting for the server's socket to appear); a connection
    lost meanwhile is retried.  Raises TimedOut after ``timeout`` seconds, naming the last status
    seen, and NotSupported if the server has no health service.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "NO_ANSWER"
    while (left := deadline - time.monotonic()) > 0:
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=left, wait_for_ready=True)
        try:
            async for answer in watch:
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise NotSupported("the server has no health service", reason="NO_HEALTH_SERVICE") from None
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                break
        finally:
            watch.cancel()
        await asyncio.sleep(min(_RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
    raise TimedOut(
        f"{service or 'server'} not SERVING after {timeout:g} s (last status {last})",
        reason="NOT_SERVING",
        metadata={"service": service, "last_status": last},
    )


async def check_health(
    channel: grpc.aio.Channel, service: str = "", *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """One ``Health.Check``: ``SERVING``, ``NOT_SERVING``... (domain error if unreachable/unknown)."""
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def list_services(channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, ...]:
    """The full names of the services a server offers, sorted (asks server reflection)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: list[str] = []
    with translate_errors():
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=timeout):
            names.extend(s.name for s in answer.list_services_response.service)
    return tuple(sorted(names))
