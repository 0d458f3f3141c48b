"""A tiny test service for the shared runtime's tests (no protos: raw bytes in and out).

Service ``vgpusim.test.v1.EchoService`` registered with ``grpc.method_handlers_generic_handler``
and identity (de)serializers; every method is wrapped by ``@rpc_method`` like a real servicer:

- ``Echo`` (unary): returns the request.
- ``Fail`` (unary): request ``b"<ErrorClass>"`` raises that domain error, reason ``TEST_<CLASS>``
  and metadata ``{"thing": "42"}``.
- ``Boom`` (unary): raises RuntimeError (an unexpected exception).
- ``Abort`` (unary): calls ``context.abort(NOT_FOUND)`` itself.
- ``Hang`` (unary): waits forever (for deadline tests).
- ``Count`` (server stream): request ``b"N"`` yields ``b"0"``..``b"N-1"``, then ``b"N:<Class>"``
  variants raise that error after the items.
- ``Sum`` (client stream) and ``Chat`` (bidi stream): lengths / echoes.
- ``Write`` (server stream, ``context.write`` style): writes the request three times.

Run as a script it serves this service with :func:`vgpusim.common.server.serve`, for the
multi-process tests: ``python echo_app.py --state-dir DIR [--block-ready]``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from vgpusim.common import errors
from vgpusim.common.config import BaseServiceConfig, load_config, option
from vgpusim.common.rpc import rpc_method
from vgpusim.common.server import run_service, serve

SERVICE = "vgpusim.test.v1.EchoService"


def method(name: str) -> str:
    """The full method path of ``name``."""
    return f"/{SERVICE}/{name}"


def _error(name: str) -> errors.VgpusimError:
    cls: type[errors.VgpusimError] = getattr(errors, name)
    return cls(f"{name} raised on purpose", reason=f"TEST_{name.upper()}", metadata={"thing": "42"})


@rpc_method
async def echo(request: bytes, context: Any) -> bytes:
    return request


@rpc_method
async def fail(request: bytes, context: Any) -> bytes:
    raise _error(request.decode())


@rpc_method
async def boom(request: bytes, context: Any) -> bytes:
    raise RuntimeError("kaboom")


@rpc_method
async def abort(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "aborted by hand")
    raise AssertionError("abort returned")


hang_ended: asyncio.Event | None = None  # set (if a test put one here) when a Hang call ends


@rpc_method
async def hang(request: bytes, context: Any) -> bytes:
    try:
        await asyncio.Event().wait()
    finally:
        if hang_ended is not None:
            hang_ended.set()
    return b""


@rpc_method
async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    text, _, error = request.decode().partition(":")
    for i in range(int(text)):
        yield str(i).encode()
    if error:
        raise _error(error)


@rpc_method
async def total(requests: AsyncIterator[bytes], context: Any) -> bytes:
    size = 0
    async for message in requests:
        size += len(message)
    return str(size).encode()


@rpc_method
async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message.upper()


@rpc_method
async def write(request: bytes, context: Any) -> None:
    for _ in range(3):
        await context.write(request)


def add_echo(server: Any) -> Sequence[str]:
    """Register the echo service on ``server``; return its name."""

    def ident(data: bytes) -> bytes:
        return data

    kw = {"request_deserializer": ident, "response_serializer": ident}
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, **kw),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **kw),
        "Boom": grpc.unary_unary_rpc_method_handler(boom, **kw),
        "Abort": grpc.unary_unary_rpc_method_handler(abort, **kw),
        "Hang": grpc.unary_unary_rpc_method_handler(hang, **kw),
        "Count": grpc.unary_stream_rpc_method_handler(count, **kw),
        "Sum": grpc.stream_unary_rpc_method_handler(total, **kw),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, **kw),
        "Write": grpc.unary_stream_rpc_method_handler(write, **kw),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    return [SERVICE]


@dataclass(frozen=True, kw_only=True)
class EchoConfig(BaseServiceConfig):
    """Config of the echo test service."""

    block_ready: bool = option(False, "never become ready (tests SIGTERM during start-up)")


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(EchoConfig, "echo", argv)

    async def ready() -> None:
        if config.block_ready:
            await asyncio.Event().wait()

    registry = CollectorRegistry()
    return run_service(
        serve(name="echo", config=config, add_services=add_echo, registry=registry, ready=ready)
    )


if __name__ == "__main__":
    sys.exit(main())
