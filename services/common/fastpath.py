"""The per-device fast path between qemu_frontend and gfx_host: traps, replies and interrupts.

Once a vGPU is opened, guest register accesses and interrupts never cross gRPC: they travel as
fixed records through a shared-memory channel (:mod:`vgpusim.common.shm.channel`) that gfx_host
creates per open device and hands to the frontend through its broker socket.

Rings (slot payloads, little endian):

| ring | producer | record | fields |
|---|---|---|---|
| ``trap`` | frontend | 24 B ``<IBBBBQQ`` | seq, op (1 read, 2 write), region, size, flags, offset, value |
| ``reply`` | gfx_host | 16 B ``<IiQ`` | seq of the read, status (0 or -errno), value |
| ``irq`` | gfx_host | 24 B ``<IIQQ`` | VFIO IRQ index, vector, raised ns (CLOCK_MONOTONIC), seq |

Writes are posted (no reply; a write the device rejects is counted on the host, as hardware
drops it); a read waits for its reply, which also orders it after every earlier write.  A
doorbell is a posted write of a ring tail register.  Each side spins briefly before sleeping on
the ring's eventfd, and learns of the other side's death through the broker connection.  The
reply wait (and gfx_host's trap wait, and the frontend's interrupt wait) spin with
:class:`AdaptiveSpin`, which yields the vCPU every few microseconds: when both processes share a
vCPU the peer runs almost at once instead of after the spinner's time slice, and no eventfd is
signalled for an answer that comes while the waiter spins.

The frontend's ``irq`` ring may be consumed by several threads taking turns under
:attr:`GuestPort.irq_lock` (the IRQ thread, and a vCPU spinning for its interrupt):
:meth:`GuestPort.take_irqs`, :meth:`GuestPort.want_irq_signal` and
:meth:`GuestPort.sleep_irq_signal` (which sleeps without touching the ring, so it needs no lock).

Glossary:
- trap: one guest access of a device region, as KVM would exit to QEMU for it.
- region: the VFIO region index (BAR0 0, BAR2 2, CONFIG 7).
"""

from __future__ import annotations

import errno as _errno
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument, PermissionDenied, VgpusimError, WrongState
from vgpusim.common.shm.channel import ChannelEnd, ChannelSpec, RingSpec, Side
from vgpusim.common.shm.errors import RingFull
from vgpusim.common.shm.notify import Notifier
from vgpusim.common.shm.ring import full_fence

TRAP: Final = struct.Struct("<IBBBBQQ")
REPLY: Final = struct.Struct("<IiQ")
IRQ: Final = struct.Struct("<IIQQ")
OP_READ: Final = 1
OP_WRITE: Final = 2
RING_SLOTS: Final = 256
REPLY_TIMEOUT_S: Final = 10.0
REPLY_SPIN_US: Final = 50.0  # longest spin for a register read's reply
_PROBE_MIN, _PROBE_MAX = 16, 1024
_MIN_SPIN_NS = 1000
_YIELD_EVERY_NS = 2000  # a spinner yields its vCPU (and the GIL) this often

CHANNEL_SPEC: Final = ChannelSpec(
    (
        RingSpec("trap", RING_SLOTS, 32, Side.PEER),
        RingSpec("reply", RING_SLOTS, 24, Side.OWNER),
        RingSpec("irq", RING_SLOTS, 32, Side.OWNER),
    )
)


