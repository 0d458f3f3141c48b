"""The executor: runs an audited workload against a vGPU's graphics memory, with real data movement.

Each op of an :class:`~.audit.AuditedWorkload` is dispatched through a table indexed by opcode.
Data moves through :meth:`GraphicsMemory.translate` views with ``memoryview`` slice assignments,
one per pair of contiguous runs (a 1 MiB copy through contiguous pinned pages is one ``memmove``).
Every op also costs simulated GPU time (:class:`CostModel`): a fixed cost per command, bytes moved
over a bandwidth, and ``SPIN``'s microseconds.  The result is a :class:`Completion`: the seqno
stored, interrupts to raise, busy time, display flips and register writes to apply.

Failures are the vGPU's own: a translation refused at execution time (a page unmapped after the
audit) is a DMA fault, and a workload whose busy time would exceed its budget (the watchdog) is a
hang; both stop the workload where it is, raise no interrupt, and are reported in the completion
(the runner then treats the engine as hung for that vGPU).

Glossary:
- busy time: simulated GPU time a workload occupies its engine, in microseconds.
- budget: the watchdog in busy time; exceeding it is a hang.
- HWSP: hardware status page (``STORE_SEQNO`` target, resolved by the audit).
"""

from __future__ import annotations

import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

from vgpusim.gfx_host.core.engine.commands import ComputeOp, Opcode
from vgpusim.gfx_host.core.engine.memory import DmaFault, GraphicsMemory
from vgpusim.gfx_host.core.engine.workload import (
    AuditedWorkload,
    Completion,
    CompletionStatus,
    DisplayFlip,
    Op,
)

_U32 = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class CostModel:
    """Simulated GPU time of commands (defaults: a 20 GB/s engine with 100 ns per command)."""

    workload_ns: int = 2_000  # submission / context restore per workload
    command_ns: int = 100  # every op
    bytes_per_us: int = 20_000  # bytes moved (read + written) per microsecond

    def __post_init__(self) -> None:
        if self.workload_ns < 0 or self.command_ns < 0 or self.bytes_per_us <= 0:
            raise ValueError("costs must be non-negative and bandwidth positive")


@dataclass(frozen=True, slots=True)
class ExecStats:
    workloads: int
    ops: int
    bytes_moved: int
    hangs: int
    dma_faults: int


class _Hang(Exception):
    """Internal: the workload ran past its budget."""


class _Run:
    """Mutable state of one workload's execution."""

    __slots__ = ("budget", "flips", "irqs", "moved", "ns", "regs", "seqno")

    def __init__(self, ns: int, budget: int) -> None:
        self.ns, self.budget = ns, budget
        self.seqno: int | None = None
        self.irqs = self.moved = 0
        self.flips: list[DisplayFlip] | None = None
        self.regs: list[tuple[int, int]] | None = None

    def charge(self, ns: int) -> None:
        total = self.ns + ns
        if total > self.budget:
            raise _Hang
        self.ns = total


Handler = Callable[[Op, GraphicsMemory, _Run], None]


