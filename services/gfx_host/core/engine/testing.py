"""Test helpers for code that drives the engine: a vGPU rig (memory with guard pages, ring, auditor)
and ``spin_workload`` (a busy/hang workload built without a guest).

Public so that tests of the device model and of the guest driver can reuse it (as the fakes of
``memory``).  Nothing here is used by the service itself.

Glossary:
- rig: one simulated vGPU's memory (:class:`~.memory.FakeGraphicsMemory`), ring and auditor.
- canary: the byte pattern of the host guard pages around the partition; a stray write changes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.audit import AuditLimits, AuditResult, CommandAuditor
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE, FakeGraphicsMemory, GmPartition, GmRange
from vgpusim.gfx_host.core.engine.workload import AuditedWorkload, RingState

KiB = 1024
CANARY = 0xA5


class EngineRig:
    """One vGPU: low GM 512 KiB at 128 MiB, high GM 512 KiB at 1 GiB, host guard pages around them.

    Layout: ring (16 KiB) at the start of low GM, HWSP right after, data from +64 KiB; batches in
    high GM.  Host memory: [guard page][low][high][guard page], guards filled with CANARY.
    """

    LOW_BASE, LOW_SIZE = 0x0800_0000, 512 * KiB
    HIGH_BASE, HIGH_SIZE = 0x4000_0000, 512 * KiB
    RING, RING_SIZE = LOW_BASE, 16 * KiB
    HWSP = LOW_BASE + 16 * KiB
    DATA = LOW_BASE + 64 * KiB
    BATCH = HIGH_BASE
    REGS = frozenset({0x2000, 0x2004, 0x7000})

    def __init__(self, *, record: bool = False, limits: AuditLimits | None = None) -> None:
        self.partition = GmPartition(
            GmRange(self.LOW_BASE, self.LOW_SIZE), GmRange(self.HIGH_BASE, self.HIGH_SIZE)
        )
        size = PAGE_SIZE + self.LOW_SIZE + self.HIGH_SIZE + PAGE_SIZE
        self.mem = FakeGraphicsMemory(self.partition, size, record=record)
        self.mem.host[:] = bytes([CANARY]) * size
        self.mem.map_partition(host_offset=PAGE_SIZE)
        self.mem.host[PAGE_SIZE:-PAGE_SIZE] = bytes(size - 2 * PAGE_SIZE)
        self.auditor = CommandAuditor(self.mem, cmd_registers=self.REGS, limits=limits)
        self.tail = 0

    def write_ring(self, data: bytes) -> tuple[int, int]:
        """Append ``data`` to the ring (wrapping); return (head, tail)."""
        head = self.tail
        for k in range(0, len(data), 4):
            self.mem.write(self.RING + (head + k) % self.RING_SIZE, data[k : k + 4])
        self.tail = (head + len(data)) % self.RING_SIZE
        return head, self.tail

    def ring(self, head: int, tail: int, **kw: int) -> RingState:
        """A ring snapshot of this rig; ``kw`` overrides engine, base, size or status_page."""
        args = {"engine": 0, "base": self.RING, "size": self.RING_SIZE, "status_page": self.HWSP}
        args.update(kw)
        return RingState(head=head, tail=tail, **args)

    def submit(self, *cmds: Sequence[int], **kw: int) -> AuditResult:
        """Write ``cmds`` at the ring tail and audit them (``kw`` as for :meth:`ring`)."""
        head, tail = self.write_ring(c.pack(*cmds))
        return self.auditor.audit(self.ring(head, tail, **kw))

    def canary_intact(self) -> bool:
        """True if no byte of the host guard pages changed."""
        host = self.mem.host
        return set(host[:PAGE_SIZE]) == {CANARY} and set(host[-PAGE_SIZE:]) == {CANARY}


def spin_workload(engine: int, microseconds: int, ring_head: int = 0) -> AuditedWorkload:
    """An audited workload that keeps the engine busy (what the guest's hang/busy loads submit)."""
    return AuditedWorkload(
        engine, ((int(c.Opcode.SPIN), microseconds), (int(c.Opcode.USER_INTERRUPT),)), ring_head
    )
