"""The vGPU register file: guest MMIO reads/writes of BAR0 registers, and the device side.

Guest side: :meth:`RegisterFile.read` / :meth:`RegisterFile.write` (offsets and semantics in
``registers`` and the README table); a write returns a :class:`~registers.WriteEffect` so the
service can react (doorbell, engine reset, plane change, MSI, failsafe) without the register
file knowing about tasks or rings.  Device side (the engine and the scheduler): ring snapshots,
:meth:`set_head`, :meth:`complete`, :meth:`raise_events`, :meth:`set_hung`, plane snapshot.

Storage is one dict of 32-bit registers; each has a writable-bit mask (0 = read-only) and
optionally a hook run after the store.  An 8-byte access is two dword accesses whose stores all
happen before the hooks, so a 64-bit write of ``PLANE_BASE`` flips to the whole new address.
Unknown offsets read 0 and ignore writes (counted in ``unhandled_total``).

Glossary:
- pending interrupt: ``INT_STATUS & ~INT_MASK``; an MSI is due when it gains a bit.
- pv_notified: the guest read the PVINFO magic (it knows it runs on a vGPU).
"""

from __future__ import annotations

from collections.abc import Callable

from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine.workload import Completion, CompletionStatus
from vgpusim.gfx_host.core.registers import (
    NO_EFFECT,
    Engine,
    FailsafeReason,
    PlaneRegs,
    PvInfo,
    RegisterStatistics,
    RingState,
    WriteEffect,
)

_Hook = Callable[[int, int, int], WriteEffect]  # (offset, old, new) -> effect
_RING_WMASK = {
    r.RING_START_LO: 0xFFFF_F000,
    r.RING_START_HI: 0xFFFF_FFFF,
    r.RING_SIZE: (r.MAX_RING_SIZE * 2 - 1) & ~0xFFF,
    r.RING_CTL: r.RING_CTL_ENABLE,
    r.RING_HEAD: (r.MAX_RING_SIZE - 1) & ~0x7,
    r.RING_TAIL: (r.MAX_RING_SIZE - 1) & ~0x7,
    r.RING_SEQNO: 0,
    r.RING_STATUS: 0,
    r.RING_HWS_LO: 0xFFFF_F000,
    r.RING_HWS_HI: 0xFFFF_FFFF,
}
_COMMAND_REGS = frozenset({r.INT_ACK, r.GDRST})  # store nothing; their hook gets the written bits
_PLANE_REGS = (
    r.PLANE_CTL,
    r.PLANE_FORMAT,
    r.PLANE_STRIDE,
    r.PLANE_WIDTH,
    r.PLANE_HEIGHT,
    r.PLANE_BASE_LO,
    r.PLANE_BASE_HI,
)


