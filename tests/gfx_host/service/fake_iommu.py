"""A fake iommu_type2 for the gfx_host service tests: the real mapper core behind a real gRPC server.

gfx_host calls five RPCs of ``IommuType2Service``: ``AttachDevice``, ``DetachDevice``,
``PinPages``, ``UnpinPages`` and ``WatchUnmap``.  :class:`FakeIommu` serves exactly those over a
grpc.aio server on a UNIX socket, on top of :class:`vgpusim.iommu_type2.core.Mapper` (the real
type1 semantics: pin refcounts, the unmap handshake), so a test sets the VM's address space up
directly on the mapper (``create_container``, ``register_segment``, ``map_dma``) and triggers an
unmap with ``await container.unmap_dma(...)``: the mapper notifies gfx_host through the
``WatchUnmap`` stream and waits for its ack, as the real service does.

Every call is recorded (:attr:`FakeIommu.calls`), and :meth:`FakeIommu.wait_for` waits, bounded,
for a condition on them.

Glossary:
- guest RAM: one segment of :class:`RamStore` (a real file under ``/dev/shm``); IOVA = offset.
- watch: one live ``WatchUnmap`` stream, i.e. one registered :class:`StreamListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vgpusim.common.errors import InvalidArgument, NotFound, VgpusimError
from vgpusim.common.rpc import rpc_method
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.core import Mapper, MapperConfig, Prot


class RamStore:
    """The mapper's ``SegmentStore`` over segments the test created (by name)."""

    def __init__(self) -> None:
        self.segments: dict[str, Segment] = {}

    def view(self, name: str) -> memoryview:
        segment = self.segments.get(name)
        if segment is None:
            raise NotFound(f"no segment {name!r}", reason="SEGMENT_MISSING")
        return segment.buf


@dataclass(frozen=True)
class Call:
    """One RPC as the fake saw it (``iova``/``npage`` for pins; ``sequence`` for acks)."""

    rpc: str
    container: str
    device: str
    iova: int = 0
    npage: int = 0
    sequence: int = 0


class StreamListener:
    """The ``UnmapListener`` of one ``WatchUnmap`` stream: an event out, then wait for the ack."""

    def __init__(self, fake: FakeIommu, context: Any, container: str, device: str) -> None:
        self._fake = fake
        self._context = context
        self.container = container
        self.device = device
        self._acks: dict[int, asyncio.Future[None]] = {}

    async def notify_unmap(self, iova: int, size: int) -> None:
        sequence = next(self._fake.sequences)
        done = asyncio.get_running_loop().create_future()
        self._acks[sequence] = done
        try:
            event = pb.UnmapEvent(sequence=sequence, iova=iova, size=size)
            await self._context.write(pb.WatchUnmapResponse(event=event))
            self._fake.record(Call("UnmapEvent", self.container, self.device, iova, size, sequence))
            await done  # the mapper bounds this wait with its notify_timeout_s
        finally:
            self._acks.pop(sequence, None)

    def ack(self, sequence: int) -> None:
        done = self._acks.get(sequence)
        if done is not None and not done.done():
            done.set_result(None)

    def abandon(self) -> None:
        for done in self._acks.values():
            if not done.done():
                done.cancel()


