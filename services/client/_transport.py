"""Where the client connects and how one call crosses the wire: targets, deadlines, error translation.

Every typed client (:mod:`.bus`, :mod:`.iommu`, :mod:`.gfx`, :mod:`.frontend`) sits on one
:class:`ServiceClient`, which owns the service's target and default deadline and runs calls
through the shared runtime (:func:`vgpusim.common.clients.call`), so that a failed call raises the
same :mod:`vgpusim.common.errors` class the server raised.  Streams are iterated here too and
translated the same way.

Glossary:
- service: one of :data:`SERVICES` (``iommu_type2``, ``vgpu_bus``, ``gfx_host``, ``qemu_frontend``);
  the short aliases of :data:`ALIASES` (``iommu``, ``bus``, ``gfx``, ``frontend``) name them too.
- target: a gRPC address: ``unix:<path>`` (the default, ``<state>/run/<svc>.sock``), or a TCP
  ``host:port``.  A bare absolute path is taken as ``unix:<path>``.
- deadline: the per-call timeout in seconds; every unary call has one (the client's default unless
  the call passes ``timeout=``).  Streams have none unless asked, since they are meant to last.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message

from vgpusim.common import clients as runtime
from vgpusim.common.clients import open_channel, translate_errors
from vgpusim.common.errors import InvalidArgument
from vgpusim.common.paths import StackPaths, resolve_state_dir

__all__ = [
    "ALIASES",
    "DEFAULT_TIMEOUT",
    "SERVICES",
    "ServiceClient",
    "canonical_service",
    "normalize_target",
    "open_channel",
    "parse_target_override",
    "resolve_targets",
    "translate_errors",
    "with_timeout_ms",
]

SERVICES: tuple[str, ...] = ("iommu_type2", "vgpu_bus", "gfx_host", "qemu_frontend")
ALIASES: Mapping[str, str] = {
    "iommu": "iommu_type2",
    "bus": "vgpu_bus",
    "gfx": "gfx_host",
    "frontend": "qemu_frontend",
}
DEFAULT_TIMEOUT = 10.0

R = TypeVar("R", bound=Message)


def canonical_service(name: str) -> str:
    """The service ``name`` (or its alias) denotes; InvalidArgument (``UNKNOWN_SERVICE``) otherwise."""
    svc = ALIASES.get(name, name)
    if svc not in SERVICES:
        raise InvalidArgument(
            f"unknown service {name!r}: expected one of {', '.join(SERVICES)} (or {', '.join(ALIASES)})",
            reason="UNKNOWN_SERVICE",
            metadata={"service": name},
        )
    return svc


def normalize_target(address: str) -> str:
    """A gRPC target for ``address``: ``unix:`` paths and ``host:port`` as given, bare paths as unix."""
    address = address.strip()
    if not address:
        raise InvalidArgument("empty target address", reason="BAD_TARGET")
    return runtime.normalize_target(address)


def parse_target_override(text: str) -> tuple[str, str]:
    """``SVC=ADDR`` (as given to ``--target``) -> ``(service, target)``."""
    name, sep, address = text.partition("=")
    if not sep or not name:
        raise InvalidArgument(
            f"bad target {text!r}: expected SVC=ADDR, e.g. vgpu_bus=unix:/run/bus.sock or bus=host:50051",
            reason="BAD_TARGET",
            metadata={"target": text},
        )
    return canonical_service(name.strip()), normalize_target(address)


def resolve_targets(
    state_dir: str | os.PathLike[str] | None = None, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The target of every service: ``overrides`` (service or alias -> address) win, the rest are
    the UNIX sockets of the state dir (``--state-dir``, else ``$VGPUSIM_STATE_DIR``, else per-user).
    """
    chosen = {canonical_service(k): normalize_target(v) for k, v in (overrides or {}).items()}
    missing = [svc for svc in SERVICES if svc not in chosen]
    if missing:
        paths = StackPaths(resolve_state_dir(state_dir))
        for svc in missing:
            chosen[svc] = f"unix:{paths.socket(svc)}"
    return {svc: chosen[svc] for svc in SERVICES}


class ServiceClient:
    """Base of the typed clients: one channel, its target, and the default deadline of its calls.

    ``peer`` (``<service> at <target>``) names the other end in the errors calls raise.
    """

    SERVICE: str = ""

    def __init__(self, channel: grpc.aio.Channel, *, target: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout}", reason="BAD_TIMEOUT")
        self._channel = channel
        self.target = target
        self.timeout = timeout
        self.peer = f"{self.SERVICE} at {target}" if self.SERVICE else target

    def _deadline(self, timeout: float | None, *, at_least: float = 0.0) -> float:
        """The deadline of one call: ``timeout`` if given, else the default, never under ``at_least``."""
        chosen = self.timeout if timeout is None else timeout
        if chosen <= 0:
            raise InvalidArgument(f"timeout must be positive, got {chosen}", reason="BAD_TIMEOUT")
        return max(chosen, at_least)

    async def _unary(
        self,
        method: Callable[..., Any],
        request: Message,
        response_type: type[R],
        timeout: float | None,
        *,
        at_least: float = 0.0,
    ) -> R:
        """Run one unary RPC with a deadline; failures raise the server's domain error."""
        deadline = self._deadline(timeout, at_least=at_least)
        response = await runtime.call(method, request, timeout=deadline, peer=self.peer)
        return cast(R, response)

    async def _stream(
        self, method: Callable[..., Any], request: Message, item_type: type[R], timeout: float | None
    ) -> AsyncGenerator[R, None]:
        """Iterate a server stream; the call is cancelled when the iterator is closed (wrap it in
        ``contextlib.aclosing`` to close it at once when breaking out of the loop).
        """
        if timeout is not None:
            timeout = self._deadline(timeout)
        rpc = method(request, timeout=timeout)
        try:
            with translate_errors(self.peer):
                async for item in rpc:
                    yield cast(R, item)
        finally:
            rpc.cancel()


def with_timeout_ms(timeout_ms: int) -> float:
    """A client deadline that outlives a server-side wait of ``timeout_ms`` (plus 5 s of slack)."""
    return timeout_ms / 1000.0 + 5.0 if timeout_ms > 0 else 0.0