class RegisterFile:
    """BAR0 registers ``[0, MMIO_SIZE)`` of one vGPU."""

    def __init__(self, pvinfo: PvInfo) -> None:
        self.engines = pvinfo.engines
        self._pvinfo = pvinfo
        self._wmask: dict[int, int] = {}
        self._hooks: dict[int, _Hook] = {}
        self._regs: dict[int, int] = {}
        self._ring_of: dict[int, Engine] = {}
        self._hung: set[Engine] = set()
        self._status_of: dict[int, Engine] = {}
        self._ctl_of: dict[int, int] = {}  # ring register -> its engine's RING_CTL offset
        self._doorbell_effect = {e: WriteEffect(doorbells=frozenset((e,))) for e in self.engines}
        self._signalled = 0
        self._pv_notified = False
        self._reads = self._writes = self._unhandled = self._doorbells = self._irqs = self._resets = 0
        self._define_layout()
        self.reset()

    # ----------------------------------------------------------------- layout
    def _define_layout(self) -> None:
        self._wmask[r.SCRATCH] = 0xFFFF_FFFF
        self._wmask |= {r.INT_STATUS: 0, r.INT_MASK: 0xFFFF_FFFF, r.INT_ACK: 0, r.INT_ENABLE: 0xFFFF_FFFF}
        self._hooks[r.INT_MASK] = self._on_int_mask
        self._hooks[r.INT_ACK] = self._on_int_ack
        self._wmask[r.GDRST] = 0
        self._hooks[r.GDRST] = self._on_gdrst
        for engine in self.engines:
            for reg, mask in _RING_WMASK.items():
                off = r.ring_reg(engine, reg)
                self._wmask[off] = mask
                self._ring_of[off] = engine
                self._ctl_of[off] = r.ring_reg(engine, r.RING_CTL)
            self._hooks[r.ring_reg(engine, r.RING_TAIL)] = self._on_tail
            self._hooks[r.ring_reg(engine, r.RING_CTL)] = self._on_ring_ctl
            self._hooks[r.ring_reg(engine, r.RING_HEAD)] = self._on_head
            self._status_of[r.ring_reg(engine, r.RING_STATUS)] = engine
        for off in _PLANE_REGS:
            self._wmask[off] = 0xFFFF_FFFF
            self._hooks[off] = self._on_plane
        self._wmask[r.PLANE_CTL] = r.PLANE_CTL_ENABLE
        self._wmask[r.PLANE_BASE_LO] = 0xFFFF_F000
        for off in range(r.PVINFO_BASE, r.PVINFO_BASE + 0x50, 4):
            self._wmask[off] = 0
        self._wmask[r.PV_DISPLAY_READY] = 0xFFFF_FFFF

    def reset(self) -> None:
        """Every register to its reset value and the PVINFO page rewritten (DMLR, open)."""
        self._regs = dict.fromkeys(self._wmask, 0)
        self._regs[r.INT_MASK] = 0xFFFF_FFFF
        self._hung.clear()
        self._signalled = 0
        self._pv_notified = False
        pv = self._pvinfo
        u64 = {
            r.PV_MAGIC_LO: r.PVINFO_MAGIC_VALUE,
            r.PV_LOW_GM_BASE: pv.low_gm.start,
            r.PV_LOW_GM_SIZE: pv.low_gm.size,
            r.PV_HIGH_GM_BASE: pv.high_gm.start,
            r.PV_HIGH_GM_SIZE: pv.high_gm.size,
            r.PV_GM_TOTAL: pv.gm_total,
        }
        for off, value in u64.items():
            self._regs[off], self._regs[off + 4] = value & 0xFFFF_FFFF, value >> 32
        self._regs[r.PV_VERSION] = r.PVINFO_VERSION_VALUE
        self._regs[r.PV_VGPU_ID] = pv.vgpu_id
        self._regs[r.PV_ENGINE_MASK] = sum(1 << e for e in pv.engines)
        self._regs[r.PV_FENCE_BASE] = pv.fences.start
        self._regs[r.PV_FENCE_COUNT] = pv.fences.size
        self._regs[r.PV_DISPLAY_WIDTH] = pv.display_width
        self._regs[r.PV_DISPLAY_HEIGHT] = pv.display_height

    # ------------------------------------------------------------- guest side
    @property
    def pv_notified(self) -> bool:
        """Whether the guest has read the PVINFO magic since the last reset."""
        return self._pv_notified

    def read(self, offset: int, size: int) -> int:
        """Guest read of ``size`` bytes at ``offset`` (already checked by the caller)."""
        self._reads += 1
        if size == 8:
            return self._read32(offset) | self._read32(offset + 4) << 32
        shift = (offset & 3) * 8
        return (self._read32(offset & ~3) >> shift) & ((1 << (size * 8)) - 1)

    def _read32(self, off: int) -> int:
        value = self._regs.get(off)
        if value is None:
            self._unhandled += 1
            return 0
        if off in self._status_of:
            return self._ring_status(self._status_of[off])
        if off == r.PV_MAGIC_LO:
            self._pv_notified = True
        return value

    def write(self, offset: int, size: int, value: int, *, side_effects: bool = True) -> WriteEffect:
        """Guest write; returns what the service must do.  ``side_effects=False`` (failsafe) only stores."""
        self._writes += 1
        if size == 8:
            parts = [(offset, 0xFFFF_FFFF, value & 0xFFFF_FFFF), (offset + 4, 0xFFFF_FFFF, value >> 32)]
        else:
            shift = (offset & 3) * 8
            bmask = ((1 << (size * 8)) - 1) << shift
            parts = [(offset & ~3, bmask, (value << shift) & bmask)]
        changes: list[tuple[int, int, int]] = []
        for off, bmask, val in parts:
            wmask = self._wmask.get(off)
            if wmask is None:
                self._unhandled += 1
                continue
            old = self._regs[off]
            new = (old & ~(wmask & bmask)) | (val & wmask & bmask)
            self._regs[off] = new
            changes.append((off, old, val & bmask if off in _COMMAND_REGS else new))
        effect = NO_EFFECT
        if side_effects:
            for off, old, new in changes:
                hook = self._hooks.get(off)
                if hook is not None:
                    result = hook(off, old, new)
                    effect = result if effect is NO_EFFECT else effect.merge(result)
        return effect

    # ------------------------------------------------------------------ hooks
    def _on_int_mask(self, off: int, old: int, new: int) -> WriteEffect:
        return WriteEffect(irq=True) if self._update_irq() else NO_EFFECT

    def _on_int_ack(self, off: int, old: int, bits: int) -> WriteEffect:
        self._regs[r.INT_STATUS] &= ~bits
        self._signalled &= ~bits
        return NO_EFFECT

    def _on_gdrst(self, off: int, old: int, bits: int) -> WriteEffect:
        if bits & r.GDRST_FULL:
            engines = frozenset(self.engines)
        else:
            engines = frozenset(e for e in self.engines if bits & r.gdrst_bit(e))
        self.reset_engines(engines)
        return WriteEffect(resets=engines) if engines else NO_EFFECT

    def _on_tail(self, off: int, old: int, new: int) -> WriteEffect:
        if not self._regs[self._ctl_of[off]] & r.RING_CTL_ENABLE:
            return NO_EFFECT
        return self._doorbell(self._ring_of[off])

    def _on_ring_ctl(self, off: int, old: int, new: int) -> WriteEffect:
        engine = self._ring_of[off]
        if new & r.RING_CTL_ENABLE and not old & r.RING_CTL_ENABLE:
            if not self.pv_notified:
                self._regs[off] = old
                return WriteEffect(failsafe=FailsafeReason.UNSUPPORTED_GUEST)
            ring = self.ring(engine)
            if ring.head != ring.tail:
                return self._doorbell(engine)
        return NO_EFFECT

    def _on_head(self, off: int, old: int, new: int) -> WriteEffect:
        if self._regs[self._ctl_of[off]] & r.RING_CTL_ENABLE:
            self._regs[off] = old  # the GPU owns the head while the ring runs
        return NO_EFFECT

    def _on_plane(self, off: int, old: int, new: int) -> WriteEffect:
        effect = WriteEffect(plane_changed=True) if old != new else NO_EFFECT
        if off == r.PLANE_BASE_LO and self._regs[r.PLANE_CTL] & r.PLANE_CTL_ENABLE:
            effect = effect.merge(WriteEffect(irq=self.raise_events(r.INT_FLIP_DONE)))
        return effect

    def _doorbell(self, engine: Engine) -> WriteEffect:
        self._doorbells += 1
        return self._doorbell_effect[engine]

    # ------------------------------------------------------------ device side
    def ring(self, engine: Engine) -> RingState:
        """A snapshot of ``engine``'s ring registers."""
        g = self._regs
        b = r.ENGINE_BASE[engine]
        return RingState(
            engine=engine,
            start=g[b + r.RING_START_LO] | g[b + r.RING_START_HI] << 32,
            size=g[b + r.RING_SIZE],
            head=g[b + r.RING_HEAD],
            tail=g[b + r.RING_TAIL],
            enabled=bool(g[b + r.RING_CTL] & r.RING_CTL_ENABLE),
            seqno=g[b + r.RING_SEQNO],
            hung=engine in self._hung,
            hws=g[b + r.RING_HWS_LO] | g[b + r.RING_HWS_HI] << 32,
        )

    def _ring_status(self, engine: Engine) -> int:
        ring = self.ring(engine)
        return (r.RING_STATUS_IDLE if ring.head == ring.tail else 0) | (
            r.RING_STATUS_HUNG if ring.hung else 0
        )

    def set_head(self, engine: Engine, head: int) -> None:
        """The GPU consumed the ring up to byte offset ``head``."""
        self._regs[r.ring_reg(engine, r.RING_HEAD)] = head & _RING_WMASK[r.RING_HEAD]

    def apply_completion(self, completion: Completion) -> bool:
        """Reflect a finished workload in the registers; True when an MSI must be sent.

        A completed workload moves RING_HEAD, applies its LRI register writes and display flips,
        stores its seqno and, with USER_INTERRUPT, latches the engine's completion event. A hung or
        faulted one only marks the engine hung (no interrupt: the guest finds out by timeout).
        """
        engine = Engine(completion.engine)
        if completion.status is not CompletionStatus.COMPLETED:
            self.set_hung(engine)
            return False
        self.set_head(engine, completion.ring_head)
        msi = False
        for offset, value in completion.register_writes:
            msi |= self.write(offset, 4, value).irq
        for flip in completion.flips:
            msi |= self.write(r.PLANE_BASE_LO, 8, flip.base).irq
        if completion.seqno is not None:
            self.set_seqno(engine, completion.seqno)
        if completion.interrupts:
            msi |= self.raise_events(r.int_complete(engine))
        return msi

    def set_seqno(self, engine: Engine, seqno: int) -> None:
        """The GPU stored ``seqno`` (STORE_SEQNO) for ``engine``; no interrupt by itself."""
        self._regs[r.ring_reg(engine, r.RING_SEQNO)] = seqno & 0xFFFF_FFFF

    def complete(self, engine: Engine, seqno: int) -> bool:
        """Work up to ``seqno`` completed on ``engine``; True if an MSI must be sent."""
        self._regs[r.ring_reg(engine, r.RING_SEQNO)] = seqno & 0xFFFF_FFFF
        return self.raise_events(r.int_complete(engine))

    def set_hung(self, engine: Engine, hung: bool = True) -> None:
        """Mark ``engine`` hung (RING_STATUS.HUNG) until the guest resets it through GDRST."""
        (self._hung.add if hung else self._hung.discard)(engine)

    def raise_events(self, bits: int) -> bool:
        """Latch the enabled event ``bits``; True if an MSI must be sent (new unmasked pending bit)."""
        latched = bits & self._regs[r.INT_ENABLE]
        if not latched:
            return False
        self._regs[r.INT_STATUS] |= latched
        return self._update_irq()

    def _update_irq(self) -> bool:
        pending = self._regs[r.INT_STATUS] & ~self._regs[r.INT_MASK]
        new = pending & ~self._signalled
        self._signalled = pending
        if new:
            self._irqs += 1
        return bool(new)

    def reset_engines(self, engines: frozenset[Engine]) -> None:
        """GDRST: the ring registers of ``engines`` back to 0 and their hang cleared."""
        for engine in engines:
            for reg in _RING_WMASK:
                self._regs[r.ring_reg(engine, reg)] = 0
            self._hung.discard(engine)
        self._resets += 1 if engines else 0

    def plane(self) -> PlaneRegs:
        """A snapshot of the display plane registers."""
        g = self._regs
        return PlaneRegs(
            enabled=bool(g[r.PLANE_CTL] & r.PLANE_CTL_ENABLE),
            drm_format=g[r.PLANE_FORMAT],
            width=g[r.PLANE_WIDTH],
            height=g[r.PLANE_HEIGHT],
            stride=g[r.PLANE_STRIDE],
            base=g[r.PLANE_BASE_LO] | g[r.PLANE_BASE_HI] << 32,
        )

    def statistics(self) -> RegisterStatistics:
        """A snapshot of the counters."""
        return RegisterStatistics(
            reads_total=self._reads,
            writes_total=self._writes,
            unhandled_total=self._unhandled,
            doorbells_total=self._doorbells,
            irqs_total=self._irqs,
            engine_resets_total=self._resets,
            pv_notified=self._pv_notified,
        )
