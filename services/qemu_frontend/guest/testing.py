"""An in-process vGPU for the guest driver: the real gfx_host device model and engine, no processes.

:class:`SimulatedVgpu` builds a :class:`~vgpusim.gfx_host.core.gpu.GfxHost` from the embedded
default host config, creates a vGPU of ``type_id`` and opens it over a ``bytearray`` guest RAM
(``FakeHostMemory`` segment ``"ram"``, laid out by ``memory.ram_layout``; a ``FakePinner`` maps
exactly the RAM regions at IOVA = GPA).  Guest accesses go straight to ``Vgpu.mmio_read/write`` and
``config_read/write``; write effects are handled the way ``gfx_host.runtime.DeviceRuntime`` does:

- GTT updates are applied lazily (``Gtt.apply_pending``, run by :func:`run_coroutine`) before the next
  doorbell is audited or the aperture (BAR2) is accessed;
- a doorbell audits the ring from the last submitted tail (``CommandAuditor`` over
  ``GttGraphicsMemory``), an audit failure puts the vGPU in failsafe, else the workload is queued
  on an ``EngineRunner`` driven by a ``ManualClock``;
- a completion sets ``RING_HEAD``, applies flips and register writes, the seqno register, and
  raises the completion event; an interrupt becomes an MSI (INTx if MSI is disabled);
- ``GDRST`` flushes the engine's queue; a hang marks the ring HUNG.

The engine runs *lazily*, when the guest waits (``wait_irq``), so submissions pile up in the ring
as on a busy GPU (``auto_run=True`` runs it at every doorbell instead).  The guest clock is the
engine's simulated clock: a ``wait_irq`` that times out advances it by the timeout, so watchdogs
and hang timeouts take no real time.  Not thread-safe beyond one guest thread plus readers of
the counters (guarded by a lock).

For isolation checks: ``canary`` fills guest RAM with a byte pattern before the driver runs;
:meth:`SimulatedVgpu.stray_pages` lists pages whose bytes changed although the GPU was never
allowed to touch them (never pinned) and the driver never owned them.  ``neighbor=True`` opens a
second vGPU on the same GPU with its own RAM, some of its GM mapped and filled with the canary;
:meth:`SimulatedVgpu.neighbor_intact` checks nothing reached it.

Glossary:
- canary: the byte pattern of memory nobody may write.
- lazy engine: workloads execute only when the guest sleeps waiting for an interrupt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, Final, TypeVar

from vgpusim.common.errors import VgpusimError
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import DRM_PLANE_TYPE_PRIMARY, GFX_PLANE_TYPE_DMABUF, PlaneInfo
from vgpusim.gfx_host.core.engine.audit import CommandAuditor
from vgpusim.gfx_host.core.engine.runner import EngineRunner, ManualClock
from vgpusim.gfx_host.core.engine.workload import Completion, CompletionStatus, RingState
from vgpusim.gfx_host.core.fakes import FakeHostMemory, FakePinner
from vgpusim.gfx_host.core.gmem import GttGraphicsMemory
from vgpusim.gfx_host.core.gpu import GfxHost
from vgpusim.gfx_host.core.host_config import default_host_config
from vgpusim.gfx_host.core.registers import Engine, FailsafeReason, WriteEffect
from vgpusim.gfx_host.core.vgpu import REGION_BAR0, REGION_BAR2, REGION_CONFIG, Vgpu
from vgpusim.qemu_frontend.core.memory import DEFAULT_LOWMEM, MIB, PAGE, PageAllocator, ram_layout
from vgpusim.qemu_frontend.guest.env import GuestEnv

GVT_PARENT: Final = "0000:00:02.0"
NVIDIA_PARENT: Final = "0000:65:00.0"
GUEST_UUID: Final = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e01"
NEIGHBOR_UUID: Final = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e02"
CANARY: Final = 0xA5
IRQ_INTX, IRQ_MSI = 0, 1
NEIGHBOR_PAGES: Final = 16
T = TypeVar("T")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, even under a running event loop (in a
    helper thread then, so async tests can use the harness too)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class SimClock:
    """Guest time in seconds = the engine's simulated clock."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock.now_us() / 1e6


