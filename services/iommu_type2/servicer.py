"""The gRPC servicer of ``vgpusim.iommu_type2.v1.IommuType2Service``: translation only.

Each RPC converts its request (``convert``), calls the core (:class:`~vgpusim.iommu_type2.core.Mapper`
and the :class:`~vgpusim.iommu_type2.core.Container` it resolves), and converts the answer back.
Domain errors leave through :func:`~vgpusim.common.rpc.rpc_method` as rich statuses (code,
``ErrorInfo`` reason, ``metadata["errno"]``). Besides that, the servicer:

- times the mapping calls into ``vgpusim_iommu_map_duration_seconds{op}``;
- tells the :class:`~.segments.ShmSegmentStore` which segments are still registered after
  anything that can release one (``UnregisterSegment``, ``DestroyContainer``, an owner's end), so
  the store unmaps the others;
- runs the two long-lived calls through ``streams``: ``KeepAlive`` holds an owner's containers,
  ``WatchUnmap`` is a device's unmap listener (unregistered, dropping its pins, when it ends;
  ended by the server when the device is detached or its container destroyed).

The fast paths (``PinPages``, ``UnpinPages``, ``MapDmaBatch``) do one dict lookup, the core call
and one conversion step per run or mapping: nothing per page.

Glossary:
- handler task: the task grpc.aio runs one RPC in; cancelled when the client goes away.
- release: a segment no container registers any more; its mapping is closed.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

import grpc

from vgpusim.common.rpc import rpc_method
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2 import convert
from vgpusim.iommu_type2.core import Mapper
from vgpusim.iommu_type2.core.checks import check_name
from vgpusim.iommu_type2.metrics import IommuMetrics
from vgpusim.iommu_type2.segments import ShmSegmentStore
from vgpusim.iommu_type2.streams import KeepAlives, UnmapStream

__all__ = ["IommuType2Servicer"]

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)


class IommuType2Servicer(pb_grpc.IommuType2ServiceServicer):
    """``IommuType2Service`` over one mapper. ``default_memlock_limit_bytes`` replaces a request's 0."""

    def __init__(
        self,
        mapper: Mapper,
        store: ShmSegmentStore,
        metrics: IommuMetrics,
        *,
        default_memlock_limit_bytes: int = 0,
    ) -> None:
        self._mapper = mapper
        self._store = store
        self._default_memlock = default_memlock_limit_bytes
        self._watches: dict[tuple[str, str], UnmapStream] = {}  # (container id, device) -> its call
        self.keepalives = KeepAlives(mapper, released=self._owner_released)
        """The open ``KeepAlive`` calls, per owner."""
        duration = metrics.duration
        self._t_map, self._t_batch, self._t_unmap = duration["map"], duration["map_batch"], duration["unmap"]
        self._t_pin, self._t_unpin = duration["pin"], duration["unpin"]

    def _release_segments(self) -> None:
        self._store.retain({name for info in self._mapper.containers() for name in info.segments})

    def _end_stale_watches(self) -> None:
        """End the ``WatchUnmap`` calls of devices no longer attached (detached, destroyed)."""
        for key, stream in list(self._watches.items()):
            if self._mapper.device_container(key[1]) != key[0]:
                del self._watches[key]
                stream.close()

    async def _owner_released(self, owner: str) -> None:
        self._end_stale_watches()
        self._release_segments()

    # -- containers -------------------------------------------------------------------------

    @rpc_method
    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        container = self._mapper.create_container(
            request.owner,
            convert.mode_in(request.mode),
            request.memlock_limit_bytes or self._default_memlock,
        )
        return pb.CreateContainerResponse(container_id=container.container_id)

    @rpc_method
    async def DestroyContainer(
        self, request: pb.DestroyContainerRequest, context: Context
    ) -> pb.DestroyContainerResponse:
        try:
            unmapped = await self._mapper.destroy_container(request.container_id)
        finally:
            self._end_stale_watches()
            self._release_segments()
        return pb.DestroyContainerResponse(unmapped_bytes=unmapped)

    @rpc_method
    async def KeepAlive(self, request: pb.KeepAliveRequest, context: Context) -> None:  # type: ignore[override]
        check_name("owner", request.owner)
        async with self.keepalives.hold(request.owner):
            await context.write(pb.KeepAliveResponse(owner=request.owner))
            await asyncio.Event().wait()  # until the client goes away: the call is cancelled

    @rpc_method
    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        infos = self._mapper.containers(request.owner or None)
        return pb.ListContainersResponse(containers=[convert.container_out(info) for info in infos])

    @rpc_method
    async def GetInfo(self, request: pb.GetInfoRequest, context: Context) -> pb.GetInfoResponse:
        return convert.info_out(self._mapper.container(request.container_id).get_info())

    @rpc_method
    async def CheckExtension(
        self, request: pb.CheckExtensionRequest, context: Context
    ) -> pb.CheckExtensionResponse:
        container = self._mapper.container(request.container_id)
        supported = container.check_extension(convert.extension_in(request.extension))
        return pb.CheckExtensionResponse(supported=supported)

    # -- segments and devices ---------------------------------------------------------------

    @rpc_method
    async def RegisterSegment(
        self, request: pb.RegisterSegmentRequest, context: Context
    ) -> pb.RegisterSegmentResponse:
        container = self._mapper.container(request.container_id)
        try:
            container.register_segment(request.segment, request.size)
        finally:
            self._release_segments()  # e.g. the view mapped for a refused registration
        return pb.RegisterSegmentResponse()

    @rpc_method
    async def UnregisterSegment(
        self, request: pb.UnregisterSegmentRequest, context: Context
    ) -> pb.UnregisterSegmentResponse:
        self._mapper.container(request.container_id).unregister_segment(request.segment)
        self._release_segments()
        return pb.UnregisterSegmentResponse()

    @rpc_method
    async def AttachDevice(
        self, request: pb.AttachDeviceRequest, context: Context
    ) -> pb.AttachDeviceResponse:
        self._mapper.container(request.container_id).attach_device(request.device)
        return pb.AttachDeviceResponse()

    @rpc_method
    async def DetachDevice(
        self, request: pb.DetachDeviceRequest, context: Context
    ) -> pb.DetachDeviceResponse:
        unpinned = self._mapper.container(request.container_id).detach_device(request.device)
        self._end_stale_watches()
        return pb.DetachDeviceResponse(unpinned_pages=unpinned)

    # -- mappings ---------------------------------------------------------------------------

    @rpc_method
    async def MapDma(self, request: pb.MapDmaRequest, context: Context) -> pb.MapDmaResponse:
        container = self._mapper.container(request.container_id)
        mapping = convert.mapping_in(request.mapping)
        start = perf_counter()
        try:
            container.map_dma(mapping)
        finally:
            self._t_map.observe(perf_counter() - start)
        return pb.MapDmaResponse()

    @rpc_method
    async def MapDmaBatch(self, request: pb.MapDmaBatchRequest, context: Context) -> pb.MapDmaBatchResponse:
        container = self._mapper.container(request.container_id)
        mappings = convert.mappings_in(request.mappings)
        start = perf_counter()
        try:
            mapped = container.map_dma_batch(mappings)
        finally:
            self._t_batch.observe(perf_counter() - start)
        return pb.MapDmaBatchResponse(mapped=mapped)

    @rpc_method
    async def UnmapDma(self, request: pb.UnmapDmaRequest, context: Context) -> pb.UnmapDmaResponse:
        container = self._mapper.container(request.container_id)
        iova, size, unmap_all = convert.unmap_target_in(request)
        start = perf_counter()
        try:
            result = await container.unmap_dma(
                iova, size, unmap_all=unmap_all, dirty_pgsize=request.dirty_bitmap_pgsize
            )
        finally:
            self._t_unmap.observe(perf_counter() - start)
        return pb.UnmapDmaResponse(
            unmapped_bytes=result.unmapped_bytes, dirty_bitmap=result.dirty_bitmap or b""
        )

    # -- device calls -----------------------------------------------------------------------

    @rpc_method
    async def PinPages(self, request: pb.PinPagesRequest, context: Context) -> pb.PinPagesResponse:
        container = self._mapper.container(request.container_id)
        prot = convert.prot_in(request.prot)
        start = perf_counter()
        try:
            runs = container.pin_pages(request.device, request.iova, request.npage, prot)
        finally:
            self._t_pin.observe(perf_counter() - start)
        return pb.PinPagesResponse(runs=convert.runs_out(runs))

    @rpc_method
    async def UnpinPages(self, request: pb.UnpinPagesRequest, context: Context) -> pb.UnpinPagesResponse:
        container = self._mapper.container(request.container_id)
        start = perf_counter()
        try:
            released = container.unpin_pages(request.device, request.iova, request.npage)
        finally:
            self._t_unpin.observe(perf_counter() - start)
        return pb.UnpinPagesResponse(released_pages=released)

    @rpc_method
    async def WatchUnmap(self, request_iterator: Any, context: Context) -> None:  # type: ignore[override]
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        container_id, device = convert.registration_in(first)
        container = self._mapper.container(container_id)
        stream = UnmapStream()
        container.watch_unmap(device, stream)
        key = (container_id, device)
        self._watches[key] = stream
        try:
            registered = pb.UnmapRegistered(container_id=container_id, device=device)
            await context.write(pb.WatchUnmapResponse(registered=registered))
            await stream.run(context)
        finally:
            if self._watches.get(key) is stream:  # still this call's registration
                del self._watches[key]
                container.unwatch_unmap(device)  # drops the device's pins
            stream.close()

    @rpc_method
    async def DmaRead(self, request: pb.DmaReadRequest, context: Context) -> pb.DmaReadResponse:
        container = self._mapper.container(request.container_id)
        return pb.DmaReadResponse(data=container.dma_read(request.device, request.iova, request.length))

    @rpc_method
    async def DmaWrite(self, request: pb.DmaWriteRequest, context: Context) -> pb.DmaWriteResponse:
        self._mapper.container(request.container_id).dma_write(request.device, request.iova, request.data)
        return pb.DmaWriteResponse()

    @rpc_method
    async def Translate(self, request: pb.TranslateRequest, context: Context) -> pb.TranslateResponse:
        container = self._mapper.container(request.container_id)
        runs = container.translate(request.device, request.iova, request.size, request.write)
        return pb.TranslateResponse(runs=convert.runs_out(runs))

    # -- dirty pages and faults -------------------------------------------------------------

    @rpc_method
    async def SetDirtyTracking(
        self, request: pb.SetDirtyTrackingRequest, context: Context
    ) -> pb.SetDirtyTrackingResponse:
        self._mapper.container(request.container_id).set_dirty_tracking(request.enabled)
        return pb.SetDirtyTrackingResponse()

    @rpc_method
    async def GetDirtyBitmap(
        self, request: pb.GetDirtyBitmapRequest, context: Context
    ) -> pb.GetDirtyBitmapResponse:
        container = self._mapper.container(request.container_id)
        bitmap = container.get_dirty_bitmap(request.iova, request.size, request.pgsize)
        return pb.GetDirtyBitmapResponse(bitmap=bitmap)

    @rpc_method
    async def ListFaults(self, request: pb.ListFaultsRequest, context: Context) -> pb.ListFaultsResponse:
        return convert.faults_out(self._mapper.container(request.container_id).faults())
