"""The frontend's peers: the ops tables it calls, their domain types, and their gRPC implementations.

The frontend needs a few operations of each peer (its QEMU would call the same ioctls of the
kernel).  Each set is a :class:`typing.Protocol` (an ops table) so that the VM and device logic is
tested against the in-memory fakes of :mod:`vgpusim.qemu_frontend.fakes`; :class:`GrpcPeers`
implements them over the typed client library (:mod:`vgpusim.client`), which sets a deadline on
every unary call and raises the peer's domain error (``UNKNOWN_DEVICE``, ``DEVICE_IN_USE``...)
unchanged.  Answers are returned as the frozen dataclasses below or core types, never protos.

Glossary:
- owner: this frontend's id (``qemu_frontend-<pid>-<random>``): it owns every container in
  iommu_type2 and opens every device on vgpu_bus; one KeepAlive and one WatchOwnership stream of
  that owner live as long as the frontend.
- ticket: the vendor's fast-path channel of an opened device (broker socket path + one-time token).
- plane: ``vfio_device_gfx_plane_info`` of the dmabuf flavour; ``dmabuf_id`` 0 = plane disabled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from vgpusim.client import BusClient, GfxClient, IommuClient
from vgpusim.common.clients import open_channel, translate_errors, wait_for_serving
from vgpusim.common.errors import TimedOut
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx_pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as iommu_pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as iommu_grpc
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.core.memory import Region
from vgpusim.qemu_frontend.core.regions import DeviceDescription, RegionInfo

__all__ = [
    "BusPeer",
    "ChannelTicket",
    "Framebuffer",
    "GfxPeer",
    "GrpcPeers",
    "IommuPeer",
    "OwnershipEvent",
    "Plane",
    "ReleaseRequest",
    "describe_from_pb",
]


@dataclass(frozen=True, slots=True)
class ChannelTicket:
    """Where to fetch an opened device's channel: the broker's UNIX socket and a one-time token."""

    broker: str
    token: str


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """The REQ interrupt of vgpu_bus: please close ``uuid`` (``count`` grows with each repeat)."""

    uuid: str
    count: int


OwnershipEvent = ReleaseRequest | None
"""What WatchOwnership yields: ``None`` once when the bus tracks the owner, then release requests."""


@dataclass(frozen=True, slots=True)
class Plane:
    """A display plane as ``VFIO_DEVICE_QUERY_GFX_PLANE`` reports it (zeroed when disabled)."""

    drm_format: int = 0
    drm_format_mod: int = 0
    width: int = 0
    height: int = 0
    stride: int = 0
    size: int = 0
    x_pos: int = 0
    y_pos: int = 0
    x_hot: int = 0
    y_hot: int = 0
    dmabuf_id: int = 0


@dataclass(frozen=True, slots=True)
class Framebuffer:
    """The bytes of an exported plane (``VFIO_DEVICE_GET_GFX_DMABUF`` then a read of the dma-buf)."""

    plane: Plane
    data: bytes


class IommuPeer(Protocol):
    """What the frontend asks of iommu_type2 (QEMU's container fd ioctls)."""

    async def create_container(self, owner: str, *, hardware: bool, memlock_limit_bytes: int) -> str: ...

    async def destroy_container(self, container_id: str) -> int: ...

    async def register_segment(self, container_id: str, segment: str, size: int) -> None: ...

    async def unregister_segment(self, container_id: str, segment: str) -> None: ...

    async def map_ram(self, container_id: str, segment: str, regions: Sequence[Region]) -> int: ...

    async def unmap_all(self, container_id: str) -> int: ...

    async def hold_owner(self, owner: str, on_ready: Callable[[], None]) -> None:
        """Keep ``owner``'s containers alive: calls ``on_ready`` once the stream is up, then returns
        when the stream ends (the mapper restarted) or raises; cancelling it drops the containers."""
        ...


class BusPeer(Protocol):
    """What the frontend asks of vgpu_bus (opening a device fd, the REQ interrupt)."""

    async def open_device(self, uuid: str, owner: str, container_id: str) -> ChannelTicket: ...

    async def close_device(self, uuid: str, owner: str) -> None: ...

    def watch_ownership(self, owner: str) -> AsyncGenerator[OwnershipEvent, None]: ...


class GfxPeer(Protocol):
    """What the frontend asks of gfx_host (device description, reset, display)."""

    async def describe_device(self, uuid: str) -> DeviceDescription: ...

    async def reset_vgpu(self, uuid: str) -> None: ...

    async def query_plane(self, uuid: str, plane_type: int) -> Plane: ...

    async def get_framebuffer(self, uuid: str, dmabuf_id: int) -> Framebuffer: ...


def describe_from_pb(resp: gfx_pb.DescribeDeviceResponse) -> DeviceDescription:
    """gfx_host's DescribeDevice answer as the core's device description."""
    regions = tuple(
        RegionInfo(
            index=r.index,
            flags=r.flags,
            size=r.size,
            sparse_areas=tuple((a.offset, a.size) for a in r.sparse_areas),
            cap_type=r.cap_type,
            cap_subtype=r.cap_subtype,
        )
        for r in resp.regions
    )
    num_irqs = max((i.index for i in resp.irqs), default=-1) + 1
    return DeviceDescription(flags=resp.flags, regions=regions, num_irqs=num_irqs)


def _plane(p: gfx_pb.GfxPlane) -> Plane:
    return Plane(
        p.drm_format, p.drm_format_mod, p.width, p.height, p.stride, p.size,
        p.x_pos, p.y_pos, p.x_hot, p.y_hot, p.dmabuf_id,
    )  # fmt: skip


class _GrpcIommu:
    def __init__(self, client: IommuClient, channel: grpc.aio.Channel, timeout: float) -> None:
        self._c = client
        self._stub = iommu_grpc.IommuType2ServiceStub(channel)
        self._timeout = timeout

    async def create_container(self, owner: str, *, hardware: bool, memlock_limit_bytes: int) -> str:
        mode = iommu_pb.IOMMU_MODE_HARDWARE if hardware else iommu_pb.IOMMU_MODE_EMULATED
        return await self._c.create_container(owner, mode=mode, memlock_limit_bytes=memlock_limit_bytes)

    async def destroy_container(self, container_id: str) -> int:
        return await self._c.destroy_container(container_id)

    async def register_segment(self, container_id: str, segment: str, size: int) -> None:
        await self._c.register_segment(container_id, segment, size)

    async def unregister_segment(self, container_id: str, segment: str) -> None:
        await self._c.unregister_segment(container_id, segment)

    async def map_ram(self, container_id: str, segment: str, regions: Sequence[Region]) -> int:
        prot = iommu_pb.Prot(read=True, write=True)
        mappings = [
            iommu_pb.DmaMapping(iova=r.gpa, size=r.size, segment=segment, offset=r.offset, prot=prot)
            for r in regions
        ]
        return await self._c.map_dma_batch(container_id, mappings)

    async def unmap_all(self, container_id: str) -> int:
        resp = await self._c.unmap_dma(container_id, unmap_all=True)
        return resp.unmapped_bytes

    async def hold_owner(self, owner: str, on_ready: Callable[[], None]) -> None:
        call = self._stub.KeepAlive(iommu_pb.KeepAliveRequest(owner=owner))
        try:
            with translate_errors(self._c.peer):
                try:
                    async with asyncio.timeout(self._timeout):
                        first = await call.read()
                except TimeoutError:
                    raise TimedOut(
                        f"{self._c.peer}: no KeepAlive answer", reason="KEEPALIVE_TIMEOUT"
                    ) from None
                if first is grpc.aio.EOF:
                    return
                on_ready()
                while await call.read() is not grpc.aio.EOF:
                    pass
        finally:
            call.cancel()


class _GrpcBus:
    def __init__(self, client: BusClient) -> None:
        self._c = client

    async def open_device(self, uuid: str, owner: str, container_id: str) -> ChannelTicket:
        resp = await self._c.open_device(uuid, owner, container_id)
        return ChannelTicket(resp.channel.broker, resp.channel.token)

    async def close_device(self, uuid: str, owner: str) -> None:
        await self._c.close_device(uuid, owner)

    async def watch_ownership(self, owner: str) -> AsyncGenerator[OwnershipEvent, None]:
        stream = self._c.watch_ownership(owner)
        try:
            async for message in stream:
                if message.HasField("release_requested"):
                    req = message.release_requested
                    yield ReleaseRequest(req.uuid, req.count)
                elif message.HasField("watching"):
                    yield None
        finally:
            await stream.aclose()


class _GrpcGfx:
    def __init__(self, client: GfxClient) -> None:
        self._c = client

    async def describe_device(self, uuid: str) -> DeviceDescription:
        return describe_from_pb(await self._c.describe_device(uuid))

    async def reset_vgpu(self, uuid: str) -> None:
        await self._c.reset_vgpu(uuid)

    async def query_plane(self, uuid: str, plane_type: int) -> Plane:
        kind = gfx_pb.PlaneType.ValueType(plane_type)
        return _plane(await self._c.query_gfx_plane(uuid, plane_type=kind))

    async def get_framebuffer(self, uuid: str, dmabuf_id: int) -> Framebuffer:
        resp = await self._c.get_framebuffer(uuid, dmabuf_id)
        return Framebuffer(_plane(resp.plane), resp.data)


class GrpcPeers:
    """The three peers over gRPC channels; create it inside the running loop, ``close`` it at the end."""

    SERVICES = ("iommu_type2", "vgpu_bus", "gfx_host")

    def __init__(self, config: FrontendConfig) -> None:
        t = config.peer_timeout_s
        self._channels = {svc: open_channel(config.target_of(svc)) for svc in self.SERVICES}
        ch, target = self._channels, config.target_of
        iommu = IommuClient(ch["iommu_type2"], target=target("iommu_type2"), timeout=t)
        self.iommu: IommuPeer = _GrpcIommu(iommu, ch["iommu_type2"], t)
        self.bus: BusPeer = _GrpcBus(BusClient(ch["vgpu_bus"], target=target("vgpu_bus"), timeout=t))
        self.gfx: GfxPeer = _GrpcGfx(GfxClient(ch["gfx_host"], target=target("gfx_host"), timeout=t))

    async def wait_serving(self, timeout: float) -> None:
        """Return once all three peers report SERVING (TimedOut naming the first that does not)."""
        for svc in self.SERVICES:
            try:
                await wait_for_serving(self._channels[svc], timeout=timeout)
            except TimedOut as exc:
                meta = {**exc.metadata, "peer": svc}
                raise TimedOut(f"{svc}: {exc.message}", reason=exc.reason, metadata=meta) from None

    async def close(self) -> None:
        """Close the channels (in-flight calls are cancelled)."""
        for channel in self._channels.values():
            await channel.close()