class AdaptiveSpin:
    """A spin budget with the policy of :class:`~vgpusim.common.shm.notify.Notifier`, yielding.

    Reset to ``max_us`` when a spin caught its event, halved (0 below 1 us) when it did not; at 0,
    one wait in ``gap`` probes with the full budget, ``gap`` doubling from 16 to 1024 per failed
    probe.  So spinning pays off for events that follow closely and costs little otherwise.
    Every 2 us the spinner yields the vCPU (``sched_yield``, which also releases the GIL): a peer
    that shares our vCPU runs almost at once instead of after our time slice, and the other Python
    threads of the process are not locked out; on a vCPU of its own the spinner still checks
    more often than it yields (a yield costs about a microsecond).  Not thread-safe (one
    spinning thread at a time).
    """

    def __init__(self, max_us: float) -> None:
        self._max_ns = int(max_us * 1000)
        self._budget_ns = self._max_ns
        self._gap = _PROBE_MIN
        self._waits = 0

    @property
    def budget_us(self) -> float:
        """How long the next spin may last (0: only every ``gap``-th one probes)."""
        return self._budget_ns / 1000

    def spin(self, ready: Callable[[], bool], limit_ns: int | None = None) -> bool:
        """Call ``ready`` until it is true (at least once), within the budget and ``limit_ns``."""
        probing = False
        budget = self._budget_ns
        if not budget:
            self._waits += 1
            probing = self._waits >= self._gap
            budget = self._max_ns if probing else 0
        limited = limit_ns is not None and limit_ns < budget
        if limit_ns is not None:
            budget = min(budget, limit_ns)
        now, pause = time.perf_counter_ns, os.sched_yield
        start = paused = now()
        while True:
            if ready():
                self._budget_ns, self._gap, self._waits = self._max_ns, _PROBE_MIN, 0
                return True
            t = now()
            if t - start >= budget:
                break
            if t - paused >= _YIELD_EVERY_NS:
                pause()
                paused = t
        if limited:
            return False  # the caller's limit ended it: says nothing about the event
        if probing:
            self._gap, self._waits = min(_PROBE_MAX, self._gap * 2), 0
        else:
            half = self._budget_ns // 2
            self._budget_ns = half if half >= _MIN_SPIN_NS else 0
        return False


@dataclass(frozen=True, slots=True)
class Trap:
    """One decoded trap record."""

    seq: int
    op: int
    region: int
    size: int
    offset: int
    value: int


@dataclass(frozen=True, slots=True)
class IrqRecord:
    """One interrupt raised by the device."""

    index: int
    vector: int
    raised_ns: int
    seq: int


def error_from_status(status: int, what: str) -> VgpusimError:
    """The domain error a device status (-errno) stands for."""
    code = -status
    if code in (_errno.EPERM, _errno.EACCES):
        return PermissionDenied(f"{what}: refused by the device", errno=code)
    if code == _errno.ENODEV:
        return WrongState(f"{what}: the device is not open", reason="DEVICE_NOT_OPEN", errno=code)
    return InvalidArgument(
        f"{what}: {_errno.errorcode.get(code, code)}", reason="MMIO_BAD_ACCESS", errno=code
    )


def status_of(exc: VgpusimError) -> int:
    """The -errno a device reports for ``exc``."""
    return -(exc.errno or _errno.EIO)


