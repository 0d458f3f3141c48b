"""Typed client of ``vgpusim.iommu_type2.v1.IommuType2Service``: containers, DMA maps, pins, unmap events.

One method per RPC, keyword arguments, returning the inner value (a container id, a list of
``HostRun``, the bytes read...).  The two long-lived streams have helpers shaped for their use:
:meth:`IommuClient.keep_alive` is an async context manager holding an owner's containers alive,
and :meth:`IommuClient.watch_unmap` opens an :class:`UnmapWatch` to iterate unmap events and
acknowledge each.

Glossary:
- container: one DMA address space (a VM's), owned by ``owner``; ``IOMMU_MODE_EMULATED`` (mdev
  pins) or ``IOMMU_MODE_HARDWARE`` (every DMA checked).
- segment: a shared-memory file registered with a container; mappings point into it.
- IOVA: the I/O virtual address a device uses (= guest-physical address for a VM).
- run: ``HostRun(iova, segment, offset, length)``, a contiguous piece of host memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import grpc

from vgpusim.client._transport import DEFAULT_TIMEOUT, ServiceClient, translate_errors
from vgpusim.common.errors import VgpusimError
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc

__all__ = ["IommuClient", "UnmapWatch"]


class UnmapWatch:
    """One device's unmap notification channel (``WatchUnmap``): iterate events, ``ack`` each.

    Use as ``async with iommu.watch_unmap(container_id, device) as watch: async for ev in watch``;
    entering waits for the server's ``registered`` answer, leaving cancels the stream.
    """

    def __init__(
        self, stream_call: Any, container_id: str, device: str, *, peer: str, timeout: float
    ) -> None:
        self._call = stream_call
        self._peer = peer
        self._timeout = timeout
        self.container_id = container_id
        self.device = device

    async def __aenter__(self) -> UnmapWatch:
        register = pb.UnmapRegistration(container_id=self.container_id, device=self.device)
        try:
            with translate_errors(self._peer):
                await self._call.write(pb.WatchUnmapRequest(register=register))
                first = await _read_with_timeout(self._call, self._timeout)
        except BaseException:
            self._call.cancel()
            raise
        if first is grpc.aio.EOF or not first.HasField("registered"):
            self._call.cancel()
            raise VgpusimError("WatchUnmap ended before registering", reason="PROTOCOL_ERROR")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._call.cancel()

    def __aiter__(self) -> UnmapWatch:
        return self

    async def __anext__(self) -> pb.UnmapEvent:
        with translate_errors(self._peer):
            message = await self._call.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        event: pb.UnmapEvent = message.event
        return event

    async def ack(self, sequence: int) -> None:
        """Tell the mapper the pages of event ``sequence`` are unpinned."""
        with translate_errors(self._peer):
            await self._call.write(pb.WatchUnmapRequest(ack=pb.UnmapAck(sequence=sequence)))


async def _read_with_timeout(stream_call: Any, timeout: float) -> Any:
    """The next message of ``stream_call``, waiting at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await stream_call.read()


