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
the ring's eventfd (see :mod:`vgpusim.common.shm.notify`), and learns of the other side's death
through the broker connection.

Glossary:
- trap: one guest access of a device region, as KVM would exit to QEMU for it.
- region: the VFIO region index (BAR0 0, BAR2 2, CONFIG 7).
"""

from __future__ import annotations

import errno as _errno
import struct
import threading
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument, PermissionDenied, VgpusimError, WrongState
from vgpusim.common.shm.channel import ChannelEnd, ChannelSpec, RingSpec, Side

TRAP: Final = struct.Struct("<IBBBBQQ")
REPLY: Final = struct.Struct("<IiQ")
IRQ: Final = struct.Struct("<IIQQ")
OP_READ: Final = 1
OP_WRITE: Final = 2
RING_SLOTS: Final = 256
REPLY_TIMEOUT_S: Final = 10.0

CHANNEL_SPEC: Final = ChannelSpec(
    (
        RingSpec("trap", RING_SLOTS, 32, Side.PEER),
        RingSpec("reply", RING_SLOTS, 24, Side.OWNER),
        RingSpec("irq", RING_SLOTS, 32, Side.OWNER),
    )
)


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
    """

    def __init__(self, end: ChannelEnd, *, spin_us: float | None = None) -> None:
        self.end = end
        self._trap = end.sender("trap")
        self._reply = end.receiver("reply")
        self.irqs = end.receiver("irq")
        self._spin_us = spin_us
        self._lock = threading.Lock()
        self._seq = 0
        self.reads = self.writes = 0

    def read(self, region: int, offset: int, size: int) -> int:
        with self._lock:
            self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
            self._trap.send(TRAP.pack(seq, OP_READ, region, size, 0, offset, 0), timeout=REPLY_TIMEOUT_S)
            while True:
                got, status, value = REPLY.unpack(
                    self._reply.recv(timeout=REPLY_TIMEOUT_S, spin_us=self._spin_us)
                )
                if got == seq:
                    break
            self.reads += 1
        if status:
            raise error_from_status(status, f"read of region {region} at {offset:#x}")
        return int(value)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
            self._trap.send(TRAP.pack(seq, OP_WRITE, region, size, 0, offset, value), timeout=REPLY_TIMEOUT_S)
            self.writes += 1

    def recv_irq(self, *, timeout: float | None, spin_us: float | None = None) -> IrqRecord:
        """The next interrupt (only one thread may receive interrupts)."""
        index, vector, raised, seq = IRQ.unpack(self.irqs.recv(timeout=timeout, spin_us=spin_us))
        return IrqRecord(index, vector, raised, seq)

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
        self._reply.send(REPLY.pack(seq, status, value & 0xFFFF_FFFF_FFFF_FFFF), timeout=REPLY_TIMEOUT_S)

    def raise_irq(self, index: int, vector: int, raised_ns: int) -> None:
        with self.irq_lock:
            self._irq_seq += 1
            self._irq.send(IRQ.pack(index, vector, raised_ns, self._irq_seq), timeout=REPLY_TIMEOUT_S)

    def close(self) -> None:
        self.end.close()