class SimPort:
    """``MmioPort`` of a :class:`SimulatedVgpu` (reads raise, writes are posted: errors counted)."""

    def __init__(self, device: SimulatedVgpu) -> None:
        self._device = device

    def read(self, region: int, offset: int, size: int) -> int:
        return self._device.mmio_read(region, offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self._device.mmio_write(region, offset, size, value)


class SimulatedVgpu:
    """One open vGPU with its engine, in process (see the module docstring)."""

    def __init__(
        self,
        *,
        type_id: str = "i915-GVTg_V5_8",
        parent: str = GVT_PARENT,
        ram_bytes: int = 128 * MIB,
        canary: int | None = None,
        neighbor: bool = False,
        watchdog_us: int = 50_000,
        auto_run: bool = False,
    ) -> None:
        if ram_bytes > DEFAULT_LOWMEM:
            raise ValueError("the harness maps RAM at segment offset = GPA: at most 3 GiB")
        self.lock = threading.RLock()
        self.auto_run = auto_run
        self.host = GfxHost(default_host_config())
        self.gpu = self.host.gpu(parent)
        self.regions = ram_layout(ram_bytes)
        self.memory = FakeHostMemory()
        self.pinner = FakePinner(self.memory, ram_size=ram_bytes)
        self.pinner.mapped = [(reg.gpa, reg.size) for reg in self.regions]
        self.ram = self.memory.segments["ram"]
        if canary is not None:
            self.ram[:] = bytes([canary]) * ram_bytes
        self.canary = canary
        self.vgpu = self.gpu.create_vgpu(GUEST_UUID, type_id)
        self.vgpu.open("container-guest", self.pinner, self.memory)
        self.clock = ManualClock()
        self.runner = EngineRunner(clock=self.clock, on_complete=self._on_complete, watchdog_us=watchdog_us)
        self.gmem = GttGraphicsMemory(self.vgpu.gtt, self.memory, self.vgpu.partition)
        self.auditor = CommandAuditor(self.gmem)
        self.runner.add_vgpu(self.vgpu.vgpu_id, self.gmem, weight=self.vgpu.vgpu_type.weight)
        self.submitted: dict[Engine, int] = {}
        self.gtt_dirty = False
        self.irq_log: list[int] = []  # VFIO IRQ index of every interrupt delivered
        self.completions: list[Completion] = []
        self.rejections: list[VgpusimError] = []
        self.write_errors = 0
        self._pending_irqs = 0
        self.neighbor: Vgpu | None = None
        self.neighbor_memory: FakeHostMemory | None = None
        if neighbor:
            self._open_neighbor(type_id)
        self.env = GuestEnv(
            port=SimPort(self),
            ram=self.memory.view("ram"),
            regions=self.regions,
            alloc=PageAllocator(self.regions),
            wait_irq=self.wait_irq,
            clock=SimClock(self.clock),
        )

    def _open_neighbor(self, type_id: str) -> None:
        memory = FakeHostMemory()
        pinner = FakePinner(memory, ram_size=4 * MIB)
        memory.segments["ram"][:] = bytes([CANARY]) * (4 * MIB)
        vgpu = self.gpu.create_vgpu(NEIGHBOR_UUID, type_id)
        vgpu.open("container-neighbor", pinner, memory)
        base = vgpu.partition.low_gm.start
        for i in range(NEIGHBOR_PAGES):
            vgpu.mmio_write(r.GTT_OFFSET + ((base >> 12) + i) * 8, 8, (0x10_0000 + i * PAGE) | 1)
        run_coroutine(vgpu.gtt.apply_pending())
        self.neighbor, self.neighbor_memory = vgpu, memory

    # ---- the guest's accesses ----------------------------------------------------------------

    def mmio_read(self, region: int, offset: int, size: int) -> int:
        with self.lock:
            if region == REGION_BAR0:
                return self.vgpu.mmio_read(offset, size)
            if region == REGION_CONFIG:
                return self.vgpu.config_read(offset, size)
            if region == REGION_BAR2:
                self.apply_gtt()  # the aperture is seen through the GTT as the guest wrote it
                return int.from_bytes(self.vgpu.aperture_read(offset, size), "little")
            raise VgpusimError(f"region {region} has no registers", errno=22)

    def mmio_write(self, region: int, offset: int, size: int, value: int) -> None:
        with self.lock:
            effect: WriteEffect | None = None
            try:
                if region == REGION_BAR0:
                    effect = self.vgpu.mmio_write(offset, size, value)
                elif region == REGION_CONFIG:
                    self.vgpu.config_write(offset, size, value)
                elif region == REGION_BAR2:
                    self.apply_gtt()
                    self.vgpu.aperture_write(offset, value.to_bytes(size, "little"))
                else:
                    self.write_errors += 1
            except VgpusimError:
                self.write_errors += 1  # a posted write: the guest never hears about it
            if effect:
                self._on_effect(effect)

    def wait_irq(self, timeout: float) -> bool:
        """Run the engine; True if an interrupt was delivered since the last call, else let
        ``timeout`` seconds of simulated time pass (running what becomes due) and check again."""
        with self.lock:
            self.run()
            if not self._pending_irqs:
                self.clock.advance(max(1, int(timeout * 1e6)))
                self.run()
            got, self._pending_irqs = self._pending_irqs > 0, 0
            return got

    # ---- the device side (DeviceRuntime's logic) ---------------------------------------------

    def run(self) -> None:
        """Execute everything queued (simulated time jumps to each completion)."""
        with self.lock:
            self.runner.run_until_idle()

    def _on_effect(self, effect: WriteEffect) -> None:
        vid = self.vgpu.vgpu_id
        if effect.gtt_updated:
            self.gtt_dirty = True
        if effect.irq:
            self._raise_irq()
        if effect.failsafe is not None:
            self.runner.flush(vid)
        for engine in effect.resets:
            self.runner.reset_engine(vid, int(engine))
            self.submitted.pop(engine, None)
        if effect.doorbells:
            self.apply_gtt()
            for engine in effect.doorbells:
                self._doorbell(engine)
            if self.auto_run:
                self.run()

    def apply_gtt(self) -> None:
        """Shadow the pending GTT entries (pins through the fake pinner)."""
        if self.gtt_dirty:
            self.gtt_dirty = False
            run_coroutine(self.vgpu.gtt.apply_pending())

    def _doorbell(self, engine: Engine) -> None:
        vgpu = self.vgpu
        if vgpu.failsafe is not None:
            return
        ring = vgpu.regs.ring(engine)
        head = self.submitted.get(engine, ring.head)
        if head == ring.tail:
            return
        result = self.auditor.audit(RingState(int(engine), ring.start, ring.size, head, ring.tail, ring.hws))
        if result.error is not None:
            self.rejections.append(result.error)
            vgpu.enter_failsafe(FailsafeReason.GUEST_ERROR)
            self.runner.flush(vgpu.vgpu_id)
            return
        try:
            self.runner.submit(vgpu.vgpu_id, result.unwrap())
        except VgpusimError as exc:
            self.rejections.append(exc)
            return
        self.submitted[engine] = ring.tail

    def _on_complete(self, vgpu_id: int, completion: Completion) -> None:
        self.completions.append(completion)
        if completion.status is not CompletionStatus.COMPLETED:
            self.submitted.pop(Engine(completion.engine), None)
        if self.vgpu.regs.apply_completion(completion):  # as gfx_host's runtime does
            self._raise_irq()

    def _raise_irq(self) -> None:
        self.irq_log.append(IRQ_MSI if self.vgpu.config.msi_enabled else IRQ_INTX)
        self._pending_irqs += 1

    # ---- host operations and checks ----------------------------------------------------------

    def reset(self) -> None:
        """VFIO_DEVICE_RESET (the DMLR only the VMM can issue): engines flushed, device model reset."""
        with self.lock:
            self.runner.reset_engine(self.vgpu.vgpu_id)
            self.submitted.clear()
            run_coroutine(self.vgpu.reset())

    def plane(self) -> PlaneInfo:
        """QUERY_GFX_PLANE of the primary plane (zeroed when disabled)."""
        with self.lock:
            info = self.vgpu.display.query_plane(GFX_PLANE_TYPE_DMABUF, DRM_PLANE_TYPE_PRIMARY)
            assert info is not None
            return info

    def screen(self) -> bytes:
        """The bytes the plane shows now (what a screenshot would encode)."""
        with self.lock:
            info = self.plane()
            if not info.dmabuf_id:
                return b""
            return self.vgpu.display.fetch(info.dmabuf_id, self.memory)

    def pinned_ever(self) -> set[int]:
        """Guest frames the host pinned at some point (the only pages the GPU could reach)."""
        return set(self.pinner.refs)

    def stray_pages(self, owned: Iterable[tuple[int, int]] = ()) -> list[int]:
        """GPAs of pages that lost the canary though never pinned nor in ``owned`` (gpa, size) runs."""
        if self.canary is None:
            raise ValueError("stray_pages needs a harness built with a canary")
        allowed = self.pinned_ever()
        for gpa, size in owned:
            allowed.update(range(gpa // PAGE, (gpa + size + PAGE - 1) // PAGE))
        pattern = bytes([self.canary]) * PAGE
        ram = self.ram
        return [
            gfn * PAGE
            for gfn in range(len(ram) // PAGE)
            if gfn not in allowed and ram[gfn * PAGE : (gfn + 1) * PAGE] != pattern
        ]

    def neighbor_intact(self) -> bool:
        """True if the neighbour vGPU's RAM still holds nothing but the canary."""
        if self.neighbor_memory is None:
            raise ValueError("the harness was built without a neighbour")
        return set(self.neighbor_memory.segments["ram"]) == {CANARY}
