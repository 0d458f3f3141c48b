"""The built-in guest driver: brings the vGPU up and drives it the way i915 drives a GVT-g vGPU.

Lifecycle: :meth:`GuestDriver.probe` (PCI config space, BARs, MSI) -> :meth:`read_pvinfo` (magic,
partition) -> :meth:`init` (guest pages for rings, status pages, batches, scratch data and
framebuffers mapped into the vGPU's own low GM through GTT writes; rings programmed and enabled;
completion, error and flip interrupts enabled and unmasked) -> :meth:`submit` / :meth:`wait` ...
-> :meth:`shutdown` (rings and interrupts off; the display plane keeps its last frame).

Submitting writes the commands, then ``STORE_SEQNO(seqno)`` and ``USER_INTERRUPT``, into the ring
in guest RAM (never overrunning the GPU's head, wrapping with NOOPs) and rings the doorbell by
writing ``RING_TAIL``.  Waiting sleeps in ``env.wait_irq``; every interrupt is acknowledged
(``INT_STATUS`` read, ``INT_ACK`` write-1-to-clear) and the seqno read from the status page in
guest RAM.  If the seqno does not advance for ``timeout`` seconds, or ``RING_STATUS`` says HUNG, the
engine is hung: it is reset through ``GDRST`` and its ring re-initialised; requests still in the
ring are lost (their waits return False).  If a reset does not take (the ring registers survive),
the host has put the vGPU in failsafe: :class:`DeviceFailsafe` (only a device reset by the VMM
can recover; a guest cannot issue VFIO_DEVICE_RESET itself).

Not thread-safe: one vCPU thread owns the driver.

Glossary:
- doorbell: the ``RING_TAIL`` write that hands the new commands to the GPU.
- lost request: submitted before an engine reset and never executed.
- failsafe: the host stopped executing for this vGPU after a guest error (audit failure).
"""

from __future__ import annotations

from typing import Final

from vgpusim.common.errors import Exhausted, InvalidArgument, NotSupported, TooBig, WrongState
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import DRM_FORMAT_XRGB8888
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest.config import DeviceFailsafe, DriverConfig, DriverStatistics, display_mode
from vgpusim.qemu_frontend.guest.env import REGION_BAR0, GuestEnv
from vgpusim.qemu_frontend.guest.gtt import PAGE, GmBuffer, GuestGtt
from vgpusim.qemu_frontend.guest.probe import PciInfo, VgpuInfo, probe_pci, read_pvinfo
from vgpusim.qemu_frontend.guest.ring import BatchPool, Ring, count_commands, seqno_passed

_MAX_LOST: Final = 4096
__all__ = ["DeviceFailsafe", "DriverConfig", "DriverStatistics", "GuestDriver"]


