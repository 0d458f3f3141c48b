"""Fixtures of the iommu_type2 tests.

Core tests: an in-memory store with a RAM segment, a mapper, containers. Service tests: a real
grpc.aio server (``iommu``, ``start_iommu``) on a UNIX socket in a short temporary state dir, with
real segments in its ``/dev/shm`` folder (removed afterwards, also on failure), and a
:class:`ServiceHarness` to call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.iommu_type2.helpers import FAST, PAGE, RAM, RAM_SIZE
from vgpusim.common import clients
from vgpusim.common.errors import VgpusimError
from vgpusim.common.paths import StackPaths
from vgpusim.common.server import ServerHandle
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.config import IommuServiceConfig
from vgpusim.iommu_type2.core import Container, InMemorySegmentStore, IommuMode, Mapper
from vgpusim.iommu_type2.server import IommuService, running_iommu


@pytest.fixture
def store() -> InMemorySegmentStore:
    segments = InMemorySegmentStore()
    segments.create(RAM, RAM_SIZE)
    return segments


@pytest.fixture
def mapper(store: InMemorySegmentStore) -> Mapper:
    return Mapper(store, FAST)


@pytest.fixture
def ctr(mapper: Mapper) -> Container:
    """An emulated-mode container of owner ``vm0`` with ``RAM`` registered, no memlock limit."""
    container = mapper.create_container("vm0", IommuMode.EMULATED)
    container.register_segment(RAM, RAM_SIZE)
    return container


@pytest.fixture
def hw(mapper: Mapper) -> Container:
    """A hardware-IOMMU container of owner ``vm1`` with ``RAM`` registered, no memlock limit."""
    container = mapper.create_container("vm1", IommuMode.HARDWARE)
    container.register_segment(RAM, RAM_SIZE)
    return container


# -- the gRPC service (servicer, server and segment store tests) --------------------------------


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """An empty temporary directory under ``/dev/shm`` (removed with its segments afterwards)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="vgs-test-") as name:
        yield Path(name)


@pytest.fixture
def iommu_state_dir() -> Iterator[Path]:
    """A short state dir (socket paths are limited to 107 bytes); its ``/dev/shm`` folder is
    removed with it, also when the test fails."""
    with tempfile.TemporaryDirectory(prefix="vgs-") as name:
        try:
            yield Path(name)
        finally:
            StackPaths(Path(name)).remove_shm_dir()


@pytest.fixture
def iommu_config(iommu_state_dir: Path) -> IommuServiceConfig:
    """A config with small limits: 16 mappings per container, 2 unmap retries, 2 s notify deadline."""
    return IommuServiceConfig(
        state_dir=iommu_state_dir,
        log_format="text",
        stop_grace_s=1.0,
        dma_entry_limit=16,
        unmap_retries=2,
        notify_timeout_s=2.0,
    )


