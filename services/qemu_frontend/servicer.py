"""``QemuFrontendService``: VMs and the VFIO device API over gRPC, translation only.

Each RPC turns its request into a call of :class:`~vgpusim.qemu_frontend.frontend.Frontend`, of
the core (:mod:`~vgpusim.qemu_frontend.core.regions`, :mod:`~vgpusim.qemu_frontend.core.irqs`) on
an attached device, or of :mod:`.display`, and the answer into its response; ``@rpc_method``
turns domain errors into rich statuses.  Region accesses block on the shared-memory channel, so
they run in a worker thread (``asyncio.to_thread``) while the device is held by ``device.use()``.

Glossary:
- device fd offset: ``region index << 40 | offset in region`` (``VFIO_PCI_OFFSET_SHIFT``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from vgpusim.common.errors import InvalidArgument
from vgpusim.common.rpc import rpc_method
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as pb
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2_grpc as pb_grpc
from vgpusim.qemu_frontend import display
from vgpusim.qemu_frontend.clients import Plane
from vgpusim.qemu_frontend.core.irqs import irq_info
from vgpusim.qemu_frontend.core.regions import read_region, write_region
from vgpusim.qemu_frontend.frontend import Frontend
from vgpusim.qemu_frontend.guest.stats import LatencySummary
from vgpusim.qemu_frontend.vcpu import GuestState, GuestStatus, Workload
from vgpusim.qemu_frontend.vm import VmInfo

__all__ = ["QemuFrontendServicer", "add_services"]

_WORKLOAD_PB: dict[Workload, pb.Workload.ValueType] = {
    Workload.SMOKE: pb.WORKLOAD_SMOKE,
    Workload.RENDER: pb.WORKLOAD_RENDER,
    Workload.COPY: pb.WORKLOAD_COPY,
    Workload.COMPUTE: pb.WORKLOAD_COMPUTE,
    Workload.IDLE: pb.WORKLOAD_IDLE,
    Workload.HANG: pb.WORKLOAD_HANG,
    Workload.HOSTILE: pb.WORKLOAD_HOSTILE,
    Workload.LATENCY: pb.WORKLOAD_LATENCY,
}
_WORKLOADS: dict[int, Workload] = {int(v): k for k, v in _WORKLOAD_PB.items()}
_STATE_PB = {
    GuestState.STOPPED: pb.GUEST_STATE_STOPPED,
    GuestState.RUNNING: pb.GUEST_STATE_RUNNING,
    GuestState.FINISHED: pb.GUEST_STATE_FINISHED,
    GuestState.FAILED: pb.GUEST_STATE_FAILED,
}


def workload_from_pb(value: int) -> Workload:
    """The domain workload of a proto value; InvalidArgument (``BAD_WORKLOAD``) for UNSPECIFIED/unknown."""
    if value not in _WORKLOADS:
        raise InvalidArgument(f"workload {value} is not a workload", reason="BAD_WORKLOAD")
    return _WORKLOADS[value]


def vm_pb(vm: VmInfo) -> pb.Vm:
    return pb.Vm(
        vm_id=vm.vm_id,
        name=vm.name,
        memory_bytes=vm.memory_bytes,
        ram_segment=vm.ram_segment,
        container_id=vm.container_id,
        regions=[pb.MemoryRegion(gpa=r.gpa, size=r.size, offset=r.offset) for r in vm.regions],
        devices=list(vm.devices),
        guest_state=_STATE_PB[vm.guest_state],
    )


def latency_pb(summary: LatencySummary | None) -> pb.LatencySummary | None:
    """The proto of a latency summary (None stays None: the field is left unset)."""
    if summary is None:
        return None
    return pb.LatencySummary(
        count=summary.count, p50=summary.p50, p90=summary.p90, p99=summary.p99, max=summary.max
    )


def guest_pb(status: GuestStatus) -> pb.GuestStatus:
    return pb.GuestStatus(
        state=_STATE_PB[status.state],
        workload=_WORKLOAD_PB[status.workload] if status.workload else pb.WORKLOAD_UNSPECIFIED,
        commands_submitted=status.commands_submitted,
        interrupts_received=status.interrupts_received,
        frames_drawn=status.frames_drawn,
        bytes_copied=status.bytes_copied,
        hangs_detected=status.hangs_detected,
        resets=status.resets,
        first_irq_latency_us=status.first_irq_latency_us,
        error=status.error,
        irq_roundtrip_us=latency_pb(status.irq_roundtrip_us),
        mmio_read_us=latency_pb(status.mmio_read_us),
    )


def plane_pb(p: Plane) -> pb.QueryGfxPlaneResponse:
    return pb.QueryGfxPlaneResponse(
        drm_format=p.drm_format,
        drm_format_mod=p.drm_format_mod,
        width=p.width,
        height=p.height,
        stride=p.stride,
        size=p.size,
        x_pos=p.x_pos,
        y_pos=p.y_pos,
        x_hot=p.x_hot,
        y_hot=p.y_hot,
        dmabuf_id=p.dmabuf_id,
    )


class QemuFrontendServicer(pb_grpc.QemuFrontendServiceServicer):
    """The RPCs of ``vgpusim.qemu_frontend.v1.QemuFrontendService``."""

    def __init__(self, frontend: Frontend) -> None:
        self.f = frontend

    # ---- VMs --------------------------------------------------------------------------------

    @rpc_method
    async def CreateVm(self, request: pb.CreateVmRequest, context: Any) -> pb.CreateVmResponse:
        vm = await self.f.create_vm(request.name, request.memory_bytes, request.hardware_iommu)
        return pb.CreateVmResponse(vm=vm_pb(vm))

    @rpc_method
    async def DestroyVm(self, request: pb.DestroyVmRequest, context: Any) -> pb.DestroyVmResponse:
        await self.f.destroy_vm(request.vm_id)
        return pb.DestroyVmResponse()

    @rpc_method
    async def GetVm(self, request: pb.GetVmRequest, context: Any) -> pb.GetVmResponse:
        return pb.GetVmResponse(vm=vm_pb(self.f.get_vm(request.vm_id)))

    @rpc_method
    async def ListVms(self, request: pb.ListVmsRequest, context: Any) -> pb.ListVmsResponse:
        return pb.ListVmsResponse(vms=[vm_pb(vm) for vm in self.f.list_vms()])

    @rpc_method
    async def AttachDevice(self, request: pb.AttachDeviceRequest, context: Any) -> pb.AttachDeviceResponse:
        vm = await self.f.attach_device(request.vm_id, request.uuid)
        return pb.AttachDeviceResponse(vm=vm_pb(vm))

    @rpc_method
    async def DetachDevice(self, request: pb.DetachDeviceRequest, context: Any) -> pb.DetachDeviceResponse:
        await self.f.detach_device(request.vm_id, request.uuid)
        return pb.DetachDeviceResponse()

    # ---- the guest --------------------------------------------------------------------------

    @rpc_method
    async def StartGuest(self, request: pb.StartGuestRequest, context: Any) -> pb.StartGuestResponse:
        self.f.vm(request.vm_id)  # UNKNOWN_VM before a bad workload, as the proto orders them
        workload = workload_from_pb(request.workload)
        status = await self.f.start_guest(request.vm_id, workload, dict(request.params))
        return pb.StartGuestResponse(status=guest_pb(status))

    @rpc_method
    async def StopGuest(self, request: pb.StopGuestRequest, context: Any) -> pb.StopGuestResponse:
        return pb.StopGuestResponse(status=guest_pb(await self.f.stop_guest(request.vm_id)))

    @rpc_method
    async def GetGuestStatus(
        self, request: pb.GetGuestStatusRequest, context: Any
    ) -> pb.GetGuestStatusResponse:
        return pb.GetGuestStatusResponse(status=guest_pb(self.f.guest_status(request.vm_id)))

    # ---- the VFIO device API ----------------------------------------------------------------

    @rpc_method
    async def GetDeviceInfo(self, request: pb.GetDeviceInfoRequest, context: Any) -> pb.GetDeviceInfoResponse:
        desc = self.f.device(request.vm_id, request.uuid).description
        return pb.GetDeviceInfoResponse(
            flags=desc.flags, num_regions=desc.num_regions, num_irqs=desc.num_irqs
        )

    @rpc_method
    async def GetRegionInfo(self, request: pb.GetRegionInfoRequest, context: Any) -> pb.GetRegionInfoResponse:
        r = self.f.device(request.vm_id, request.uuid).description.region(request.index)
        return pb.GetRegionInfoResponse(
            index=r.index,
            flags=r.flags,
            size=r.size,
            offset=r.offset,
            sparse_areas=[pb.SparseArea(offset=o, size=s) for o, s in r.sparse_areas],
            cap_type=r.cap_type,
            cap_subtype=r.cap_subtype,
        )

    @rpc_method
    async def ReadRegion(self, request: pb.ReadRegionRequest, context: Any) -> pb.ReadRegionResponse:
        async with self.f.device(request.vm_id, request.uuid).use() as dev:
            data = await asyncio.to_thread(
                read_region, dev.port, dev.description, request.offset, request.size
            )
        return pb.ReadRegionResponse(data=data)

    @rpc_method
    async def WriteRegion(self, request: pb.WriteRegionRequest, context: Any) -> pb.WriteRegionResponse:
        async with self.f.device(request.vm_id, request.uuid).use() as dev:
            await asyncio.to_thread(write_region, dev.port, dev.description, request.offset, request.data)
        return pb.WriteRegionResponse()

    @rpc_method
    async def GetIrqInfo(self, request: pb.GetIrqInfoRequest, context: Any) -> pb.GetIrqInfoResponse:
        self.f.device(request.vm_id, request.uuid)
        info = irq_info(request.index)
        return pb.GetIrqInfoResponse(index=info.index, flags=info.flags, count=info.count)

    @rpc_method
    async def SetIrqs(self, request: pb.SetIrqsRequest, context: Any) -> pb.SetIrqsResponse:
        device = self.f.device(request.vm_id, request.uuid)
        device.irqs.set_irqs(request.flags, request.index, request.start, request.count, request.data)
        return pb.SetIrqsResponse()

    @rpc_method
    async def WatchInterrupts(
        self, request: pb.WatchInterruptsRequest, context: Any
    ) -> AsyncIterator[pb.WatchInterruptsResponse]:
        async with self.f.device(request.vm_id, request.uuid).watch() as stream:
            while (irq := await stream.get()) is not None:
                yield pb.WatchInterruptsResponse(
                    index=irq.index, vector=irq.vector, raised_ns=irq.raised_ns, sequence=irq.sequence
                )

    @rpc_method
    async def ResetDevice(self, request: pb.ResetDeviceRequest, context: Any) -> pb.ResetDeviceResponse:
        async with self.f.device(request.vm_id, request.uuid).use() as dev:
            await self.f.peers.gfx.reset_vgpu(dev.uuid)
        return pb.ResetDeviceResponse()

    @rpc_method
    async def QueryGfxPlane(self, request: pb.QueryGfxPlaneRequest, context: Any) -> pb.QueryGfxPlaneResponse:
        device = self.f.device(request.vm_id, request.uuid)
        plane = await display.query_plane(
            self.f.peers.gfx, device.uuid, request.flags, request.drm_plane_type
        )
        return plane_pb(plane)

    @rpc_method
    async def GetGfxDmabuf(self, request: pb.GetGfxDmabufRequest, context: Any) -> pb.GetGfxDmabufResponse:
        device = self.f.device(request.vm_id, request.uuid)
        fb = await display.get_dmabuf(self.f.peers.gfx, device.uuid, request.dmabuf_id)
        p = fb.plane
        return pb.GetGfxDmabufResponse(
            width=p.width, height=p.height, stride=p.stride, drm_format=p.drm_format, data=fb.data
        )

    @rpc_method
    async def GetScreenshot(self, request: pb.GetScreenshotRequest, context: Any) -> pb.GetScreenshotResponse:
        device = self.f.primary_device(request.vm_id)
        shot = await display.screenshot(self.f.peers.gfx, device.uuid)
        return pb.GetScreenshotResponse(png=shot.png, width=shot.width, height=shot.height)


def add_services(frontend: Frontend) -> Callable[[grpc.aio.Server], Sequence[str]]:
    """The ``add_services`` of :func:`vgpusim.common.server.serve` for this servicer."""

    def add(server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_QemuFrontendServiceServicer_to_server(QemuFrontendServicer(frontend), server)
        return [pb.DESCRIPTOR.services_by_name["QemuFrontendService"].full_name]

    return add