class GuestPort:
    """The frontend's end of a device channel: an ``MmioPort`` plus the interrupt receiver.

    ``read``/``write`` may be called from several threads (vCPUs, gRPC handlers); they are
    serialised, since the trap and reply rings each have a single producer and consumer.
    Interrupts: :meth:`recv_irq` for a single receiving thread, or the turn-taking methods
    under :attr:`irq_lock` (module docstring); never both.  ``spin_us`` None: replies are
    waited for with an :class:`AdaptiveSpin` (:data:`REPLY_SPIN_US`), else with the ring's own
    notifier spin of ``spin_us``.
    """

    def __init__(self, end: ChannelEnd, *, spin_us: float | None = None) -> None:
        self.end = end
        self._trap = end.sender("trap")
        self._reply = end.receiver("reply")
        self.irqs = end.receiver("irq")
        self.irq_lock = threading.Lock()
        # the eventfd gfx_host signals after an irq put while the consumer-waiting flag is set
        self._irq_signal: Notifier = self.irqs.data_notifier
        self._spin_us = spin_us
        self._reply_spin = AdaptiveSpin(REPLY_SPIN_US) if spin_us is None else None
        self._lock = threading.Lock()
        self._seq = 0
        self.reads = self.writes = 0

    def read(self, region: int, offset: int, size: int) -> int:
        with self._lock:
            self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
            self._send_trap(TRAP.pack(seq, OP_READ, region, size, 0, offset, 0))
            reply, spin_us = self._reply, self._spin_us
            if self._reply_spin is not None:
                ring = reply.ring
                if not ring.has_data():
                    self._reply_spin.spin(ring.has_data)
                spin_us = 0.0  # spun already: block at once
            while True:
                got, status, value = REPLY.unpack(reply.recv(timeout=REPLY_TIMEOUT_S, spin_us=spin_us))
                if got == seq:
                    break
            self.reads += 1
        if status:
            raise error_from_status(status, f"read of region {region} at {offset:#x}")
        return int(value)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
            self._send_trap(TRAP.pack(seq, OP_WRITE, region, size, 0, offset, value))
            self.writes += 1

    def _send_trap(self, record: bytes) -> None:
        try:
            self._trap.send_nowait(record)  # the common case: room in the ring, no deadline needed
        except RingFull:
            self._trap.send(record, timeout=REPLY_TIMEOUT_S)

    def recv_irq(self, *, timeout: float | None, spin_us: float | None = None) -> IrqRecord:
        """The next interrupt (only one thread may receive interrupts)."""
        index, vector, raised, seq = IRQ.unpack(self.irqs.recv(timeout=timeout, spin_us=spin_us))
        return IrqRecord(index, vector, raised, seq)

    def take_irqs(self, max_items: int = 64) -> list[IrqRecord]:
        """The interrupt records waiting (up to ``max_items``, [] if none), without blocking.

        Hold :attr:`irq_lock`.  Errors: PeerGone (gfx_host closed the ring and it is drained).
        """
        ring = self.irqs.ring
        if not ring.has_data() and not ring.producer_closed:
            return []
        return [IrqRecord(*IRQ.unpack(raw)) for raw in self.irqs.recv_batch_nowait(max_items)]

    def want_irq_signal(self, on: bool) -> bool:
        """Ask gfx_host to signal the irq eventfd after every put (``on``: a thread is about to
        sleep in :meth:`sleep_irq_signal`) or not (a thread polls the ring itself).

        With ``on``, returns whether records (or the ring's end) arrived already: take them
        before sleeping (the flag is published before the check).  Hold :attr:`irq_lock`.
        """
        ring = self.irqs.ring
        ring.set_consumer_waiting(on)
        if not on:
            return False
        full_fence()
        return ring.has_data() or ring.producer_closed

    def sleep_irq_signal(self, timeout: float | None) -> None:
        """Sleep until gfx_host signals the irq eventfd (after :meth:`want_irq_signal`), without
        touching the ring.  Errors: TimedOut, PeerGone (the broker connection hung up)."""
        self._irq_signal.wait(timeout, peer=self.irqs.peer)

    def close(self) -> None:
        self.end.close()


class HostPort:
    """gfx_host's end of a device channel: decode traps, answer reads, raise interrupts.

    One thread consumes traps (and sends replies); interrupts may be raised from another thread,
    under ``irq_lock``, since the irq ring has a single producer.
    """

    def __init__(self, end: ChannelEnd) -> None:
        self.end = end
        self.traps = end.receiver("trap")
        self._reply = end.sender("reply")
        self._irq = end.sender("irq")
        self.irq_lock = threading.Lock()
        self._irq_seq = 0

    def next_traps(self, max_items: int = 64) -> list[Trap]:
        """Every trap waiting (up to ``max_items``), without blocking."""
        out: list[Trap] = []
        for raw in self.traps.recv_batch_nowait(max_items):
            seq, op, region, size, _flags, offset, value = TRAP.unpack(raw)
            out.append(Trap(seq, op, region, size, offset, value))
        return out

    def reply(self, seq: int, status: int, value: int = 0) -> None:
        record = REPLY.pack(seq, status, value & 0xFFFF_FFFF_FFFF_FFFF)
        try:
            self._reply.send_nowait(record)
        except RingFull:
            self._reply.send(record, timeout=REPLY_TIMEOUT_S)

    def raise_irq(self, index: int, vector: int, raised_ns: int) -> None:
        with self.irq_lock:
            self._irq_seq += 1
            record = IRQ.pack(index, vector, raised_ns, self._irq_seq)
            try:
                self._irq.send_nowait(record)
            except RingFull:
                self._irq.send(record, timeout=REPLY_TIMEOUT_S)

    def close(self) -> None:
        self.end.close()