class IommuClient(ServiceClient):
    """The type2 IOMMU mapper (``iommu_type2``)."""

    SERVICE = "iommu_type2"

    def __init__(self, channel: grpc.aio.Channel, *, target: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, target=target, timeout=timeout)
        self._stub = pb_grpc.IommuType2ServiceStub(channel)

    # ---- containers -------------------------------------------------------------------------

    async def create_container(
        self,
        owner: str,
        *,
        mode: pb.IommuMode.ValueType = pb.IOMMU_MODE_EMULATED,
        memlock_limit_bytes: int = 0,
        timeout: float | None = None,
    ) -> str:
        """CreateContainer. Returns: the container id."""
        req = pb.CreateContainerRequest(owner=owner, mode=mode, memlock_limit_bytes=memlock_limit_bytes)
        resp = await self._unary(self._stub.CreateContainer, req, pb.CreateContainerResponse, timeout)
        return resp.container_id

    async def destroy_container(self, container_id: str, *, timeout: float | None = None) -> int:
        """DestroyContainer. Returns: the bytes unmapped."""
        req = pb.DestroyContainerRequest(container_id=container_id)
        resp = await self._unary(self._stub.DestroyContainer, req, pb.DestroyContainerResponse, timeout)
        return resp.unmapped_bytes

    @contextlib.asynccontextmanager
    async def keep_alive(
        self, owner: str, *, timeout: float | None = None
    ) -> AsyncIterator[pb.KeepAliveResponse]:
        """KeepAlive: holds ``owner``'s containers alive inside the ``async with`` block; on exit the
        stream ends and the mapper destroys them.  Entering waits for the server's first message.
        """
        stream_call = self._stub.KeepAlive(pb.KeepAliveRequest(owner=owner))
        try:
            with translate_errors(self.peer):
                first = await _read_with_timeout(stream_call, self._deadline(timeout))
            if first is grpc.aio.EOF:
                raise VgpusimError("KeepAlive ended at once", reason="PROTOCOL_ERROR")
            yield first
        finally:
            stream_call.cancel()

    async def list_containers(self, *, owner: str = "", timeout: float | None = None) -> list[pb.Container]:
        """ListContainers (of one owner, or all) with their statistics."""
        req = pb.ListContainersRequest(owner=owner)
        resp = await self._unary(self._stub.ListContainers, req, pb.ListContainersResponse, timeout)
        return list(resp.containers)

    async def get_info(self, container_id: str, *, timeout: float | None = None) -> pb.GetInfoResponse:
        """GetInfo (VFIO_IOMMU_GET_INFO): page sizes, dma_avail, migration capability."""
        req = pb.GetInfoRequest(container_id=container_id)
        return await self._unary(self._stub.GetInfo, req, pb.GetInfoResponse, timeout)

    async def check_extension(
        self, container_id: str, extension: pb.Extension.ValueType, *, timeout: float | None = None
    ) -> bool:
        """CheckExtension (VFIO_CHECK_EXTENSION). Returns: whether it is supported."""
        req = pb.CheckExtensionRequest(container_id=container_id, extension=extension)
        resp = await self._unary(self._stub.CheckExtension, req, pb.CheckExtensionResponse, timeout)
        return resp.supported

    async def register_segment(
        self, container_id: str, segment: str, size: int, *, timeout: float | None = None
    ) -> None:
        """RegisterSegment: a shared-memory file of the stack's shm dir, ``size`` bytes."""
        req = pb.RegisterSegmentRequest(container_id=container_id, segment=segment, size=size)
        await self._unary(self._stub.RegisterSegment, req, pb.RegisterSegmentResponse, timeout)

    async def unregister_segment(
        self, container_id: str, segment: str, *, timeout: float | None = None
    ) -> None:
        """UnregisterSegment. Errors: WrongState (SEGMENT_IN_USE)."""
        req = pb.UnregisterSegmentRequest(container_id=container_id, segment=segment)
        await self._unary(self._stub.UnregisterSegment, req, pb.UnregisterSegmentResponse, timeout)

    async def attach_device(self, container_id: str, device: str, *, timeout: float | None = None) -> None:
        """AttachDevice (an mdev UUID) to a container."""
        req = pb.AttachDeviceRequest(container_id=container_id, device=device)
        await self._unary(self._stub.AttachDevice, req, pb.AttachDeviceResponse, timeout)

    async def detach_device(self, container_id: str, device: str, *, timeout: float | None = None) -> int:
        """DetachDevice. Returns: the pages unpinned."""
        req = pb.DetachDeviceRequest(container_id=container_id, device=device)
        resp = await self._unary(self._stub.DetachDevice, req, pb.DetachDeviceResponse, timeout)
        return resp.unpinned_pages

    # ---- mappings ---------------------------------------------------------------------------

    async def map_dma(
        self,
        container_id: str,
        *,
        iova: int,
        size: int,
        segment: str,
        offset: int = 0,
        read: bool = True,
        write: bool = True,
        timeout: float | None = None,
    ) -> None:
        """MapDma (VFIO_IOMMU_MAP_DMA) of ``size`` bytes at ``iova`` -> ``segment`` + ``offset``."""
        mapping = pb.DmaMapping(
            iova=iova, size=size, segment=segment, offset=offset, prot=pb.Prot(read=read, write=write)
        )
        req = pb.MapDmaRequest(container_id=container_id, mapping=mapping)
        await self._unary(self._stub.MapDma, req, pb.MapDmaResponse, timeout)

    async def map_dma_batch(
        self, container_id: str, mappings: Iterable[pb.DmaMapping], *, timeout: float | None = None
    ) -> int:
        """MapDmaBatch, all or nothing. Returns: the number of mappings created."""
        req = pb.MapDmaBatchRequest(container_id=container_id, mappings=list(mappings))
        resp = await self._unary(self._stub.MapDmaBatch, req, pb.MapDmaBatchResponse, timeout)
        return resp.mapped

    async def unmap_dma(
        self,
        container_id: str,
        *,
        iova: int | None = None,
        size: int | None = None,
        unmap_all: bool = False,
        dirty_bitmap_pgsize: int = 0,
        timeout: float | None = None,
    ) -> pb.UnmapDmaResponse:
        """UnmapDma of ``[iova, iova+size)`` or of everything (``unmap_all=True``).

        Returns: the bytes unmapped and, with ``dirty_bitmap_pgsize``, the range's dirty bitmap.
        """
        req = pb.UnmapDmaRequest(container_id=container_id, dirty_bitmap_pgsize=dirty_bitmap_pgsize)
        if unmap_all:
            req.all.SetInParent()
        else:
            if iova is None or size is None:
                raise ValueError("unmap_dma needs iova and size, or unmap_all=True")
            req.range.CopyFrom(pb.UnmapRange(iova=iova, size=size))
        return await self._unary(self._stub.UnmapDma, req, pb.UnmapDmaResponse, timeout)

    # ---- pins and DMA -----------------------------------------------------------------------

    async def pin_pages(
        self,
        container_id: str,
        device: str,
        *,
        iova: int,
        npage: int,
        read: bool = True,
        write: bool = True,
        timeout: float | None = None,
    ) -> list[pb.HostRun]:
        """PinPages (vfio_pin_pages). Returns: host runs covering the pages."""
        req = pb.PinPagesRequest(
            container_id=container_id,
            device=device,
            iova=iova,
            npage=npage,
            prot=pb.Prot(read=read, write=write),
        )
        resp = await self._unary(self._stub.PinPages, req, pb.PinPagesResponse, timeout)
        return list(resp.runs)

    async def unpin_pages(
        self, container_id: str, device: str, *, iova: int, npage: int, timeout: float | None = None
    ) -> int:
        """UnpinPages. Returns: pages whose last reference was dropped."""
        req = pb.UnpinPagesRequest(container_id=container_id, device=device, iova=iova, npage=npage)
        resp = await self._unary(self._stub.UnpinPages, req, pb.UnpinPagesResponse, timeout)
        return resp.released_pages

    def watch_unmap(self, container_id: str, device: str, *, timeout: float | None = None) -> UnmapWatch:
        """WatchUnmap: an :class:`UnmapWatch` (enter it with ``async with``); ``timeout`` bounds the
        registration only.
        """
        return UnmapWatch(
            self._stub.WatchUnmap(), container_id, device, peer=self.peer, timeout=self._deadline(timeout)
        )

    async def dma_read(
        self, container_id: str, device: str, *, iova: int, length: int, timeout: float | None = None
    ) -> bytes:
        """DmaRead (vfio_dma_rw read). Returns: the bytes."""
        req = pb.DmaReadRequest(container_id=container_id, device=device, iova=iova, length=length)
        resp = await self._unary(self._stub.DmaRead, req, pb.DmaReadResponse, timeout)
        return resp.data

    async def dma_write(
        self, container_id: str, device: str, *, iova: int, data: bytes, timeout: float | None = None
    ) -> None:
        """DmaWrite (vfio_dma_rw write); marks the pages dirty."""
        req = pb.DmaWriteRequest(container_id=container_id, device=device, iova=iova, data=data)
        await self._unary(self._stub.DmaWrite, req, pb.DmaWriteResponse, timeout)

    async def translate(
        self,
        container_id: str,
        device: str,
        *,
        iova: int,
        size: int,
        write: bool = False,
        timeout: float | None = None,
    ) -> list[pb.HostRun]:
        """Translate an IOVA range for device DMA. Returns: host runs."""
        req = pb.TranslateRequest(container_id=container_id, device=device, iova=iova, size=size, write=write)
        resp = await self._unary(self._stub.Translate, req, pb.TranslateResponse, timeout)
        return list(resp.runs)

    # ---- dirty tracking and faults ----------------------------------------------------------

    async def set_dirty_tracking(
        self, container_id: str, enabled: bool, *, timeout: float | None = None
    ) -> None:
        """SetDirtyTracking (VFIO_IOMMU_DIRTY_PAGES START/STOP)."""
        req = pb.SetDirtyTrackingRequest(container_id=container_id, enabled=enabled)
        await self._unary(self._stub.SetDirtyTracking, req, pb.SetDirtyTrackingResponse, timeout)

    async def get_dirty_bitmap(
        self, container_id: str, *, iova: int, size: int, pgsize: int = 4096, timeout: float | None = None
    ) -> bytes:
        """GetDirtyBitmap. Returns: the bitmap (bit i = page ``iova + i*pgsize``)."""
        req = pb.GetDirtyBitmapRequest(container_id=container_id, iova=iova, size=size, pgsize=pgsize)
        resp = await self._unary(self._stub.GetDirtyBitmap, req, pb.GetDirtyBitmapResponse, timeout)
        return resp.bitmap

    async def list_faults(self, container_id: str, *, timeout: float | None = None) -> pb.ListFaultsResponse:
        """ListFaults (hardware mode). Returns: the recorded faults and their total."""
        req = pb.ListFaultsRequest(container_id=container_id)
        return await self._unary(self._stub.ListFaults, req, pb.ListFaultsResponse, timeout)
