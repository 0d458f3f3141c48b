"""One vGPU: its lifecycle, the guest's view of its regions, DMLR reset and failsafe.

Lifecycle (one transition table, :func:`next_state`)::

    CREATED --open(container, pinner)--> OPEN --release()--> CREATED --destroy--> DESTROYED

``create`` is :meth:`gpu.PhysicalGpu.create_vgpu` (it carves the :class:`Partition`); ``open``
attaches the vGPU to a container (its ``Pinner`` and guest memory) and resets the device model;
``release`` unpins every page and detaches; ``destroy`` (``PhysicalGpu.remove_vgpu``) returns the
partition.  Destroying an open vGPU is ``Busy`` (the bus releases it first).

Regions (VFIO indices): CONFIG (7) is :class:`pci.ConfigSpace`; BAR0 (0) is the register file
below ``MMIO_SIZE`` and the GTT window from ``GTT_OFFSET``; BAR2 (2) is the aperture, the vGPU's
low GM slice seen through the GTT.  MMIO, config and aperture accesses need the vGPU open.

:meth:`Vgpu.reset` is the DMLR of kernel-mdev §4.7: the allocation is kept; GTT shadow (pins),
registers (PVINFO rewritten) and config space are reset; failsafe is cleared.  The service stops
the vGPU's engines first.  In **failsafe** (GVT_FAILSAFE_*), register writes are stored without
effects (no doorbells) and GTT writes are dropped, until a DMLR.

Glossary:
- DMLR: device-model-level reset (VFIO_DEVICE_RESET).
- failsafe: a vGPU the host no longer executes for, after a guest error; see ``FailsafeReason``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vgpusim.common.errors import Busy, InvalidArgument, WrongState
from vgpusim.gfx_host.core.display import Display
from vgpusim.gfx_host.core.gtt import Gtt, GttStatistics, HostMemory, Pinner, read_memory, write_memory
from vgpusim.gfx_host.core.models import GpuModel, VgpuType
from vgpusim.gfx_host.core.pci import ConfigSpace
from vgpusim.gfx_host.core.regfile import RegisterFile
from vgpusim.gfx_host.core.registers import (
    GTT_ENTRY_SIZE,
    GTT_OFFSET,
    GTT_UPDATED,
    MMIO_SIZE,
    NO_EFFECT,
    PAGE_SIZE,
    Engine,
    FailsafeReason,
    PvInfo,
    RegisterStatistics,
    WriteEffect,
    bar0_size,
    check_access,
)
from vgpusim.gfx_host.core.resources import Partition

REGION_BAR0 = 0
REGION_BAR2 = 2
REGION_CONFIG = 7


class VgpuState(enum.Enum):
    """Where a vGPU is in its lifecycle."""

    CREATED = "created"
    OPEN = "open"
    DESTROYED = "destroyed"


class VgpuEvent(enum.Enum):
    """What can happen to a vGPU."""

    OPEN = "open"
    RELEASE = "release"
    DESTROY = "destroy"


TRANSITIONS: dict[tuple[VgpuState, VgpuEvent], VgpuState] = {
    (VgpuState.CREATED, VgpuEvent.OPEN): VgpuState.OPEN,
    (VgpuState.OPEN, VgpuEvent.RELEASE): VgpuState.CREATED,
    (VgpuState.CREATED, VgpuEvent.DESTROY): VgpuState.DESTROYED,
}


def next_state(state: VgpuState, event: VgpuEvent, *, uuid: str = "") -> VgpuState:
    """The state after ``event``; Busy (open device) or WrongState if the table has no arc."""
    new = TRANSITIONS.get((state, event))
    if new is not None:
        return new
    meta = {"uuid": uuid, "state": state.value, "event": event.value}
    if state is VgpuState.OPEN and event is not VgpuEvent.RELEASE:
        reason = "DEVICE_ALREADY_OPEN" if event is VgpuEvent.OPEN else "DEVICE_OPEN"
        raise Busy(f"vGPU {uuid} is open", reason=reason, metadata=meta)
    raise WrongState(
        f"vGPU {uuid} is {state.value}: cannot {event.value}", reason="WRONG_STATE", metadata=meta
    )


def aperture_bar_size(low_gm_size: int) -> int:
    """BAR2 size: the low GM slice rounded up to a power of two."""
    return 1 << (max(low_gm_size, PAGE_SIZE) - 1).bit_length()


@dataclass(frozen=True, slots=True)
class VgpuStatistics:
    """A snapshot of one vGPU."""

    uuid: str
    state: VgpuState
    failsafe: FailsafeReason | None
    resets_total: int
    failsafe_drops_total: int
    mmio_unhandled_total: int
    registers: RegisterStatistics
    gtt: GttStatistics


class Vgpu:
    """The device model of one vGPU of ``vgpu_type`` on ``parent``, owning ``partition``."""

    def __init__(
        self, uuid: str, parent: str, model: GpuModel, vgpu_type: VgpuType, partition: Partition
    ) -> None:
        self.uuid, self.parent, self.vgpu_type, self.partition = uuid, parent, vgpu_type, partition
        self.state = VgpuState.CREATED
        self.container: str | None = None
        self.memory: HostMemory | None = None
        self.failsafe: FailsafeReason | None = None
        ranges = (partition.low_gm, partition.high_gm)
        self.bar0_size = bar0_size(model.gm_size)
        self.bar2_size = aperture_bar_size(partition.low_gm.size)
        self._gtt_end = GTT_OFFSET + model.gm_size // PAGE_SIZE * GTT_ENTRY_SIZE
        self.config = ConfigSpace(
            vendor_id=model.vendor_id,
            device_id=model.device_id,
            subsystem_vendor_id=model.subsystem_vendor_id,
            subsystem_id=model.subsystem_id,
            revision=model.revision,
            bar_sizes={0: self.bar0_size, 2: self.bar2_size},
        )
        self.regs = RegisterFile(
            PvInfo(
                vgpu_id=partition.vgpu_id,
                low_gm=partition.low_gm,
                high_gm=partition.high_gm,
                fences=partition.fences,
                display_width=vgpu_type.width,
                display_height=vgpu_type.height,
                gm_total=model.gm_size,
                engines=tuple(Engine.from_name(n) for n in model.engines),
            )
        )
        self.gtt = Gtt(ranges)
        self.display = Display(self.regs, self.gtt, ranges)
        self._resets = self._drops = self._unhandled = 0

    @property
    def vgpu_id(self) -> int:
        """The vGPU ID (1..max_vgpus) of the partition."""
        return self.partition.vgpu_id

    def _transition(self, event: VgpuEvent) -> None:
        self.state = next_state(self.state, event, uuid=self.uuid)

    # -------------------------------------------------------------- lifecycle
    def open(self, container: str, pinner: Pinner, memory: HostMemory | None = None) -> None:
        """Attach to ``container`` (its pinner and guest memory) with a freshly reset device model."""
        self._transition(VgpuEvent.OPEN)
        self.container, self.gtt.pinner, self.memory = container, pinner, memory
        self.regs.reset()
        self.config.reset()
        self.failsafe = None

    async def release(self) -> None:
        """Unpin everything and detach from the container (the engines must be stopped first)."""
        new = next_state(self.state, VgpuEvent.RELEASE, uuid=self.uuid)
        await self.gtt.reset()
        self.display.clear()
        self.container, self.gtt.pinner, self.memory = None, None, None
        self.state = new

    def destroy(self) -> None:
        """Mark destroyed (``PhysicalGpu.remove_vgpu`` frees the partition); Busy while open."""
        self._transition(VgpuEvent.DESTROY)

    async def reset(self) -> None:
        """DMLR (kernel-mdev §4.7): keep the allocation, reset GTT shadow, registers, config, failsafe."""
        if self.state is VgpuState.DESTROYED:
            raise WrongState(
                f"vGPU {self.uuid} is destroyed", reason="WRONG_STATE", metadata={"uuid": self.uuid}
            )
        await self.gtt.reset()
        self.regs.reset()
        self.config.reset()
        self.failsafe = None
        self._resets += 1

    def enter_failsafe(self, reason: FailsafeReason) -> None:
        """Stop executing for this vGPU until a DMLR (the first reason is kept)."""
        if self.failsafe is None:
            self.failsafe = reason

    # ----------------------------------------------------------- guest access
    def _require_open(self) -> None:
        if self.state is not VgpuState.OPEN:
            raise WrongState(
                f"vGPU {self.uuid} is not open", reason="DEVICE_NOT_OPEN", metadata={"uuid": self.uuid}
            )

    def mmio_read(self, offset: int, size: int) -> int:
        """Guest read of BAR0 (registers or GTT window)."""
        self._require_open()
        check_access(offset, size, self.bar0_size)
        if offset < MMIO_SIZE:
            return self.regs.read(offset, size)
        if GTT_OFFSET <= offset < self._gtt_end:
            return self.gtt.read(offset - GTT_OFFSET, size)
        self._unhandled += 1
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> WriteEffect:
        """Guest write of BAR0; returns what the service must do (see ``registers.WriteEffect``)."""
        self._require_open()
        check_access(offset, size, self.bar0_size)
        value &= (1 << (8 * size)) - 1
        if offset < MMIO_SIZE:
            if self.failsafe is not None:
                self._drops += 1
                self.regs.write(offset, size, value, side_effects=False)
                return NO_EFFECT
            effect = self.regs.write(offset, size, value)
            if effect.failsafe is not None:
                self.enter_failsafe(effect.failsafe)
            return effect
        if GTT_OFFSET <= offset < self._gtt_end:
            if self.failsafe is not None:
                self._drops += 1
                return NO_EFFECT
            return GTT_UPDATED if self.gtt.write(offset - GTT_OFFSET, size, value) else NO_EFFECT
        self._unhandled += 1
        return NO_EFFECT

    def config_read(self, offset: int, size: int) -> int:
        """Guest read of the CONFIG region."""
        self._require_open()
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Guest write of the CONFIG region."""
        self._require_open()
        self.config.write(offset, size, value)

    def _aperture_gm(self, offset: int, size: int) -> tuple[int, HostMemory]:
        self._require_open()
        if self.memory is None:
            raise WrongState(f"vGPU {self.uuid} was opened without guest memory", reason="NO_GUEST_MEMORY")
        if size <= 0 or offset < 0 or offset + size > self.partition.low_gm.size:
            raise InvalidArgument(
                f"aperture access [{offset:#x}, +{size:#x}) outside {self.partition.low_gm.size:#x} bytes",
                reason="APERTURE_BAD_ACCESS",
                metadata={"offset": hex(offset), "size": str(size)},
            )
        return self.partition.low_gm.start + offset, self.memory

    def aperture_read(self, offset: int, size: int) -> bytes:
        """Read BAR2 (the low GM slice) through the GTT shadow; GttFault if a page is not usable."""
        gm, memory = self._aperture_gm(offset, size)
        return read_memory(self.gtt, memory, gm, size)

    def aperture_write(self, offset: int, data: bytes) -> None:
        """Write BAR2 (the low GM slice) through the GTT shadow; GttFault if a page is not usable."""
        gm, memory = self._aperture_gm(offset, len(data))
        write_memory(self.gtt, memory, gm, data)

    def statistics(self) -> VgpuStatistics:
        """A snapshot of this vGPU."""
        return VgpuStatistics(
            uuid=self.uuid,
            state=self.state,
            failsafe=self.failsafe,
            resets_total=self._resets,
            failsafe_drops_total=self._drops,
            mmio_unhandled_total=self._unhandled,
            registers=self.regs.statistics(),
            gtt=self.gtt.statistics(),
        )