class Executor:
    """Runs audited workloads.  Stateless between workloads apart from its counters."""

    def __init__(self, costs: CostModel | None = None) -> None:
        self.costs = costs or CostModel()
        self._cmd_ns = self.costs.command_ns
        self._bpus = self.costs.bytes_per_us
        self._workloads = self._ops = self._moved = self._hangs = self._faults = 0
        table: list[Handler] = [self._invalid] * 256
        table[Opcode.USER_INTERRUPT] = self._user_interrupt
        table[Opcode.DISPLAY_FLIP] = self._display_flip
        table[Opcode.SPIN] = self._spin
        table[Opcode.STORE_DWORD] = self._store_dword
        table[Opcode.STORE_SEQNO] = self._store_seqno
        table[Opcode.LOAD_REGISTER_IMM] = self._lri
        table[Opcode.FILL] = self._fill
        table[Opcode.COPY] = self._copy
        table[Opcode.COMPUTE] = self._compute
        self._handlers = tuple(table)

    def execute(
        self, workload: AuditedWorkload, memory: GraphicsMemory, *, budget_us: int | None = None
    ) -> Completion:
        """Run ``workload``; stop at a DMA fault or when busy time would exceed ``budget_us``."""
        budget = (1 << 62) if budget_us is None else budget_us * 1000
        run = _Run(self.costs.workload_ns, budget)
        handlers = self._handlers
        status, fault = CompletionStatus.COMPLETED, None
        try:
            for op in workload.ops:
                handlers[op[0]](op, memory, run)
        except _Hang:
            status, run.ns = CompletionStatus.HUNG, budget
            self._hangs += 1
        except DmaFault as e:
            status, fault = CompletionStatus.FAULTED, e
            self._faults += 1
        self._workloads += 1
        self._ops += len(workload.ops)
        self._moved += run.moved
        return Completion(
            workload.engine,
            status,
            workload.ring_head,
            max(1, -(-run.ns // 1000)),
            run.seqno,
            run.irqs if fault is None and status is CompletionStatus.COMPLETED else 0,
            run.moved,
            tuple(run.flips) if run.flips else (),
            tuple(run.regs) if run.regs else (),
            fault,
        )

    def statistics(self) -> ExecStats:
        return ExecStats(self._workloads, self._ops, self._moved, self._hangs, self._faults)

    # ---- handlers: (op, memory, run) ----------------------------------------------------------

    def _cost(self, nbytes: int) -> int:
        return self._cmd_ns + nbytes * 1000 // self._bpus

    @staticmethod
    def _invalid(op: Op, mem: GraphicsMemory, run: _Run) -> None:
        raise AssertionError(f"op {op[0]:#x} reached the executor without an audit")

    def _user_interrupt(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cmd_ns)
        run.irqs += 1

    def _display_flip(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cmd_ns)
        if run.flips is None:
            run.flips = []
        run.flips.append(DisplayFlip(op[1], op[2]))

    def _spin(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cmd_ns + op[1] * 1000)

    def _lri(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cmd_ns)
        if run.regs is None:
            run.regs = []
        run.regs.extend(zip(op[1::2], op[2::2], strict=True))

    def _store_dword(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cost(4))
        _store(mem, op[1], _U32.pack(op[2]))
        run.moved += 4

    def _store_seqno(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        run.charge(self._cost(4))
        _store(mem, op[1], _U32.pack(op[2]))
        run.moved += 4
        run.seqno = op[2]

    def _fill(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        _, dst, size, pattern = op
        run.charge(self._cost(size))
        pat, phase = _U32.pack(pattern), 0
        for r in mem.translate(dst, size, write=True):
            n = len(r)
            rot = pat[phase:] + pat[:phase]
            done = min(4, n)
            r[:done] = rot[:done]
            while done < n:  # double the filled prefix: log2(n) memmoves, no allocation
                k = min(done, n - done)
                r[done : done + k] = r[:k]
                done += k
            phase = (phase + n) % 4
        run.moved += size

    def _copy(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        _, dst, src, size = op
        ns = run.ns + self._cmd_ns + 2000 * size // self._bpus
        if ns > run.budget:
            raise _Hang
        run.ns = ns
        s = mem.translate(src, size, write=False)
        d = mem.translate(dst, size, write=True)
        if len(s) == 1 and len(d) == 1:
            d[0][:] = s[0]
        else:
            _copy_runs(d, s)
        run.moved += 2 * size

    def _compute(self, op: Op, mem: GraphicsMemory, run: _Run) -> None:
        _, dst, src, size, kind = op
        run.charge(self._cost(size + 4))
        runs = mem.translate(src, size, write=False)
        if kind == ComputeOp.CRC32:
            value = 0
            for r in runs:
                value = zlib.crc32(r, value)
        else:
            words = _u32_words(runs)
            if kind == ComputeOp.SUM32:
                value = sum(sum(w) for w in words) & 0xFFFF_FFFF
            else:
                value = reduce(operator.xor, (reduce(operator.xor, w, 0) for w in words), 0)
        _store(mem, dst, _U32.pack(value))
        run.moved += size + 4


def _store(mem: GraphicsMemory, addr: int, data: bytes) -> None:
    runs = mem.translate(addr, len(data), write=True)
    if len(runs) == 1:
        runs[0][:] = data
        return
    pos = 0
    for r in runs:
        r[:] = data[pos : pos + len(r)]
        pos += len(r)


def _copy_runs(dst: Sequence[memoryview], src: Sequence[memoryview]) -> None:
    """Copy between two run lists of equal total length, one slice assignment per overlap."""
    di = si = doff = soff = 0
    while di < len(dst):
        d, s = dst[di], src[si]
        n = min(len(d) - doff, len(s) - soff)
        d[doff : doff + n] = s[soff : soff + n]
        doff += n
        soff += n
        if doff == len(d):
            di, doff = di + 1, 0
        if soff == len(s):
            si, soff = si + 1, 0


def _u32_words(runs: Sequence[memoryview]) -> list[Sequence[int]]:
    """The little-endian dwords of the runs (joined first if a run splits a dword)."""
    if any(len(r) % 4 for r in runs):
        runs = [memoryview(b"".join(runs))]
    if _LITTLE:
        return [r.cast("I") for r in runs]
    out: list[Sequence[int]] = []
    for r in runs:
        a = array("I", bytes(r))
        a.byteswap()
        out.append(a)
    return out
