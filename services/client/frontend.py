"""Typed client of ``vgpusim.qemu_frontend.v1.QemuFrontendService``: VMs, the VFIO device API, the guest.

One method per RPC plus two helpers: :meth:`FrontendClient.watch_interrupts` (an async iterator
of the interrupts a device raises) and :meth:`FrontendClient.wait_guest` (polls the guest driver
until it reaches one of the given states).

Glossary:
- VM: guest RAM in a shared-memory segment, an iommu_type2 container, at most one vGPU.
- region offset: ``index << 40 | offset in region``, as on a VFIO device fd.
- SetIrqs flags: ``DATA_NONE 1, DATA_BOOL 2, DATA_EVENTFD 4, ACTION_MASK 8, ACTION_UNMASK 16,
  ACTION_TRIGGER 32`` (one data type and one action).
- workload: what the built-in guest driver runs (``WORKLOAD_SMOKE``: one batch, one interrupt).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Collection, Mapping

import grpc

from vgpusim.client._transport import DEFAULT_TIMEOUT, ServiceClient
from vgpusim.common.errors import TimedOut
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as pb
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2_grpc as pb_grpc

__all__ = ["GUEST_DONE", "FrontendClient"]

GUEST_DONE: frozenset[pb.GuestState.ValueType] = frozenset(
    {pb.GUEST_STATE_FINISHED, pb.GUEST_STATE_FAILED, pb.GUEST_STATE_STOPPED}
)
"""The guest states a workload ends in (the default of :meth:`FrontendClient.wait_guest`)."""


class FrontendClient(ServiceClient):
    """The QEMU-like frontend (``qemu_frontend``)."""

    SERVICE = "qemu_frontend"

    def __init__(self, channel: grpc.aio.Channel, *, target: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, target=target, timeout=timeout)
        self._stub = pb_grpc.QemuFrontendServiceStub(channel)

    # ---- VMs --------------------------------------------------------------------------------

    async def create_vm(
        self, *, memory_bytes: int, name: str = "", hardware_iommu: bool = False, timeout: float | None = None
    ) -> pb.Vm:
        """CreateVm with ``memory_bytes`` of RAM (a multiple of 2 MiB); ``name`` empty = generated."""
        req = pb.CreateVmRequest(name=name, memory_bytes=memory_bytes, hardware_iommu=hardware_iommu)
        resp = await self._unary(self._stub.CreateVm, req, pb.CreateVmResponse, timeout)
        return resp.vm

    async def destroy_vm(self, vm_id: str, *, timeout: float | None = None) -> None:
        """DestroyVm: stops the guest, detaches vGPUs, releases RAM. Errors: NotFound (UNKNOWN_VM)."""
        await self._unary(
            self._stub.DestroyVm, pb.DestroyVmRequest(vm_id=vm_id), pb.DestroyVmResponse, timeout
        )

    async def get_vm(self, vm_id: str, *, timeout: float | None = None) -> pb.Vm:
        """GetVm. Errors: NotFound (UNKNOWN_VM)."""
        resp = await self._unary(self._stub.GetVm, pb.GetVmRequest(vm_id=vm_id), pb.GetVmResponse, timeout)
        return resp.vm

    async def list_vms(self, *, timeout: float | None = None) -> list[pb.Vm]:
        """ListVms. Returns: every VM of this frontend."""
        resp = await self._unary(self._stub.ListVms, pb.ListVmsRequest(), pb.ListVmsResponse, timeout)
        return list(resp.vms)

    async def attach_device(self, vm_id: str, uuid: str, *, timeout: float | None = None) -> pb.Vm:
        """AttachDevice: opens the vGPU for the VM. Errors: NotFound, Busy (DEVICE_IN_USE),
        WrongState (VM_HAS_VGPU). Returns: the VM.
        """
        req = pb.AttachDeviceRequest(vm_id=vm_id, uuid=uuid)
        resp = await self._unary(self._stub.AttachDevice, req, pb.AttachDeviceResponse, timeout)
        return resp.vm

    async def detach_device(self, vm_id: str, uuid: str, *, timeout: float | None = None) -> None:
        """DetachDevice: closes the vGPU. Errors: NotFound (UNKNOWN_VM, NOT_ATTACHED)."""
        req = pb.DetachDeviceRequest(vm_id=vm_id, uuid=uuid)
        await self._unary(self._stub.DetachDevice, req, pb.DetachDeviceResponse, timeout)

    # ---- the guest driver -------------------------------------------------------------------

    async def start_guest(
        self,
        vm_id: str,
        *,
        workload: pb.Workload.ValueType = pb.WORKLOAD_SMOKE,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> pb.GuestStatus:
        """StartGuest with a workload. Errors: WrongState (NO_VGPU, GUEST_RUNNING)."""
        req = pb.StartGuestRequest(vm_id=vm_id, workload=workload, params=dict(params or {}))
        resp = await self._unary(self._stub.StartGuest, req, pb.StartGuestResponse, timeout)
        return resp.status

    async def stop_guest(self, vm_id: str, *, timeout: float | None = None) -> pb.GuestStatus:
        """StopGuest. Returns: the guest's final status."""
        resp = await self._unary(
            self._stub.StopGuest, pb.StopGuestRequest(vm_id=vm_id), pb.StopGuestResponse, timeout
        )
        return resp.status

    async def get_guest_status(self, vm_id: str, *, timeout: float | None = None) -> pb.GuestStatus:
        """GetGuestStatus: the guest driver's state and counters."""
        req = pb.GetGuestStatusRequest(vm_id=vm_id)
        resp = await self._unary(self._stub.GetGuestStatus, req, pb.GetGuestStatusResponse, timeout)
        return resp.status

    async def wait_guest(
        self,
        vm_id: str,
        *,
        states: Collection[pb.GuestState.ValueType] = GUEST_DONE,
        timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> pb.GuestStatus:
        """Poll GetGuestStatus until the guest is in one of ``states``; TimedOut after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.get_guest_status(vm_id)
            if status.state in states:
                return status
            if loop.time() >= deadline:
                raise TimedOut(
                    f"guest of VM {vm_id} still {pb.GuestState.Name(status.state)} after {timeout:g} s",
                    reason="GUEST_WAIT_TIMED_OUT",
                    metadata={"vm_id": vm_id, "state": pb.GuestState.Name(status.state)},
                )
            await asyncio.sleep(poll_interval)

    # ---- the VFIO device API ----------------------------------------------------------------

    async def get_device_info(
        self, vm_id: str, uuid: str, *, timeout: float | None = None
    ) -> pb.GetDeviceInfoResponse:
        """GetDeviceInfo (VFIO_DEVICE_GET_INFO): flags, number of regions and IRQs."""
        req = pb.GetDeviceInfoRequest(vm_id=vm_id, uuid=uuid)
        return await self._unary(self._stub.GetDeviceInfo, req, pb.GetDeviceInfoResponse, timeout)

    async def get_region_info(
        self, vm_id: str, uuid: str, index: int, *, timeout: float | None = None
    ) -> pb.GetRegionInfoResponse:
        """GetRegionInfo (VFIO_DEVICE_GET_REGION_INFO). Errors: InvalidArgument (BAD_REGION_INDEX)."""
        req = pb.GetRegionInfoRequest(vm_id=vm_id, uuid=uuid, index=index)
        return await self._unary(self._stub.GetRegionInfo, req, pb.GetRegionInfoResponse, timeout)

    async def read_region(
        self, vm_id: str, uuid: str, *, offset: int, size: int, timeout: float | None = None
    ) -> bytes:
        """ReadRegion (pread on the device fd). Returns: the bytes."""
        req = pb.ReadRegionRequest(vm_id=vm_id, uuid=uuid, offset=offset, size=size)
        resp = await self._unary(self._stub.ReadRegion, req, pb.ReadRegionResponse, timeout)
        return resp.data

    async def write_region(
        self, vm_id: str, uuid: str, *, offset: int, data: bytes, timeout: float | None = None
    ) -> None:
        """WriteRegion (pwrite on the device fd)."""
        req = pb.WriteRegionRequest(vm_id=vm_id, uuid=uuid, offset=offset, data=data)
        await self._unary(self._stub.WriteRegion, req, pb.WriteRegionResponse, timeout)

    async def get_irq_info(
        self, vm_id: str, uuid: str, index: int, *, timeout: float | None = None
    ) -> pb.GetIrqInfoResponse:
        """GetIrqInfo (VFIO_DEVICE_GET_IRQ_INFO). Errors: InvalidArgument (BAD_IRQ_INDEX)."""
        req = pb.GetIrqInfoRequest(vm_id=vm_id, uuid=uuid, index=index)
        return await self._unary(self._stub.GetIrqInfo, req, pb.GetIrqInfoResponse, timeout)

    async def set_irqs(
        self,
        vm_id: str,
        uuid: str,
        *,
        flags: int,
        index: int,
        start: int = 0,
        count: int = 0,
        data: bytes = b"",
        timeout: float | None = None,
    ) -> None:
        """SetIrqs (VFIO_DEVICE_SET_IRQS) with the kernel's validation."""
        req = pb.SetIrqsRequest(
            vm_id=vm_id, uuid=uuid, flags=flags, index=index, start=start, count=count, data=data
        )
        await self._unary(self._stub.SetIrqs, req, pb.SetIrqsResponse, timeout)

    def watch_interrupts(
        self, vm_id: str, uuid: str, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.WatchInterruptsResponse, None]:
        """WatchInterrupts: the interrupts the device raises, until the consumer stops iterating
        or the device is detached (or ``timeout`` seconds pass).
        """
        req = pb.WatchInterruptsRequest(vm_id=vm_id, uuid=uuid)
        return self._stream(self._stub.WatchInterrupts, req, pb.WatchInterruptsResponse, timeout)

    async def reset_device(self, vm_id: str, uuid: str, *, timeout: float | None = None) -> None:
        """ResetDevice (VFIO_DEVICE_RESET)."""
        req = pb.ResetDeviceRequest(vm_id=vm_id, uuid=uuid)
        await self._unary(self._stub.ResetDevice, req, pb.ResetDeviceResponse, timeout)

    async def query_gfx_plane(
        self,
        vm_id: str,
        uuid: str,
        *,
        flags: int = 2,
        drm_plane_type: int = 1,
        timeout: float | None = None,
    ) -> pb.QueryGfxPlaneResponse:
        """QueryGfxPlane (VFIO_DEVICE_QUERY_GFX_PLANE); defaults: DMABUF flavour, primary plane."""
        req = pb.QueryGfxPlaneRequest(vm_id=vm_id, uuid=uuid, flags=flags, drm_plane_type=drm_plane_type)
        return await self._unary(self._stub.QueryGfxPlane, req, pb.QueryGfxPlaneResponse, timeout)

    async def get_gfx_dmabuf(
        self, vm_id: str, uuid: str, dmabuf_id: int, *, timeout: float | None = None
    ) -> pb.GetGfxDmabufResponse:
        """GetGfxDmabuf: the framebuffer bytes of a dmabuf id."""
        req = pb.GetGfxDmabufRequest(vm_id=vm_id, uuid=uuid, dmabuf_id=dmabuf_id)
        return await self._unary(self._stub.GetGfxDmabuf, req, pb.GetGfxDmabufResponse, timeout)

    async def get_screenshot(self, vm_id: str, *, timeout: float | None = None) -> pb.GetScreenshotResponse:
        """GetScreenshot: the primary plane as a PNG. Errors: WrongState (DISPLAY_DISABLED)."""
        req = pb.GetScreenshotRequest(vm_id=vm_id)
        return await self._unary(self._stub.GetScreenshot, req, pb.GetScreenshotResponse, timeout)
