"""A VM of the frontend: guest RAM, its DMA container, at most one vGPU, and the guest's vCPU.

:meth:`Vm.create` sets a VM up as QEMU does for a guest with an mdev, each step undone in reverse
by the VM's ``AsyncExitStack`` (on failure, and by :meth:`Vm.destroy`):

1. guest RAM: segment ``ram-<vm_id>`` of ``memory_bytes`` in the stack's shm dir;  undo: unmap, unlink;
2. ``iommu_type2.CreateContainer(owner)`` (emulated, or hardware IOMMU);  undo: ``DestroyContainer``;
3. ``RegisterSegment`` (the VM's "virtual address space");  undo: ``UnregisterSegment``;
4. ``MapDmaBatch`` of the :func:`~vgpusim.qemu_frontend.core.memory.ram_layout` regions at
   IOVA = GPA, READ|WRITE (the vfio listener's maps around the VGA and PCI holes);  undo:
   ``UnmapDma`` all.

Destroy first stops the guest and detaches the vGPU (:mod:`.devices`), then unwinds.  Remote
undo steps that fail are logged and skipped: the frontend's KeepAlive stream still holds the
container, and iommu_type2 destroys it when the frontend goes.

Glossary:
- vm_id: ``vm-`` + 8 hex digits, generated; ``name``: unique per frontend, chosen by the client.
- vCPU: the thread running the built-in guest driver (:mod:`.vcpu`).
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.errors import Busy, NotFound, VgpusimError, WrongState
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.segment import Segment
from vgpusim.qemu_frontend.clients import IommuPeer
from vgpusim.qemu_frontend.core.memory import PageAllocator, Region, ram_layout
from vgpusim.qemu_frontend.devices import AttachedDevice
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.vcpu import GuestLauncher, GuestState, GuestStatus, Vcpu, Workload

__all__ = ["Vm", "VmInfo", "new_vm_id"]

_log = get_logger("vgpusim.qemu_frontend.vm")


def new_vm_id() -> str:
    return f"vm-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class VmInfo:
    """What GetVm reports of a VM."""

    vm_id: str
    name: str
    memory_bytes: int
    hardware_iommu: bool
    ram_segment: str
    container_id: str
    regions: tuple[Region, ...]
    devices: tuple[str, ...]
    guest_state: GuestState


async def _quietly(what: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run a remote undo step; a domain error is logged, not raised (see the module doc)."""
    try:
        await step()
    except VgpusimError as exc:
        _log.warning("%s failed: %s", what, exc, extra={"reason": exc.reason})


def _close_segment(segment: Segment) -> None:
    """Unmap guest RAM; views the guest driver left behind are collected first."""
    try:
        segment.close()
    except Busy:
        gc.collect()
        try:
            segment.close()
        except Busy:
            _log.error("guest RAM %s is still referenced; its mapping stays until exit", segment.name)