class GuestDriver:
    """Drives one vGPU through ``env`` (see the module docstring)."""

    def __init__(self, env: GuestEnv, config: DriverConfig | None = None) -> None:
        self.env = env
        self.config = config or DriverConfig()
        self._pci: PciInfo | None = None
        self._info: VgpuInfo | None = None
        self._gtt: GuestGtt | None = None
        self._rings: dict[Engine, Ring] = {}
        self._batches: BatchPool | None = None
        self.scratch: GmBuffer | None = None
        self.framebuffers: tuple[GmBuffer, ...] = ()
        self.mode = (0, 0, 0)  # width, height, stride of the framebuffers
        self._irq_bits = 0
        self._running = False
        self._seqno = 0
        self._owner: dict[int, Engine] = {}
        self._lost: dict[int, None] = {}
        self._first_doorbell: float | None = None
        self._latency: float | None = None
        self._subs = self._cmds = self._irqs = self._flips = self._errors = 0
        self._hangs = self._resets = self._lost_total = 0

    # ---- bring-up ----------------------------------------------------------------------------

    @property
    def pci(self) -> PciInfo:
        if self._pci is None:
            raise WrongState("the device was not probed", reason="NOT_PROBED")
        return self._pci

    @property
    def info(self) -> VgpuInfo:
        if self._info is None:
            raise WrongState("PVINFO was not read", reason="PVINFO_NOT_READ")
        return self._info

    @property
    def gtt(self) -> GuestGtt:
        if self._gtt is None:
            raise WrongState("the driver is not initialised", reason="NOT_INITIALISED")
        return self._gtt

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines with a ring (after :meth:`init`)."""
        return tuple(self._rings)

    def ring(self, engine: Engine) -> Ring:
        ring = self._rings.get(engine)
        if ring is None:
            raise InvalidArgument(f"engine {engine.name} has no ring", reason="NO_SUCH_ENGINE")
        return ring

    def probe(self) -> PciInfo:
        """Identify and enable the PCI function (see ``probe.probe_pci``)."""
        self._pci = probe_pci(self.env.port, msi_vector=self.config.msi_vector)
        return self._pci

    def read_pvinfo(self) -> VgpuInfo:
        """Read the PVINFO page (this is what tells the host the guest is vGPU-aware)."""
        self._info = read_pvinfo(self.env.port)
        return self._info

    def init(self) -> None:
        """Allocate and map everything, program the rings, enable the interrupts."""
        if self._gtt is not None:
            raise WrongState("the driver was initialised already", reason="ALREADY_INITIALISED")
        if self._pci is None:
            self.probe()
        info = self._info or self.read_pvinfo()
        if not info.engines:
            raise NotSupported("the vGPU has no engine", reason="NO_ENGINES")
        cfg = self.config
        gtt = self._gtt = GuestGtt(self.env, info.low_gm)
        for e in info.engines:
            ring_buffer = gtt.map_buffer(f"ring-{e.name.lower()}", cfg.ring_size)
            self._rings[e] = Ring(e, ring_buffer, gtt.map_buffer(f"hwsp-{e.name.lower()}", PAGE))
        self._batches = BatchPool([gtt.map_buffer(f"batch-{i}", cfg.batch_size) for i in range(cfg.batches)])
        self.scratch = gtt.map_buffer("scratch", cfg.scratch_size)
        self._map_framebuffers(info)
        self._irq_bits = r.INT_FLIP_DONE
        for e in info.engines:
            self._irq_bits |= r.int_complete(e) | r.int_error(e)
        self.write_reg(r.INT_MASK, 0xFFFF_FFFF)
        self.write_reg(r.INT_ENABLE, self._irq_bits)
        self.write_reg(r.INT_ACK, 0xFFFF_FFFF)
        for ring in self._rings.values():
            self._program_ring(ring)
        self.write_reg(r.INT_MASK, ~self._irq_bits & 0xFFFF_FFFF)
        self._running = True

    def _map_framebuffers(self, info: VgpuInfo) -> None:
        """Map the framebuffers; short of memory, single buffering is better than no display."""
        self.mode = display_mode(info, self.config.resolution)
        _, height, stride = self.mode
        fbs: list[GmBuffer] = []
        for i in range(self.config.framebuffers):
            try:
                fbs.append(self.gtt.map_buffer(f"fb{i}", stride * height))
            except Exhausted:
                if not fbs:
                    raise
                break
        self.framebuffers = tuple(fbs)

    def _program_ring(self, ring: Ring) -> None:
        e = ring.engine
        self.write_reg(r.ring_reg(e, r.RING_CTL), 0)
        self.write_reg(r.ring_reg(e, r.RING_START_LO), ring.buffer.gm, 8)
        self.write_reg(r.ring_reg(e, r.RING_SIZE), ring.size)
        self.write_reg(r.ring_reg(e, r.RING_HEAD), 0)
        self.write_reg(r.ring_reg(e, r.RING_TAIL), 0)
        self.write_reg(r.ring_reg(e, r.RING_HWS_LO), ring.hws.gm, 8)
        self.write_reg(r.ring_reg(e, r.RING_CTL), r.RING_CTL_ENABLE)
        ring.reset()
        if not self.read_reg(r.ring_reg(e, r.RING_CTL)) & r.RING_CTL_ENABLE:
            raise NotSupported(f"the vGPU refused to enable the {e.name} ring", reason="RING_ENABLE_REFUSED")

    # ---- registers and memory ----------------------------------------------------------------

    def read_reg(self, offset: int, size: int = 4) -> int:
        """A BAR0 read (one trapped access)."""
        return self.env.port.read(REGION_BAR0, offset, size)

    def write_reg(self, offset: int, value: int, size: int = 4) -> None:
        """A BAR0 write (one trapped access)."""
        self.env.port.write(REGION_BAR0, offset, size, value)

    def map_buffer(self, name: str, size: int) -> GmBuffer:
        """A new zeroed buffer mapped into the vGPU's low GM (after :meth:`init`)."""
        return self.gtt.map_buffer(name, size)

    def gm_to_gpa(self, gm: int) -> int:
        return self.gtt.gm_to_gpa(gm)

    def gpa_to_gm(self, gpa: int) -> int:
        return self.gtt.gpa_to_gm(gpa)

    def read_gm(self, gm: int, size: int) -> bytes:
        """CPU read of mapped GM (through the guest's own mapping: GM -> GPA -> RAM)."""
        return self.env.read_ram(self.gm_to_gpa(gm), size)

    def write_gm(self, gm: int, data: bytes) -> None:
        """CPU write of mapped GM."""
        self.env.write_ram(self.gm_to_gpa(gm), data)

    # ---- submission --------------------------------------------------------------------------

    def submit(self, engine: Engine, commands: bytes, *, ring_doorbell: bool = True) -> int:
        """Queue ``commands`` on ``engine`` followed by the completion; return its seqno.

        With ``ring_doorbell=False`` the commands are only written into the ring: the caller
        rings :meth:`doorbell` itself (the latency workload times that write alone).
        Errors: WrongState (NOT_RUNNING), InvalidArgument (not whole dwords), TooBig (longer than
        half the ring: use :meth:`submit_batch`), DeviceFailsafe (a needed reset did not take).
        """
        if not self._running:
            raise WrongState("the driver is not running", reason="NOT_RUNNING")
        ring = self.ring(engine)
        if len(commands) % 4:
            raise InvalidArgument("commands are not whole dwords", reason="BAD_COMMANDS")
        self._seqno = self._seqno % 0xFFFF_FFFF + 1  # 1..2**32-1, never 0
        seqno = self._seqno
        payload = commands + c.pack(c.store_seqno(seqno), c.user_interrupt())
        if len(payload) % 8:
            payload += c.pack(c.noop())
        if len(payload) > ring.max_payload:
            raise TooBig(f"{len(payload)} bytes do not fit the ring", reason="SUBMISSION_TOO_LARGE")
        self._retire(ring)
        self._wait_for_space(ring, len(payload))
        ring.emit(self.env, payload)
        ring.outstanding.append(seqno)
        ring.last_submitted = seqno
        self._owner[seqno] = engine
        if ring_doorbell:
            self.doorbell(engine)
        self._cmds += count_commands(commands)
        return seqno

    def submit_batch(self, engine: Engine, commands: bytes) -> int:
        """Put ``commands`` in a batch buffer and start it from the ring; return the seqno."""
        pool = self._batches
        if pool is None:
            raise WrongState("the driver is not initialised", reason="NOT_INITIALISED")
        body = commands + c.pack(c.batch_buffer_end())
        if len(body) > pool.capacity:
            raise TooBig(f"batch of {len(body)} bytes above {pool.capacity}", reason="BATCH_TOO_LARGE")
        slot = pool.next()
        if slot.fence is not None and not self.is_complete(slot.fence):
            self.wait(slot.fence)
        self.env.write_ram(slot.buffer.gpa, body)
        seqno = self.submit(engine, c.pack(c.batch_buffer_start(slot.buffer.gm)))
        self._cmds += count_commands(commands) - 1  # count the batch's commands, not the start
        slot.fence = seqno
        return seqno

    def doorbell(self, engine: Engine) -> None:
        """Write the software tail to ``RING_TAIL`` (the GPU picks up everything before it)."""
        self.write_reg(r.ring_reg(engine, r.RING_TAIL), self.ring(engine).tail)
        self._subs += 1
        if self._first_doorbell is None:
            self._first_doorbell = self.env.clock.monotonic()

    def _wait_for_space(self, ring: Ring, nbytes: int) -> None:
        need = ring.padding(nbytes) + nbytes
        head_reg = r.ring_reg(ring.engine, r.RING_HEAD)
        head = self.read_reg(head_reg)
        deadline = self.env.clock.monotonic() + self.config.timeout_s
        while ring.space(head) < need:
            now = self.env.clock.monotonic()
            if now >= deadline or (
                not self._wait_irq(min(self.config.poll_s, deadline - now)) and self._hung(ring)
            ):
                self._recover(ring)
                return
            new = self.read_reg(head_reg)
            if new != head:
                head, deadline = new, self.env.clock.monotonic() + self.config.timeout_s

    # ---- completion --------------------------------------------------------------------------

    def completed(self, engine: Engine) -> int:
        """The last seqno ``engine`` completed (dword 0 of its status page, read from guest RAM)."""
        return self.ring(engine).completed(self.env)

    def seqno_register(self, engine: Engine) -> int:
        """The ``RING_SEQNO`` register (a trapped read; the status page is the fast path)."""
        return self.read_reg(r.ring_reg(engine, r.RING_SEQNO))

    def is_complete(self, seqno: int) -> bool:
        """True once ``seqno`` retired (completed or lost to a reset)."""
        engine = self._owner.get(seqno)
        if engine is None:
            return True
        self._retire(self._rings[engine])
        return seqno not in self._owner

    def wait(self, seqno: int, timeout: float | None = None) -> bool:
        """Wait for request ``seqno``; True if it completed, False if it was lost to a hang.

        A hang is no seqno progress on its engine for ``timeout`` seconds (default
        ``config.timeout_s``) or ``RING_STATUS.HUNG``: the engine is reset and re-initialised.
        Errors: DeviceFailsafe when the reset does not take.
        """
        if seqno in self._lost:
            del self._lost[seqno]
            return False
        engine = self._owner.get(seqno)
        if engine is None:
            return True
        ring = self._rings[engine]
        limit = self.config.timeout_s if timeout is None else timeout
        clock = self.env.clock
        last = ring.completed(self.env)
        deadline = clock.monotonic() + limit
        while True:
            self._retire(ring)
            if seqno not in self._owner:
                return True
            now = clock.monotonic()
            done = ring.completed(self.env)
            if done != last:
                last, deadline = done, now + limit
            if now >= deadline:
                break
            if not self._wait_irq(min(self.config.poll_s, deadline - now)) and self._hung(ring):
                break
        self._retire(ring)
        if seqno not in self._owner:
            return True
        self._recover(ring)
        self._lost.pop(seqno, None)
        return False

    def wait_interrupt(self, timeout: float | None = None) -> bool:
        """Sleep until the next interrupt (serviced and acknowledged); False after ``timeout``."""
        clock = self.env.clock
        deadline = clock.monotonic() + (self.config.timeout_s if timeout is None else timeout)
        while (now := clock.monotonic()) < deadline:
            if self._wait_irq(deadline - now):
                return True
        return False

    def idle(self, timeout: float | None = None) -> bool:
        """Wait for every engine's newest request; True if none was lost."""
        return all([self.wait(ring.last_submitted, timeout) for ring in self._rings.values()])

    def _retire(self, ring: Ring) -> None:
        done = ring.completed(self.env)
        while ring.outstanding and seqno_passed(done, ring.outstanding[0]):
            self._owner.pop(ring.outstanding.popleft(), None)

    def _hung(self, ring: Ring) -> bool:
        return bool(self.read_reg(r.ring_reg(ring.engine, r.RING_STATUS)) & r.RING_STATUS_HUNG)

    def sleep_for_interrupt(self, timeout: float) -> bool:
        """Only sleep in ``env.wait_irq`` (up to ``timeout`` s): True once an interrupt arrived.

        The interrupt is not serviced: call :meth:`service_interrupt` next (the latency workload
        times the sleep alone).  :meth:`wait` and :meth:`wait_interrupt` do both.
        """
        return self.env.wait_irq(max(timeout, 0.0))

    def service_interrupt(self) -> int:
        """Count an interrupt that arrived and acknowledge it (``INT_STATUS`` read, ``INT_ACK``
        write-1-to-clear); return the status bits."""
        self._irqs += 1
        if self._latency is None and self._first_doorbell is not None:
            self._latency = (self.env.clock.monotonic() - self._first_doorbell) * 1e6
        status = self.read_reg(r.INT_STATUS)
        if status:
            self.write_reg(r.INT_ACK, status)
        self._flips += bool(status & r.INT_FLIP_DONE)
        self._errors += bool(status & self._irq_bits & 0xFF00)
        return status

    def _wait_irq(self, timeout: float) -> bool:
        if not self.sleep_for_interrupt(timeout):
            return False
        self.service_interrupt()
        return True

    # ---- hangs and resets --------------------------------------------------------------------

    def _recover(self, ring: Ring) -> None:
        self._hangs += 1
        self.reset_engine(ring.engine)

    def reset_engine(self, engine: Engine) -> None:
        """Reset ``engine`` through ``GDRST`` and re-initialise its ring; its outstanding requests are lost.

        Errors: DeviceFailsafe (the ring registers survived the reset: the host ignores us).
        """
        ring = self.ring(engine)
        self.write_reg(r.GDRST, r.gdrst_bit(engine))
        if self.read_reg(r.ring_reg(engine, r.RING_SIZE)) != 0:
            self._running = False
            raise DeviceFailsafe(
                f"the {engine.name} engine did not reset: the vGPU is in failsafe",
                metadata={"engine": engine.name},
            )
        self._resets += 1
        for seqno in ring.outstanding:
            self._owner.pop(seqno, None)
            self._lost[seqno] = None
            self._lost_total += 1
        while len(self._lost) > _MAX_LOST:
            del self._lost[next(iter(self._lost))]
        ring.outstanding.clear()
        ring.force_completed(self.env, ring.last_submitted)
        self._program_ring(ring)

    # ---- display -----------------------------------------------------------------------------

    def set_plane(
        self, base: int, width: int, height: int, stride: int, drm_format: int = DRM_FORMAT_XRGB8888
    ) -> None:
        """Program and enable the primary plane on the surface at GM ``base``."""
        self.write_reg(r.PLANE_FORMAT, drm_format)
        self.write_reg(r.PLANE_STRIDE, stride)
        self.write_reg(r.PLANE_WIDTH, width)
        self.write_reg(r.PLANE_HEIGHT, height)
        self.write_reg(r.PLANE_BASE_LO, base, 8)
        self.write_reg(r.PLANE_CTL, r.PLANE_CTL_ENABLE)
        self.write_reg(r.PV_DISPLAY_READY, 1)

    def flip(self, base: int) -> None:
        """Point the enabled plane at GM ``base`` from the CPU (raises FLIP_DONE)."""
        self.write_reg(r.PLANE_BASE_LO, base, 8)

    def disable_plane(self) -> None:
        self.write_reg(r.PLANE_CTL, 0)

    # ---- teardown and statistics -------------------------------------------------------------

    def shutdown(self) -> None:
        """Disable the rings and the interrupts (idempotent; the plane keeps showing its frame)."""
        for e in self._rings:
            self.write_reg(r.ring_reg(e, r.RING_CTL), 0)
        if self._irq_bits:
            self.write_reg(r.INT_MASK, 0xFFFF_FFFF)
            self.write_reg(r.INT_ENABLE, 0)
            self.write_reg(r.INT_ACK, 0xFFFF_FFFF)
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(
            submissions=self._subs,
            commands_submitted=self._cmds,
            interrupts_received=self._irqs,
            flips=self._flips,
            errors=self._errors,
            hangs_detected=self._hangs,
            resets=self._resets,
            lost_requests=self._lost_total,
            first_irq_latency_us=self._latency,
        )