class ServiceHarness:
    """A real iommu_type2 server on a UNIX socket, a client stub, and real segments in its shm dir."""

    def __init__(self, service: IommuService, handle: ServerHandle, channel: grpc.aio.Channel) -> None:
        self.service = service
        self.handle = handle
        self.channel = channel
        self.stub = pb_grpc.IommuType2ServiceStub(channel)
        self.shm_dir = service.store.directory
        self.segments: dict[str, Segment] = {}

    def segment(self, name: str = "ram", size: int = RAM_SIZE) -> Segment:
        """Create segment ``name`` in the server's shm dir (closed and unlinked at teardown)."""
        self.segments[name] = Segment.create(self.shm_dir, name, size)
        return self.segments[name]

    async def call(self, method: str, request: Any) -> Any:
        """A unary RPC through ``vgpusim.common.clients.call`` (domain errors rebuilt)."""
        return await clients.call(getattr(self.stub, method), request, timeout=10.0, peer="iommu_type2")

    async def fails(self, method: str, request: Any, cls: type[VgpusimError], reason: str) -> VgpusimError:
        """Call ``method`` and check the error: exactly ``cls`` (so the status code) and ``reason``."""
        with pytest.raises(VgpusimError) as caught:
            await self.call(method, request)
        assert (type(caught.value), caught.value.reason) == (cls, reason), caught.value
        return caught.value

    async def container(
        self, owner: str = "vm0", *, mode: int = pb.IOMMU_MODE_EMULATED, ram: str | None = "ram"
    ) -> str:
        """A new container of ``owner``; with ``ram`` that segment (created if needed) registered."""
        reply = await self.call("CreateContainer", pb.CreateContainerRequest(owner=owner, mode=mode))
        if ram is not None:
            size = (self.segments.get(ram) or self.segment(ram)).size
            request = pb.RegisterSegmentRequest(container_id=reply.container_id, segment=ram, size=size)
            await self.call("RegisterSegment", request)
        return str(reply.container_id)

    async def map(
        self,
        cid: str,
        iova: int,
        size: int,
        offset: int | None = None,
        *,
        segment: str = "ram",
        prot: str = "rw",
    ) -> None:
        """MapDma ``size`` bytes at ``iova`` to ``segment`` + ``offset`` (default: the IOVA)."""
        mapping = pb.DmaMapping(
            iova=iova,
            size=size,
            segment=segment,
            offset=iova if offset is None else offset,
            prot=pb.Prot(read="r" in prot, write="w" in prot),
        )
        await self.call("MapDma", pb.MapDmaRequest(container_id=cid, mapping=mapping))

    async def info(self, cid: str) -> pb.Container:
        """The listed container ``cid``."""
        reply = await self.call("ListContainers", pb.ListContainersRequest())
        return next(c for c in reply.containers if c.container_id == cid)

    async def pin(self, cid: str, device: str, iova: int, npage: int) -> list[pb.HostRun]:
        request = pb.PinPagesRequest(
            container_id=cid, device=device, iova=iova, npage=npage, prot=pb.Prot(read=True, write=True)
        )
        return list((await self.call("PinPages", request)).runs)

    @contextlib.asynccontextmanager
    async def watch(
        self, cid: str, device: str, *, unpin: bool = True, ack: bool = True
    ) -> AsyncIterator[UnmapWatcher]:
        """A ``WatchUnmap`` client for ``device``, registered on entry (errors raised as domain
        errors), answering events in a task until the block ends (then the call is cancelled)."""
        call = self.stub.WatchUnmap()
        watcher = UnmapWatcher(self, call, cid, device, unpin=unpin, ack=ack)
        try:
            with clients.translate_errors("iommu_type2"):
                await call.write(
                    pb.WatchUnmapRequest(register=pb.UnmapRegistration(container_id=cid, device=device))
                )
                first = await call.read()
            assert first.WhichOneof("kind") == "registered", first
            task = asyncio.create_task(watcher.serve())
            try:
                yield watcher
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            call.cancel()

    def close(self) -> None:
        for segment in self.segments.values():
            segment.close()
            segment.unlink(missing_ok=True)


class UnmapWatcher:
    """A device's side of ``WatchUnmap``: records events; unpins each event's range (512 pages per
    UnpinPages) unless ``unpin`` is false; acks unless ``ack`` is false (a hung device)."""

    def __init__(
        self, harness: ServiceHarness, call: Any, cid: str, device: str, *, unpin: bool, ack: bool
    ) -> None:
        self.harness = harness
        self.call = call
        self.cid = cid
        self.device = device
        self.unpin = unpin
        self.ack = ack
        self.events: list[tuple[int, int, int]] = []
        """``(sequence, iova, size)`` of every event received."""
        self.ended = asyncio.Event()
        """Set when the server ended the call (with OK)."""

    async def serve(self) -> None:
        while (message := await self.call.read()) is not grpc.aio.EOF:
            event = message.event
            self.events.append((event.sequence, event.iova, event.size))
            if self.unpin:
                for iova in range(event.iova, event.iova + event.size, 512 * PAGE):
                    npage = min(512, (event.iova + event.size - iova) // PAGE)
                    request = pb.UnpinPagesRequest(
                        container_id=self.cid, device=self.device, iova=iova, npage=npage
                    )
                    await self.harness.call("UnpinPages", request)
            if self.ack:
                await self.call.write(pb.WatchUnmapRequest(ack=pb.UnmapAck(sequence=event.sequence)))
        assert await self.call.code() is grpc.StatusCode.OK
        self.ended.set()

    async def wait_ended(self) -> None:
        """Wait (bounded) for the server to end the call."""
        async with asyncio.timeout(10):
            await self.ended.wait()


@contextlib.asynccontextmanager
async def serving(config: IommuServiceConfig) -> AsyncIterator[ServiceHarness]:
    """Run the service for ``config`` and yield a harness talking to it."""
    async with running_iommu(config) as (service, handle), handle.channel() as channel:
        harness = ServiceHarness(service, handle, channel)
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def start_iommu() -> Callable[[IommuServiceConfig], contextlib.AbstractAsyncContextManager[ServiceHarness]]:
    """``async with start_iommu(config) as iommu``: a server with a config of the test's own."""
    return serving


@pytest.fixture
async def iommu(iommu_config: IommuServiceConfig) -> AsyncIterator[ServiceHarness]:
    """The service with :func:`iommu_config`, and a harness to call it."""
    async with serving(iommu_config) as harness:
        yield harness
