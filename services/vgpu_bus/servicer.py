"""The gRPC face of the bus: ``VgpuBusService`` translated onto the core, and its two streams.

:class:`VgpuBusServicer` only translates (proto in, core call, proto out; ``convert`` does the
records); every method is wrapped in ``@rpc_method`` so the core's errors reach the client as
rich statuses with their reason unchanged. Two adapters give the streaming RPCs their data:

- :class:`OwnerStreams` is the core's :class:`~vgpusim.vgpu_bus.core.OwnerNotifier`: a release
  request (the REQ interrupt) for ``owner`` is queued on every ``WatchOwnership`` stream that owner
  has open; with none, it is not delivered and the core's deadline applies. When the last stream
  of an owner ends, ``on_owner_gone(owner)`` runs (the service closes every device the owner
  still holds: :func:`close_owned_devices`).
- :class:`EventHistory` keeps the last N events so ``WatchEvents`` can honour ``after_sequence``:
  ``0`` (or a sequence at or past the newest, e.g. from before a bus restart) streams only new
  events; ``k`` replays the kept events after ``k`` first. Events older than the window are
  reported as one ``OVERFLOW`` event (``sequence`` = last missed, message = how many) in their
  place. It also tallies events by kind for the metrics.

Glossary:
- owner: who holds a device open (the frontend's id for a VM); ``WatchOwnership`` is its line.
- replay window: the ``event_history`` most recent events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.common.rpc import rpc_method
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as pb_grpc
from vgpusim.vgpu_bus import convert
from vgpusim.vgpu_bus.clients import VendorRegistry, opening_for_container
from vgpusim.vgpu_bus.convert import optional
from vgpusim.vgpu_bus.core import Attr, Definition, DeviceInfo, Event, EventKind, ParentInfo, VgpuBus
from vgpusim.vgpu_bus.core.events import Subscription
from vgpusim.vgpu_bus.core.naming import check_owner
from vgpusim.vgpu_bus.metrics import TypeAvailability

__all__ = ["EventHistory", "OwnerStreams", "VgpuBusServicer", "close_owned_devices"]

_log = get_logger(__name__)
Context = Any  # grpc.aio.ServicerContext (grpc ships no type stubs)


class _OwnerStream:
    """One open ``WatchOwnership`` stream: a bounded queue of (uuid, count) release requests."""

    def __init__(self, maxsize: int) -> None:
        self._requests: collections.deque[tuple[str, int]] = collections.deque(maxlen=maxsize)
        self._wakeup = asyncio.Event()

    def put(self, uuid: str, count: int) -> None:
        self._requests.append((uuid, count))  # when full the oldest is dropped: requests repeat
        self._wakeup.set()

    async def get(self) -> tuple[str, int]:
        while not self._requests:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._requests.popleft()


class OwnerStreams:
    """The core's ``OwnerNotifier`` over the owners' ``WatchOwnership`` streams."""

    def __init__(self, on_owner_gone: Callable[[str], None] | None = None, *, queue_size: int = 64) -> None:
        self.on_owner_gone = on_owner_gone
        self._queue_size = queue_size
        self._streams: dict[str, list[_OwnerStream]] = {}

    async def request_release(self, uuid: str, owner: str, count: int) -> None:
        """Queue the request on every stream ``owner`` has open (none: not delivered)."""
        for stream in self._streams.get(owner, ()):
            stream.put(uuid, count)

    def streams(self, owner: str) -> int:
        """How many streams ``owner`` has open."""
        return len(self._streams.get(owner, ()))

    @contextlib.contextmanager
    def watching(self, owner: str) -> Iterator[_OwnerStream]:
        """A stream for ``owner`` during the block; when the last one ends, ``on_owner_gone`` runs."""
        stream = _OwnerStream(self._queue_size)
        self._streams.setdefault(owner, []).append(stream)
        try:
            yield stream
        finally:
            streams = self._streams[owner]
            streams.remove(stream)
            if not streams:
                del self._streams[owner]
                if self.on_owner_gone is not None:
                    self.on_owner_gone(owner)


async def close_owned_devices(bus: VgpuBus, owner: str) -> None:
    """Close every device ``owner`` holds open (its frontend is gone); failures are logged."""
    for device in bus.devices.list_devices():
        if device.owner != owner:
            continue
        _log.warning("owner %s is gone: closing device %s", owner, device.uuid)
        try:
            await bus.devices.close_device(device.uuid, owner)
        except VgpusimError as error:
            _log.warning("closing %s for the gone owner %s failed: %s", device.uuid, owner, error)


class EventHistory:
    """The last ``size`` events of the bus (for ``after_sequence``) and a tally by kind."""

    def __init__(self, bus: VgpuBus, size: int) -> None:
        self._bus = bus
        self._events: collections.deque[Event] = collections.deque(maxlen=size)
        self._subscription = bus.subscribe(maxsize=max(size, bus.config.event_queue_size))
        self.by_kind: collections.Counter[str] = collections.Counter()

    async def run(self) -> None:
        """Record events as they come, until the bus closes (a task of the service)."""
        async for event in self._subscription:
            self._record(event)

    def counts(self) -> dict[str, int]:
        """Events published since start, by kind."""
        self._drain()
        return dict(self.by_kind)

    def open(self, after_sequence: int) -> tuple[list[Event], Subscription]:
        """The events to replay for ``after_sequence`` and a subscription to every later one."""
        self._drain()
        subscription = self._bus.subscribe()  # no await since the drain: nothing falls in between
        newest = self._bus.events.statistics().emitted
        if not 0 < after_sequence < newest:
            return [], subscription
        replay: list[Event] = []
        expected = after_sequence + 1
        for event in self._events:
            if event.seq < expected:
                continue
            if event.seq > expected:
                replay.append(self._gap(expected, event.seq - 1))
            replay.append(event)
            expected = event.seq + 1
        if expected <= newest:
            replay.append(self._gap(expected, newest))
        return replay, subscription

    def _drain(self) -> None:
        while (event := self._subscription.get_nowait()) is not None:
            self._record(event)

    def _record(self, event: Event) -> None:
        if event.kind is not EventKind.OVERFLOW:  # the history itself fell behind: a gap, no tally
            self._events.append(event)
            self.by_kind[event.kind.value] += 1

    def _gap(self, first: int, last: int) -> Event:
        missed = last - first + 1
        return Event(
            seq=last,
            timestamp=self._bus.events.clock(),
            kind=EventKind.OVERFLOW,
            dropped=missed,
            message=f"{missed} events before the replay window are not kept",
        )


def _release_timeout(timeout_ms: int) -> float | None:
    return timeout_ms / 1000.0 if timeout_ms else None


class VgpuBusServicer(pb_grpc.VgpuBusServiceServicer):
    """``vgpusim.vgpu_bus.v1.VgpuBusService`` over a :class:`~vgpusim.vgpu_bus.core.VgpuBus`."""

    def __init__(
        self,
        bus: VgpuBus,
        vendors: VendorRegistry,
        owners: OwnerStreams,
        history: EventHistory,
        availability: TypeAvailability,
    ) -> None:
        self._bus = bus
        self._vendors = vendors
        self._owners = owners
        self._history = history
        self._availability = availability

    # -- parents and types ---------------------------------------------------------------------

    @rpc_method
    async def RegisterParent(
        self, request: pb.RegisterParentRequest, context: Context
    ) -> pb.RegisterParentResponse:
        types, descriptions = convert.type_specs_in(request.types)
        registered = await self._vendors.register(request.name, types, descriptions, request.vendor_endpoint)
        parent = convert.registration_out(registered, request.types, self._vendors.endpoint_of(request.name))
        return pb.RegisterParentResponse(parent=parent)

    @rpc_method
    async def UnregisterParent(
        self, request: pb.UnregisterParentRequest, context: Context
    ) -> pb.UnregisterParentResponse:
        revoked = await self._vendors.unregister(request.name, _release_timeout(request.timeout_ms))
        return pb.UnregisterParentResponse(revoked_devices=revoked)

    @rpc_method
    async def ListParents(self, request: pb.ListParentsRequest, context: Context) -> pb.ListParentsResponse:
        parents = await self._bus.devices.list_parents()
        self._availability.update(parents, complete=True)
        return pb.ListParentsResponse(
            parents=[convert.parent_out(p, self._vendors.endpoint_of(p.name)) for p in parents]
        )

    @rpc_method
    async def ListTypes(self, request: pb.ListTypesRequest, context: Context) -> pb.ListTypesResponse:
        if request.parent:
            parents: tuple[ParentInfo, ...] = (await self._bus.devices.parent_info(request.parent),)
        else:
            parents = await self._bus.devices.list_parents()
        self._availability.update(parents, complete=not request.parent)
        return pb.ListTypesResponse(
            parents=[convert.parent_out(p, self._vendors.endpoint_of(p.name)) for p in parents]
        )

    # -- devices -------------------------------------------------------------------------------

    @rpc_method
    async def CreateDevice(
        self, request: pb.CreateDeviceRequest, context: Context
    ) -> pb.CreateDeviceResponse:
        info = await self._bus.devices.create_device(
            request.uuid, request.parent, request.type_id, convert.attrs_in(request.attrs)
        )
        return pb.CreateDeviceResponse(device=self._device(info))

    @rpc_method
    async def RemoveDevice(
        self, request: pb.RemoveDeviceRequest, context: Context
    ) -> pb.RemoveDeviceResponse:
        await self._bus.devices.remove_device(
            request.uuid, release_timeout=_release_timeout(request.timeout_ms)
        )
        return pb.RemoveDeviceResponse()

    @rpc_method
    async def GetDevice(self, request: pb.GetDeviceRequest, context: Context) -> pb.GetDeviceResponse:
        return pb.GetDeviceResponse(device=self._device(self._bus.devices.device_info(request.uuid)))

    @rpc_method
    async def ListDevices(self, request: pb.ListDevicesRequest, context: Context) -> pb.ListDevicesResponse:
        devices = self._bus.devices.list_devices(
            parent=optional(request.parent), type_id=optional(request.type_id), uuid=optional(request.uuid)
        )
        defined = {(d.definition.uuid, d.definition.parent) for d in self._bus.definitions.list_defined()}
        return pb.ListDevicesResponse(
            devices=[convert.device_out(d, (d.uuid, d.parent) in defined) for d in devices]
        )

    @rpc_method
    async def OpenDevice(self, request: pb.OpenDeviceRequest, context: Context) -> pb.OpenDeviceResponse:
        with opening_for_container(request.container_id):
            opened = await self._bus.devices.open_device(request.uuid, request.owner)
        channel = pb.FastPathChannel(
            broker=opened.channel.get("broker", ""), token=opened.channel.get("token", "")
        )
        return pb.OpenDeviceResponse(device=self._device(opened.device), channel=channel)

    @rpc_method
    async def CloseDevice(self, request: pb.CloseDeviceRequest, context: Context) -> pb.CloseDeviceResponse:
        await self._bus.devices.close_device(request.uuid, request.owner)
        return pb.CloseDeviceResponse()

    @rpc_method
    async def WatchOwnership(
        self, request: pb.WatchOwnershipRequest, context: Context
    ) -> AsyncIterator[pb.WatchOwnershipResponse]:
        owner = check_owner(request.owner)
        with self._owners.watching(owner) as stream:
            yield pb.WatchOwnershipResponse(watching=pb.OwnershipWatching(owner=owner))
            while True:
                uuid, count = await stream.get()
                requested = pb.ReleaseRequested(uuid=uuid, count=count)
                yield pb.WatchOwnershipResponse(release_requested=requested)

    # -- definitions ---------------------------------------------------------------------------

    @rpc_method
    async def DefineDevice(
        self, request: pb.DefineDeviceRequest, context: Context
    ) -> pb.DefineDeviceResponse:
        definition = self._bus.definitions.define(
            optional(request.uuid),
            optional(request.parent),
            optional(request.type_id),
            start=convert.start_policy_in(request.start),
            attrs=convert.attrs_in(request.attrs) or None,
        )
        return pb.DefineDeviceResponse(definition=self._definition(definition))

    @rpc_method
    async def UndefineDevice(
        self, request: pb.UndefineDeviceRequest, context: Context
    ) -> pb.UndefineDeviceResponse:
        removed = self._bus.definitions.undefine(request.uuid, optional(request.parent))
        return pb.UndefineDeviceResponse(removed=[self._definition(d) for d in removed])

    @rpc_method
    async def ModifyDefinition(
        self, request: pb.ModifyDefinitionRequest, context: Context
    ) -> pb.ModifyDefinitionResponse:
        edit = request.WhichOneof("attribute_edit")
        added = request.add_attribute
        index = added.index if edit == "add_attribute" else request.delete_attribute.index
        definition = self._bus.definitions.modify(
            request.uuid,
            optional(request.parent),
            type_id=optional(request.type_id),
            start=convert.start_policy_change(request.start),
            add_attr=Attr(added.name, added.value) if edit == "add_attribute" else None,
            delete_attr=edit == "delete_attribute",
            index=None if edit is None or index == -1 else index,
        )
        return pb.ModifyDefinitionResponse(definition=self._definition(definition))

    @rpc_method
    async def ListDefinitions(
        self, request: pb.ListDefinitionsRequest, context: Context
    ) -> pb.ListDefinitionsResponse:
        found = self._bus.definitions.list_defined(
            uuid=optional(request.uuid), parent=optional(request.parent)
        )
        return pb.ListDefinitionsResponse(definitions=[convert.defined_out(d) for d in found])

    @rpc_method
    async def StartDevice(self, request: pb.StartDeviceRequest, context: Context) -> pb.StartDeviceResponse:
        info = await self._bus.definitions.start(
            optional(request.uuid),
            optional(request.parent),
            optional(request.type_id),
            attrs=convert.attrs_in(request.attrs) or None,
        )
        return pb.StartDeviceResponse(device=self._device(info))

    @rpc_method
    async def StopDevice(self, request: pb.StopDeviceRequest, context: Context) -> pb.StopDeviceResponse:
        await self._bus.definitions.stop(request.uuid, release_timeout=_release_timeout(request.timeout_ms))
        return pb.StopDeviceResponse()

    # -- events --------------------------------------------------------------------------------

    @rpc_method
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        replay, subscription = self._history.open(request.after_sequence)
        async with subscription:
            for event in replay:
                yield convert.event_out(event)
            async for event in subscription:
                yield convert.event_out(event)

    # -- helpers -------------------------------------------------------------------------------

    def _device(self, info: DeviceInfo) -> pb.Device:
        defined = bool(self._bus.definitions.list_defined(uuid=info.uuid, parent=info.parent))
        return convert.device_out(info, defined)

    def _definition(self, definition: Definition) -> pb.Definition:
        return convert.definition_out(definition, self._bus.devices.find_device(definition.uuid))