class Vm:
    """One VM; every mutating operation runs under :attr:`lock` (taken by the caller)."""

    def __init__(
        self,
        vm_id: str,
        name: str,
        *,
        hardware_iommu: bool,
        segment: Segment,
        container_id: str,
        regions: tuple[Region, ...],
        teardown: AsyncExitStack,
    ) -> None:
        self.vm_id = vm_id
        self.name = name
        self.hardware_iommu = hardware_iommu
        self.segment = segment
        self.container_id = container_id
        self.regions = regions
        self.lock = asyncio.Lock()
        self.device: AttachedDevice | None = None
        self.detach_stack: AsyncExitStack | None = None
        self.vcpu: Vcpu | None = None
        self.retired_commands = 0
        self.destroyed = False
        self._teardown = teardown

    @property
    def memory_bytes(self) -> int:
        return self.segment.size

    @classmethod
    async def create(
        cls,
        iommu: IommuPeer,
        *,
        vm_id: str,
        name: str,
        memory_bytes: int,
        hardware_iommu: bool,
        owner: str,
        shm_dir: Path,
        memlock_limit_bytes: int = 0,
        prealloc: bool = False,
    ) -> Vm:
        """Set up a VM (steps in the module doc). Errors: InvalidArgument (``BAD_MEMORY_SIZE``),
        Exhausted (shared memory), and iommu_type2's errors unchanged."""
        regions = ram_layout(memory_bytes)
        stack = AsyncExitStack()
        try:
            segment = Segment.create(shm_dir, f"ram-{vm_id}", memory_bytes, prealloc=prealloc)
            stack.callback(segment.unlink, missing_ok=True)
            stack.callback(_close_segment, segment)
            container = await iommu.create_container(
                owner, hardware=hardware_iommu, memlock_limit_bytes=memlock_limit_bytes
            )
            stack.push_async_callback(
                _quietly, f"DestroyContainer {container}", lambda: iommu.destroy_container(container)
            )
            await iommu.register_segment(container, segment.name, segment.size)
            stack.push_async_callback(
                _quietly,
                f"UnregisterSegment {segment.name}",
                lambda: iommu.unregister_segment(container, segment.name),
            )
            await iommu.map_ram(container, segment.name, regions)
            stack.push_async_callback(
                _quietly, f"UnmapDma all of {container}", lambda: iommu.unmap_all(container)
            )
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            vm_id,
            name,
            hardware_iommu=hardware_iommu,
            segment=segment,
            container_id=container,
            regions=regions,
            teardown=stack,
        )

    def info(self) -> VmInfo:
        return VmInfo(
            self.vm_id,
            self.name,
            self.memory_bytes,
            self.hardware_iommu,
            self.segment.name,
            self.container_id,
            self.regions,
            (self.device.uuid,) if self.device is not None else (),
            self.guest_status().state,
        )

    # ---- the vGPU ---------------------------------------------------------------------------

    def attached(self, uuid: str) -> AttachedDevice:
        """The attached vGPU ``uuid``; NotFound (``NOT_ATTACHED``) otherwise."""
        device = self.device
        if device is None or device.uuid != uuid.lower() or device.closing:
            raise NotFound(
                f"vGPU {uuid} is not attached to VM {self.vm_id}",
                reason="NOT_ATTACHED",
                metadata={"vm_id": self.vm_id, "uuid": uuid},
            )
        return device

    async def detach(self, stop_timeout: float) -> str | None:
        """Stop the guest and detach the vGPU (no-op without one); the UUID detached.

        A guest that does not stop in time is detached from anyway (logged): its next device
        access fails and the guest ends FAILED.
        """
        device, stack = self.device, self.detach_stack
        if device is None or stack is None:
            return None
        if not await self._halt_guest(stop_timeout):
            _log.error("guest did not stop within %g s; detaching its vGPU anyway", stop_timeout)
        try:
            await stack.aclose()
        finally:
            self.device = self.detach_stack = None
        _log.info("vGPU detached", extra={"vm_id": self.vm_id, "uuid": device.uuid})
        return device.uuid

    # ---- the guest --------------------------------------------------------------------------

    def guest_status(self) -> GuestStatus:
        return GuestStatus() if self.vcpu is None else self.vcpu.status()

    def guest_commands(self) -> int:
        """Commands every guest run of this VM submitted (for the metrics)."""
        return self.retired_commands + self.guest_status().commands_submitted

    def start_guest(
        self, launcher: GuestLauncher, workload: Workload, params: Mapping[str, str]
    ) -> GuestStatus:
        """Boot the guest driver with ``workload`` in a new vCPU thread.

        Errors: WrongState (``NO_VGPU``, ``GUEST_RUNNING``), the launcher's (``BAD_PARAMETER``...).
        """
        device = self.device
        if device is None or device.closing:
            raise WrongState(f"VM {self.vm_id} has no vGPU", reason="NO_VGPU", metadata={"vm_id": self.vm_id})
        if self.vcpu is not None and self.vcpu.running:
            raise WrongState(
                f"the guest of VM {self.vm_id} is running",
                reason="GUEST_RUNNING",
                metadata={"vm_id": self.vm_id},
            )
        device.guest_irqs.reset()
        env = GuestEnv(
            port=device.port,
            ram=self.segment.buf,
            regions=self.regions,
            alloc=PageAllocator(self.regions),
            wait_irq=device.guest_irqs.wait,
        )
        vcpu = Vcpu(
            launcher(env, workload, params),
            workload,
            name=f"vcpu-{self.vm_id}",
            on_stop=device.guest_irqs.cancel,
        )
        if self.vcpu is not None:
            self.retired_commands += self.vcpu.status().commands_submitted
        self.vcpu = vcpu
        status = vcpu.status()  # RUNNING: the answer to StartGuest, however fast the workload is
        vcpu.start()
        _log.info("guest started", extra={"vm_id": self.vm_id, "workload": workload.value})
        return status

    async def _halt_guest(self, timeout: float) -> bool:
        """Ask the vCPU thread to stop and wait up to ``timeout`` s; whether it ended."""
        vcpu = self.vcpu
        if vcpu is None:
            return True
        vcpu.request_stop()
        return await asyncio.to_thread(vcpu.join, timeout)

    async def stop_guest(self, timeout: float) -> GuestStatus:
        """Stop the vCPU thread; its final status. Errors: WrongState (``GUEST_STUCK``)."""
        if not await self._halt_guest(timeout):
            raise WrongState(
                f"the guest of VM {self.vm_id} did not stop within {timeout:g} s",
                reason="GUEST_STUCK",
                metadata={"vm_id": self.vm_id},
            )
        return self.guest_status()

    # ---- destroy ----------------------------------------------------------------------------

    async def destroy(self, stop_timeout: float) -> None:
        """Stop the guest, detach the vGPU, unmap and unlink the RAM (module doc)."""
        self.destroyed = True
        try:
            await self.detach(stop_timeout)
        finally:
            self.retired_commands = self.guest_commands()
            self.vcpu = None
            await self._teardown.aclose()
        _log.info("VM destroyed", extra={"vm_id": self.vm_id})