class FakeIommu(pb_grpc.IommuType2ServiceServicer):
    """The five RPCs gfx_host uses, over a real :class:`Mapper`."""

    def __init__(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self.calls: list[Call] = []
        self.sequences = itertools.count(1)
        self.watches: dict[tuple[str, str], StreamListener] = {}
        self.refuse_watch: VgpusimError | None = None
        """When set, ``WatchUnmap`` fails with it after reading the registration."""
        self.pin_gate: asyncio.Event | None = None
        """When set, ``PinPages`` records ``PinPagesWaiting`` and waits for the event first."""
        self._changed = asyncio.Event()

    # ---- observation -------------------------------------------------------------------------

    def record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed.set()

    def of(self, rpc: str, device: str | None = None) -> list[Call]:
        """The recorded calls of ``rpc`` (for ``device`` if given), oldest first."""
        return [c for c in self.calls if c.rpc == rpc and (device is None or c.device == device)]

    async def wait_for(self, condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
        """Return once ``condition()`` holds, re-checked after every recorded call."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    # ---- RPCs --------------------------------------------------------------------------------

    @rpc_method
    async def AttachDevice(self, request: pb.AttachDeviceRequest, context: Any) -> pb.AttachDeviceResponse:
        self.mapper.container(request.container_id).attach_device(request.device)
        self.record(Call("AttachDevice", request.container_id, request.device))
        return pb.AttachDeviceResponse()

    @rpc_method
    async def DetachDevice(self, request: pb.DetachDeviceRequest, context: Any) -> pb.DetachDeviceResponse:
        held = self.mapper.container(request.container_id).detach_device(request.device)
        watch = self.watches.pop((request.container_id, request.device), None)
        if watch is not None:
            watch.abandon()
        self.record(Call("DetachDevice", request.container_id, request.device, npage=held))
        return pb.DetachDeviceResponse(unpinned_pages=held)

    @rpc_method
    async def PinPages(self, request: pb.PinPagesRequest, context: Any) -> pb.PinPagesResponse:
        if self.pin_gate is not None:
            self.record(Call("PinPagesWaiting", request.container_id, request.device, request.iova))
            await self.pin_gate.wait()
        container = self.mapper.container(request.container_id)
        prot = Prot(read=request.prot.read, write=request.prot.write)
        runs = container.pin_pages(request.device, request.iova, request.npage, prot)
        self.record(Call("PinPages", request.container_id, request.device, request.iova, request.npage))
        return pb.PinPagesResponse(
            runs=[pb.HostRun(iova=r.iova, segment=r.segment, offset=r.offset, length=r.length) for r in runs]
        )

    @rpc_method
    async def UnpinPages(self, request: pb.UnpinPagesRequest, context: Any) -> pb.UnpinPagesResponse:
        container = self.mapper.container(request.container_id)
        released = container.unpin_pages(request.device, request.iova, request.npage)
        self.record(Call("UnpinPages", request.container_id, request.device, request.iova, request.npage))
        return pb.UnpinPagesResponse(released_pages=released)

    @rpc_method
    async def WatchUnmap(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("register"):
            raise InvalidArgument("the first message must register", reason="NOT_REGISTERED")
        if self.refuse_watch is not None:
            raise self.refuse_watch
        container_id, device = first.register.container_id, first.register.device
        container = self.mapper.container(container_id)
        listener = StreamListener(self, context, container_id, device)
        container.watch_unmap(device, listener)
        key = (container_id, device)
        self.watches[key] = listener
        try:
            registered = pb.UnmapRegistered(container_id=container_id, device=device)
            await context.write(pb.WatchUnmapResponse(registered=registered))
            self.record(Call("WatchUnmap", container_id, device))
            while (message := await context.read()) is not grpc.aio.EOF:
                if message.HasField("ack"):
                    self.record(Call("UnmapAck", container_id, device, sequence=message.ack.sequence))
                    listener.ack(message.ack.sequence)
        finally:
            listener.abandon()
            if self.watches.get(key) is listener:  # not detached (nor re-registered) meanwhile
                del self.watches[key]
                with contextlib.suppress(NotFound):
                    container.unwatch_unmap(device)
            self.record(Call("WatchEnded", container_id, device))


@contextlib.asynccontextmanager
async def serving_fake_iommu(socket_path: str, store: RamStore) -> AsyncIterator[tuple[FakeIommu, str]]:
    """A :class:`FakeIommu` served on ``unix:<socket_path>``; yields it and its target."""
    # only the five RPCs gfx_host calls: the others answer UNIMPLEMENTED (the generated base)
    fake = FakeIommu(Mapper(store, MapperConfig(notify_timeout_s=5.0)))  # type: ignore[abstract]
    server = grpc.aio.server()
    pb_grpc.add_IommuType2ServiceServicer_to_server(fake, server)
    target = f"unix:{socket_path}"
    server.add_insecure_port(target)
    await server.start()
    try:
        yield fake, target
    finally:
        await server.stop(None)
