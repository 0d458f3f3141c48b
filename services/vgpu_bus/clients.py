"""The bus's outbound side: the vendor ops of each parent over gRPC, and the vendors' liveness.

A parent is registered with a ``vendor_endpoint``: the gRPC target of the ``gfx_host`` that owns
the GPU. :class:`GrpcVendor` is the core's :class:`~vgpusim.vgpu_bus.core.VendorOps` for one
parent over ``vgpusim.gfx_host.v1.VendorService`` at that endpoint: one cached channel per
endpoint, a deadline on every call, and the vendor's errors passed through unchanged (the
client's :func:`~vgpusim.common.clients.call` rebuilds the domain error from the rich status, so
``RESOURCE_EXHAUSTED APERTURE_EXHAUSTED`` reaches the bus's caller as the vendor sent it).
``VendorService`` has no description RPC: ``description(type_id)`` is the text the vendor gave
in its ``MdevType`` at registration.

**Liveness.** :class:`VendorRegistry` registers parents with the core and watches each one's
vendor: before accepting a registration it opens a ``grpc.health.v1.Health/Watch`` stream to the
vendor's server and waits for its first answer (``UNAVAILABLE`` ``VENDOR_UNREACHABLE`` if none
comes within the connect timeout). The stream lives as long as the connection to that vendor
process. When it ends (the process died or stopped), the vendor is gone: the registry calls
``unregister_parent(name, force=True, release_timeout=0)`` on the core, which revokes the
parent's devices without waiting for owners or for the dead vendor, and forgets the parent, so a
restarted ``gfx_host`` can register it again. A registration that arrives while the previous
instance's clean-up is still running waits for it first. A vendor server without a health
service is accepted without liveness (logged): its parents stay until unregistered.

``OpenInstance`` needs the opener's container, which the core's ``open(uuid, owner)`` does not
carry: the servicer sets it around the core call with :func:`opening_for_container` (a context
variable; the core awaits the vendor in the same task), and :meth:`GrpcVendor.open` falls back to
the owner id when none is set.

Glossary:
- endpoint: a gRPC target (``unix:<state>/run/gfx_host.sock``) given as ``vendor_endpoint``.
- registration: the registry's record of one parent: its endpoint, vendor and liveness watch.
- lost: the watch stream of a registration ended; the parent is being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vgpusim.common.clients import call, normalize_target, open_channel
from vgpusim.common.errors import InvalidArgument, Unavailable, VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as gfx_grpc
from vgpusim.vgpu_bus.core import Attr, ParentRegistration, TypeSpec, VgpuBus

__all__ = ["GrpcVendor", "Spawn", "VendorRegistry", "opening_for_container"]

_log = get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
"""Starts a task owned by the service's task group (``TaskGroup.create_task``)."""

_container: contextvars.ContextVar[str] = contextvars.ContextVar("vgpu_bus_open_container", default="")


@contextlib.contextmanager
def opening_for_container(container_id: str) -> Iterator[None]:
    """Within the block, vendor opens attach the device to ``container_id`` (empty: the owner id)."""
    token = _container.set(container_id)
    try:
        yield
    finally:
        _container.reset(token)


