"""gRPC servers for the in-memory peers of :mod:`.fakes`: iommu_type2, vgpu_bus and gfx_host on sockets.

Contract tests of the frontend (and the multi-process test of its server) talk to real grpc.aio
servers: :func:`serve_fake_peers` runs one per peer on the state dir's UNIX sockets, with health
and reflection, each servicer translating the few RPCs the frontend calls to the in-memory fakes
(domain errors become rich statuses through ``@rpc_method``, as in the real services).

Glossary:
- fakes: a :class:`~.fakes.FakePeers`; its gfx_host broker is started and stopped here too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.rpc import rpc_method
from vgpusim.common.server import running_server
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as gfx_grpc
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as iommu
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as iommu_grpc
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as bus
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as bus_grpc
from vgpusim.qemu_frontend.clients import Plane
from vgpusim.qemu_frontend.core.memory import Region
from vgpusim.qemu_frontend.fakes import FakePeers

__all__ = ["serve_fake_peers"]


class IommuServicer(iommu_grpc.IommuType2ServiceServicer):
    def __init__(self, fakes: FakePeers) -> None:
        self.f = fakes.iommu

    @rpc_method
    async def CreateContainer(self, request: Any, context: Any) -> iommu.CreateContainerResponse:
        hardware = request.mode == iommu.IOMMU_MODE_HARDWARE
        cid = await self.f.create_container(
            request.owner, hardware=hardware, memlock_limit_bytes=request.memlock_limit_bytes
        )
        return iommu.CreateContainerResponse(container_id=cid)

    @rpc_method
    async def DestroyContainer(self, request: Any, context: Any) -> iommu.DestroyContainerResponse:
        return iommu.DestroyContainerResponse(
            unmapped_bytes=await self.f.destroy_container(request.container_id)
        )

    @rpc_method
    async def KeepAlive(self, request: Any, context: Any) -> AsyncIterator[iommu.KeepAliveResponse]:
        ready = asyncio.Event()
        hold = asyncio.create_task(self.f.hold_owner(request.owner, ready.set))
        try:
            await ready.wait()
            yield iommu.KeepAliveResponse(owner=request.owner)
            await hold
        finally:
            hold.cancel()

    @rpc_method
    async def RegisterSegment(self, request: Any, context: Any) -> iommu.RegisterSegmentResponse:
        await self.f.register_segment(request.container_id, request.segment, request.size)
        return iommu.RegisterSegmentResponse()

    @rpc_method
    async def UnregisterSegment(self, request: Any, context: Any) -> iommu.UnregisterSegmentResponse:
        await self.f.unregister_segment(request.container_id, request.segment)
        return iommu.UnregisterSegmentResponse()

    @rpc_method
    async def MapDmaBatch(self, request: Any, context: Any) -> iommu.MapDmaBatchResponse:
        if not all(m.prot.read and m.prot.write for m in request.mappings):
            raise AssertionError("the frontend maps guest RAM READ|WRITE")
        segments = {m.segment for m in request.mappings}
        assert len(segments) == 1
        regions = [Region(m.iova, m.size, m.offset) for m in request.mappings]
        return iommu.MapDmaBatchResponse(
            mapped=await self.f.map_ram(request.container_id, segments.pop(), regions)
        )

    @rpc_method
    async def UnmapDma(self, request: Any, context: Any) -> iommu.UnmapDmaResponse:
        assert request.HasField("all")
        return iommu.UnmapDmaResponse(unmapped_bytes=await self.f.unmap_all(request.container_id))


class BusServicer(bus_grpc.VgpuBusServiceServicer):
    def __init__(self, fakes: FakePeers) -> None:
        self.f = fakes.bus

    @rpc_method
    async def OpenDevice(self, request: Any, context: Any) -> bus.OpenDeviceResponse:
        ticket = await self.f.open_device(request.uuid, request.owner, request.container_id)
        channel = bus.FastPathChannel(broker=ticket.broker, token=ticket.token)
        return bus.OpenDeviceResponse(device=bus.Device(uuid=request.uuid), channel=channel)

    @rpc_method
    async def CloseDevice(self, request: Any, context: Any) -> bus.CloseDeviceResponse:
        await self.f.close_device(request.uuid, request.owner)
        return bus.CloseDeviceResponse()

    @rpc_method
    async def WatchOwnership(self, request: Any, context: Any) -> AsyncIterator[bus.WatchOwnershipResponse]:
        async with contextlib.aclosing(self.f.watch_ownership(request.owner)) as events:
            async for event in events:
                if event is None:
                    yield bus.WatchOwnershipResponse(watching=bus.OwnershipWatching(owner=request.owner))
                else:
                    req = bus.ReleaseRequested(uuid=event.uuid, count=event.count)
                    yield bus.WatchOwnershipResponse(release_requested=req)


def _plane(p: Plane) -> gfx.GfxPlane:
    return gfx.GfxPlane(
        drm_format=p.drm_format,
        width=p.width,
        height=p.height,
        stride=p.stride,
        size=p.size,
        dmabuf_id=p.dmabuf_id,
    )


class GfxServicer(gfx_grpc.GfxHostServiceServicer):
    def __init__(self, fakes: FakePeers) -> None:
        self.f = fakes.gfx

    @rpc_method
    async def DescribeDevice(self, request: Any, context: Any) -> gfx.DescribeDeviceResponse:
        d = await self.f.describe_device(request.uuid)
        regions = [
            gfx.RegionInfo(
                index=r.index,
                flags=r.flags,
                size=r.size,
                offset=r.offset,
                sparse_areas=[gfx.SparseArea(offset=o, size=s) for o, s in r.sparse_areas],
            )
            for r in d.regions
        ]
        irqs = [gfx.IrqInfo(index=i, flags=1, count=1) for i in range(d.num_irqs)]
        return gfx.DescribeDeviceResponse(flags=d.flags, regions=regions, irqs=irqs)

    @rpc_method
    async def ResetVgpu(self, request: Any, context: Any) -> gfx.ResetVgpuResponse:
        await self.f.reset_vgpu(request.uuid)
        return gfx.ResetVgpuResponse()

    @rpc_method
    async def QueryGfxPlane(self, request: Any, context: Any) -> gfx.QueryGfxPlaneResponse:
        return gfx.QueryGfxPlaneResponse(
            plane=_plane(await self.f.query_plane(request.uuid, request.plane_type))
        )

    @rpc_method
    async def GetFramebuffer(self, request: Any, context: Any) -> gfx.GetFramebufferResponse:
        fb = await self.f.get_framebuffer(request.uuid, request.dmabuf_id)
        return gfx.GetFramebufferResponse(plane=_plane(fb.plane), data=fb.data)


def _add(svc: str, fakes: FakePeers) -> Callable[[grpc.aio.Server], list[str]]:
    # The servicers implement only what the frontend calls; every other RPC keeps the generated
    # base class's UNIMPLEMENTED answer, which the stubs declare abstract (hence the ignores).
    def add(server: grpc.aio.Server) -> list[str]:
        if svc == "iommu_type2":
            iommu_grpc.add_IommuType2ServiceServicer_to_server(IommuServicer(fakes), server)  # type: ignore[abstract]
            return [iommu.DESCRIPTOR.services_by_name["IommuType2Service"].full_name]
        if svc == "vgpu_bus":
            bus_grpc.add_VgpuBusServiceServicer_to_server(BusServicer(fakes), server)  # type: ignore[abstract]
            return [bus.DESCRIPTOR.services_by_name["VgpuBusService"].full_name]
        gfx_grpc.add_GfxHostServiceServicer_to_server(GfxServicer(fakes), server)  # type: ignore[abstract]
        return [gfx.DESCRIPTOR.services_by_name["GfxHostService"].full_name]

    return add


@contextlib.asynccontextmanager
async def serve_fake_peers(state_dir: Path, fakes: FakePeers) -> AsyncIterator[None]:
    """Serve ``fakes`` as iommu_type2, vgpu_bus and gfx_host of ``state_dir`` during the block."""
    config = BaseServiceConfig(state_dir=state_dir, metrics_port=-1, stop_grace_s=0.5)
    async with contextlib.AsyncExitStack() as stack:
        for svc in ("iommu_type2", "vgpu_bus", "gfx_host"):
            await stack.enter_async_context(
                running_server(svc, config, _add(svc, fakes), write_status_file=False)
            )
        await fakes.gfx.start()
        stack.push_async_callback(fakes.gfx.stop)
        yield
