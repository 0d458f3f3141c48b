"""gfx_host's outbound RPCs: iommu_type2 (attach, pins, unmap events) and vgpu_bus (parents).

Every call has a deadline and converts gRPC errors into domain errors (``common.clients.call``).
:class:`GrpcPinner` is the :class:`~vgpusim.gfx_host.core.gtt.Pinner` of one open vGPU;
:class:`SegmentCache` is the :class:`~vgpusim.gfx_host.core.gtt.HostMemory` over the stack's
shared-memory directory; :func:`watch_unmap` serves the ``dma_unmap`` op of one device.

Glossary:
- container: the iommu_type2 container of the VM that opened the vGPU.
- device: the vGPU's UUID, which names its emulated IOMMU group.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from vgpusim.common.clients import call, translate_errors
from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as iommu_pb2
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as iommu_grpc
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as bus_pb2
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as bus_grpc
from vgpusim.gfx_host.core.gpu import PhysicalGpu
from vgpusim.gfx_host.core.gtt import PAGE_SIZE, HostPage

_log = get_logger("vgpusim.gfx_host.clients")
UnmapHandler = Callable[[int, int], Awaitable[None]]


class IommuClient:
    """The calls gfx_host makes on iommu_type2."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = iommu_grpc.IommuType2ServiceStub(channel)

    async def attach(self, container: str, device: str) -> None:
        await call(
            self._stub.AttachDevice,
            iommu_pb2.AttachDeviceRequest(container_id=container, device=device),
            peer="iommu_type2",
        )

    async def detach(self, container: str, device: str) -> None:
        await call(
            self._stub.DetachDevice,
            iommu_pb2.DetachDeviceRequest(container_id=container, device=device),
            peer="iommu_type2",
        )

    def pinner(self, container: str, device: str) -> GrpcPinner:
        return GrpcPinner(self._stub, container, device)

    async def watch_unmap(
        self, container: str, device: str, handler: UnmapHandler, registered: asyncio.Event
    ) -> None:
        """Serve unmap events for ``device`` until the call ends; ``registered`` is set once live."""
        stream = self._stub.WatchUnmap()
        with translate_errors(peer="iommu_type2"):
            try:
                await stream.write(
                    iommu_pb2.WatchUnmapRequest(
                        register=iommu_pb2.UnmapRegistration(container_id=container, device=device)
                    )
                )
                while True:
                    message = await stream.read()
                    if message is grpc.aio.EOF:
                        return
                    if message.HasField("registered"):
                        registered.set()
                        continue
                    event = message.event
                    await handler(event.iova, event.size)
                    await stream.write(
                        iommu_pb2.WatchUnmapRequest(ack=iommu_pb2.UnmapAck(sequence=event.sequence))
                    )
            finally:
                stream.cancel()


class GrpcPinner:
    """``Pinner`` of one vGPU: PinPages/UnpinPages on its container, read+write."""

    def __init__(self, stub: iommu_grpc.IommuType2ServiceStub, container: str, device: str) -> None:
        self._stub = stub
        self.container = container
        self.device = device

    async def pin_pages(self, iova: int, npage: int) -> Sequence[HostPage]:
        reply = await call(
            self._stub.PinPages,
            iommu_pb2.PinPagesRequest(
                container_id=self.container,
                device=self.device,
                iova=iova,
                npage=npage,
                prot=iommu_pb2.Prot(read=True, write=True),
            ),
            peer="iommu_type2",
        )
        pages: list[HostPage] = []
        for run in reply.runs:
            pages.extend(HostPage(run.segment, run.offset + i) for i in range(0, run.length, PAGE_SIZE))
        return pages

    async def unpin_pages(self, iova: int, npage: int) -> None:
        await call(
            self._stub.UnpinPages,
            iommu_pb2.UnpinPagesRequest(
                container_id=self.container, device=self.device, iova=iova, npage=npage
            ),
            peer="iommu_type2",
        )


class BusClient:
    """The calls gfx_host makes on vgpu_bus: registering its GPUs as mdev parents."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = bus_grpc.VgpuBusServiceStub(channel)

    async def register_parent(self, gpu: PhysicalGpu, vendor_endpoint: str) -> None:
        types = [
            bus_pb2.MdevType(
                type_id=t.type_id,
                name=t.name,
                description=t.description,
                device_api=t.device_api,
                available_instances=t.available_instances,
            )
            for t in gpu.types()
        ]
        await call(
            self._stub.RegisterParent,
            bus_pb2.RegisterParentRequest(
                name=gpu.parent, driver=gpu.model.driver, types=types, vendor_endpoint=vendor_endpoint
            ),
            peer="vgpu_bus",
            timeout=30.0,
        )

    async def unregister_parent(self, parent: str, timeout_s: float = 10.0) -> None:
        await call(
            self._stub.UnregisterParent,
            bus_pb2.UnregisterParentRequest(name=parent, timeout_ms=int(timeout_s * 1000)),
            peer="vgpu_bus",
            timeout=timeout_s + 5,
        )


class SegmentCache:
    """``HostMemory`` over the stack's shm directory: segments opened once, by name.

    A VM's RAM segment is unlinked when the VM is destroyed, but our mapping would keep its memory
    (and a file descriptor) alive: whenever a segment not seen before is opened, cached segments
    whose file is gone are closed (:meth:`prune`), so a host that runs VM after VM stays flat.
    Thread-safe: the trap threads of several vGPUs and the event loop use it at once; the hit path
    (a segment already open) takes no lock.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._open: dict[str, Segment] = {}
        self._identity: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def view(self, segment: str) -> memoryview:
        seg = self._open.get(segment)
        if seg is None or seg.closed:
            with self._lock:
                seg = self._open.get(segment)
                if seg is None or seg.closed:
                    self._prune_locked()
                    seg = Segment.open(self._directory, segment)
                    st = os.stat(seg.path)
                    self._open[segment], self._identity[segment] = seg, (st.st_ino, st.st_dev)
        return seg.buf

    def prune(self) -> int:
        """Close the cached segments whose file was unlinked; return how many were closed."""
        with self._lock:
            return self._prune_locked()

    def _prune_locked(self) -> int:
        closed = 0
        for name, seg in list(self._open.items()):
            try:
                current = os.stat(seg.path)
                alive = (current.st_ino, current.st_dev) == self._identity.get(name)
            except FileNotFoundError:
                alive = False
            if not alive and self._close(name):
                closed += 1
        return closed

    def _close(self, name: str) -> bool:
        seg = self._open[name]
        try:
            seg.close()
        except VgpusimError:  # a view is still exported (a workload in flight): retry next time
            return False
        del self._open[name]
        self._identity.pop(name, None)
        return True

    def forget(self, segment: str) -> None:
        with self._lock:
            if segment in self._open:
                self._close(segment)

    def close(self) -> None:
        with self._lock:
            for name in list(self._open):
                self._close(name)