class GrpcVendor:
    """:class:`~vgpusim.vgpu_bus.core.VendorOps` of one parent over ``VendorService`` at ``endpoint``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        parent: str,
        endpoint: str,
        descriptions: Mapping[str, str],
        *,
        timeout: float,
    ) -> None:
        self._stub = gfx_grpc.VendorServiceStub(channel)
        self.parent = parent
        self.endpoint = endpoint
        self._descriptions = dict(descriptions)
        self._timeout = timeout
        self._peer = f"gfx_host at {endpoint}"

    async def create(self, uuid: str, type_id: str, attrs: tuple[Attr, ...]) -> None:
        """``CreateInstance``; the attributes travel as a map, so a name may appear only once."""
        request = gfx.CreateInstanceRequest(
            uuid=uuid, parent=self.parent, type_id=type_id, attrs=_attr_map(attrs)
        )
        await self._call(self._stub.CreateInstance, request)

    async def remove(self, uuid: str) -> None:
        """``RemoveInstance``."""
        await self._call(self._stub.RemoveInstance, gfx.RemoveInstanceRequest(uuid=uuid))

    async def open(self, uuid: str, owner: str) -> Mapping[str, str]:
        """``OpenInstance`` into the container set by :func:`opening_for_container` (else ``owner``)."""
        request = gfx.OpenInstanceRequest(uuid=uuid, container_id=_container.get() or owner)
        response = await self._call(self._stub.OpenInstance, request)
        return {"broker": response.broker, "token": response.token}

    async def release(self, uuid: str) -> None:
        """``ReleaseInstance``."""
        await self._call(self._stub.ReleaseInstance, gfx.ReleaseInstanceRequest(uuid=uuid))

    async def available_instances(self, type_id: str) -> int:
        """``GetAvailableInstances(parent, type_id)``."""
        request = gfx.GetAvailableInstancesRequest(parent=self.parent, type_id=type_id)
        response = await self._call(self._stub.GetAvailableInstances, request)
        return int(response.available_instances)

    async def description(self, type_id: str) -> str:
        """The description the vendor registered for ``type_id`` (no RPC)."""
        return self._descriptions.get(type_id, "")

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable, request: Any) -> Any:
        return await call(method, request, timeout=self._timeout, peer=self._peer)


def _attr_map(attrs: tuple[Attr, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for index, attr in enumerate(attrs):
        if attr.name in mapping:
            raise InvalidArgument(
                f"Attribute {attr.name!r} is given twice; the vendor takes each attribute once",
                reason="DUPLICATE_ATTRIBUTE",
                metadata={"index": str(index), "name": attr.name},
            )
        mapping[attr.name] = attr.value
    return mapping


@dataclass(eq=False)
class _Registration:
    """One parent registered through the registry, and the state of its vendor's liveness watch."""

    name: str
    endpoint: str
    task: asyncio.Task[None] | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class VendorRegistry:
    """Parents by name with their vendor endpoint; registers them and drops those whose vendor dies."""

    def __init__(
        self,
        bus: VgpuBus,
        spawn: Spawn,
        *,
        call_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._bus = bus
        self._spawn = spawn
        self._call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._registrations: dict[str, _Registration] = {}

    def parents(self) -> tuple[str, ...]:
        """The names of the parents registered through this registry."""
        return tuple(self._registrations)

    def endpoint_of(self, parent: str) -> str:
        """The vendor endpoint ``parent`` registered with ("" if unknown)."""
        registration = self._registrations.get(parent)
        return "" if registration is None else registration.endpoint

    async def register(
        self, name: str, types: tuple[TypeSpec, ...], descriptions: Mapping[str, str], endpoint: str
    ) -> ParentRegistration:
        """Check the vendor answers, register ``name`` with the core, watch it, then autostart.

        Errors: ``INVALID_VENDOR_ENDPOINT``, ``VENDOR_UNREACHABLE`` (Unavailable), and the core's
        (``PARENT_EXISTS``, catalogue errors).
        """
        if not endpoint.strip():
            raise InvalidArgument("vendor_endpoint is empty", reason="INVALID_VENDOR_ENDPOINT")
        target = normalize_target(endpoint.strip())
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = open_channel(target)
        watch = await self._open_watch(channel, target)
        try:
            await self._settle(name)
            vendor = GrpcVendor(channel, name, target, descriptions, timeout=self._call_timeout)
            registration = await self._bus.register_parent(name, types, vendor, autostart=False)
        except BaseException:
            if watch is not None:
                watch.cancel()
            raise
        record = self._registrations[name] = _Registration(name, target)
        if watch is not None:
            record.task = self._spawn(self._monitor(record, watch))
        return replace(registration, autostart=await self._bus.definitions.autostart(name))

    async def unregister(self, name: str, release_timeout: float | None) -> tuple[str, ...]:
        """Unregister ``name`` in the core (owners asked to release); the devices it had, as listed
        when the unregistration began. Errors: the core's (``UNKNOWN_PARENT``, ``OWNER_DID_NOT_RELEASE``).
        """
        devices = tuple(device.uuid for device in self._bus.devices.list_devices(parent=name))
        await self._bus.devices.unregister_parent(name, release_timeout=release_timeout)
        record = self._registrations.get(name)
        if record is not None:
            self._forget(record)
            if record.task is not None:
                record.task.cancel()
        return devices

    def stop(self) -> None:
        """Stop watching the vendors (service shutdown); parents stay registered in the core.

        The drop of a parent whose vendor is already lost is left to finish (it is bounded: the
        forced unregistration waits for no owner, and calls to a dead vendor fail at once).
        """
        for record in self._registrations.values():
            if record.task is not None and not record.lost.is_set():
                record.task.cancel()

    async def aclose(self) -> None:
        """Close the vendor channels (after :meth:`stop` and once the watch tasks have ended)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    # -- liveness ------------------------------------------------------------------------------

    async def _open_watch(self, channel: grpc.aio.Channel, target: str) -> Any:
        """A health Watch stream that has answered once, or ``None`` if the vendor has no health service."""
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True)
        try:
            async with asyncio.timeout(self._connect_timeout):
                first = await watch.read()
        except grpc.aio.AioRpcError as exc:
            watch.cancel()
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                _log.warning("vendor at %s has no health service: its liveness is not watched", target)
                return None
            raise _unreachable(target, f"{exc.code().name}: {exc.details()}") from None
        except TimeoutError:
            watch.cancel()
            raise _unreachable(target, f"no answer within {self._connect_timeout:g} s") from None
        if first is grpc.aio.EOF:
            raise _unreachable(target, "the health stream ended at once")
        return watch

    async def _settle(self, name: str) -> None:
        """Wait (bounded) for the clean-up of a previous registration of ``name`` whose vendor was lost."""
        previous = self._registrations.get(name)
        if previous is None or not previous.lost.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._call_timeout):
                await previous.gone.wait()

    async def _monitor(self, record: _Registration, watch: Any) -> None:
        try:
            why = await _stream_end(watch)
        finally:
            watch.cancel()
            del watch  # a traceback kept by a log record must not keep the call alive
        record.lost.set()
        _log.warning(
            "vendor of parent %s at %s is gone (%s): unregistering the parent with force",
            record.name,
            record.endpoint,
            why,
        )
        await self._drop(record)

    async def _drop(self, record: _Registration) -> None:
        delay = 0.05
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._bus.config.release_timeout + self._call_timeout
        while self._registrations.get(record.name) is record:
            try:
                await self._bus.devices.unregister_parent(record.name, force=True, release_timeout=0)
            except VgpusimError as error:
                if error.reason == "PARENT_BUSY" and loop.time() < deadline:
                    await asyncio.sleep(delay)  # an unregistration by request is still running
                    delay = min(2 * delay, 1.0)
                    continue
                _log.warning("dropping parent %s: %s", record.name, error)
            self._forget(record)

    def _forget(self, record: _Registration) -> None:
        if self._registrations.get(record.name) is record:
            del self._registrations[record.name]
        record.gone.set()


async def _stream_end(watch: Any) -> str:
    """Wait for the end of a health Watch stream; how it ended."""
    try:
        while await watch.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return "the health stream ended"


def _unreachable(target: str, why: str) -> Unavailable:
    return Unavailable(
        f"vendor at {target} is not reachable: {why}",
        reason="VENDOR_UNREACHABLE",
        metadata={"vendor_endpoint": target},
    )
