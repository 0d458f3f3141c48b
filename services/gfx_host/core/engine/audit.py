"""The command audit: decode a guest workload, check it, and copy it into host shadow buffers.

What GVT-g's ``cmd_parser.c`` does before anything reaches the physical GPU (kernel-mdev.md §4.5):
the ring contents between head and tail, and every batch buffer they start, are copied into host
memory (the *shadow*) and decoded from there.  Every command must be known; every address and size
it uses must lie inside the vGPU's own partition and within ``max_surface_size``; batches nest at
most ring -> 1st level -> 2nd level; register writes go only to command-accessible registers; ring
pointers must fit the ring.  The result is a flat, already-validated program (batches inlined)
that the executor runs: the guest cannot change it after the check (no TOCTOU).

Any violation rejects the whole workload: nothing executes, the rejection is counted by reason,
and the result says ``failsafe`` -- the owner (the vGPU device model) puts the vGPU in failsafe
mode as GVT-g does for ``-EBADRQC``/``-EFAULT``; other vGPUs are unaffected.

Glossary:
- ring: the per-engine circular command buffer in GM; head = next dword the GPU reads, tail = end
  of what the guest submitted (the doorbell).
- shadow: host-side copy of guest commands; op: one validated command in executor form, a tuple
  ``(opcode, operands...)`` with addresses resolved (see ``workload``).
- failsafe: the vGPU state after an audit failure; cleared only by a device reset (DMLR).
"""

from __future__ import annotations

import enum
import errno as _errno
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE, DmaFault, GraphicsMemory
from vgpusim.gfx_host.core.engine.workload import AuditedWorkload, Op, RingState

MiB = 1 << 20


class AuditReason(enum.StrEnum):
    """Why the audit rejected a workload (the ``reason`` of :class:`CommandRejected`)."""

    UNKNOWN_OPCODE = "UNKNOWN_OPCODE"
    BAD_COMMAND_LENGTH = "BAD_COMMAND_LENGTH"
    TRUNCATED_COMMAND = "TRUNCATED_COMMAND"
    INVALID_OPERAND = "INVALID_OPERAND"
    MISALIGNED = "MISALIGNED"
    ADDRESS_OUT_OF_PARTITION = "ADDRESS_OUT_OF_PARTITION"
    SURFACE_TOO_LARGE = "SURFACE_TOO_LARGE"
    BATCH_NESTING = "BATCH_NESTING"
    BATCH_UNTERMINATED = "BATCH_UNTERMINATED"
    REGISTER_NOT_ALLOWED = "REGISTER_NOT_ALLOWED"
    BAD_RING = "BAD_RING"
    WORKLOAD_TOO_LARGE = "WORKLOAD_TOO_LARGE"
    DMA_FAULT = "DMA_FAULT"


# The errno each reason models (GVT-g: -EBADRQC for command errors, -EFAULT for address errors).
REASON_ERRNO: Mapping[AuditReason, int] = {
    AuditReason.UNKNOWN_OPCODE: _errno.EBADRQC,
    AuditReason.BAD_COMMAND_LENGTH: _errno.EBADRQC,
    AuditReason.TRUNCATED_COMMAND: _errno.EBADRQC,
    AuditReason.INVALID_OPERAND: _errno.EINVAL,
    AuditReason.MISALIGNED: _errno.EINVAL,
    AuditReason.ADDRESS_OUT_OF_PARTITION: _errno.EFAULT,
    AuditReason.SURFACE_TOO_LARGE: _errno.EFAULT,
    AuditReason.BATCH_NESTING: _errno.EBADRQC,
    AuditReason.BATCH_UNTERMINATED: _errno.EBADRQC,
    AuditReason.REGISTER_NOT_ALLOWED: _errno.EBADRQC,
    AuditReason.BAD_RING: _errno.EINVAL,
    AuditReason.WORKLOAD_TOO_LARGE: _errno.E2BIG,
    AuditReason.DMA_FAULT: _errno.EFAULT,
}


class CommandRejected(InvalidArgument):
    """A guest workload failed the audit; ``reason`` is an :class:`AuditReason`."""

    def __init__(self, reason: AuditReason, message: str) -> None:
        super().__init__(message, reason=reason.value, errno=REASON_ERRNO[reason])
        self.audit_reason = reason
        self.located = False  # set once the failing command's position is in the metadata


@dataclass(frozen=True, slots=True)
class AuditLimits:
    """Bounds of one workload (defaults: GVT-g's ``max_surface_size`` and shadow ring size)."""

    max_surface_size: int = 36 * MiB  # any operand size (fill, copy, compute)
    max_ring_size: int = 2 * MiB  # 512 x 4 KiB, GVT-g's shadow ring
    max_batch_size: int = 1 * MiB  # one batch buffer, scanned up to its BATCH_BUFFER_END
    max_shadow_bytes: int = 4 * MiB  # ring + all batches copied for one workload
    max_commands: int = 65536  # decoded commands in one workload


@dataclass(frozen=True, slots=True)
class AuditResult:
    """Either a workload to queue or the rejection that puts the vGPU in failsafe."""

    workload: AuditedWorkload | None
    error: CommandRejected | None = None

    @property
    def failsafe(self) -> bool:
        return self.error is not None

    def unwrap(self) -> AuditedWorkload:
        """The workload, or raise the rejection."""
        if self.error is not None:
            raise self.error
        assert self.workload is not None
        return self.workload


@dataclass(frozen=True, slots=True)
class AuditStats:
    workloads: int  # audited successfully
    rejected: int
    commands: int
    shadow_bytes: int
    rejections: Mapping[str, int]  # by AuditReason value


def _dwords(data: bytes) -> Sequence[int]:
    if sys.byteorder == "little":
        return memoryview(data)[: len(data) & ~3].cast("I")
    a = array("I", data[: len(data) & ~3])
    a.byteswap()
    return a


class _Work:
    """Mutable state of one audit pass."""

    __slots__ = ("batches", "commands", "ops", "ring", "shadow", "status_checked")

    def __init__(self, ring: RingState) -> None:
        self.ring, self.status_checked = ring, False
        self.ops: list[Op] = []
        self.commands = self.batches = self.shadow = 0


class _Stream:
    """The shadow dwords of one level; a batch grows by reading further until its BATCH_BUFFER_END."""

    __slots__ = ("addr", "auditor", "data", "dw", "level", "limit", "work")

    def __init__(self, auditor: CommandAuditor, work: _Work, level: int, data: bytes, addr: int, limit: int):
        self.auditor, self.work, self.level = auditor, work, level
        self.data, self.addr, self.limit = data, addr, limit
        self.dw = _dwords(data)

    def where(self, offset: int) -> int:
        """The GM address of byte ``offset`` of this stream (the ring wraps)."""
        if self.level:
            return self.addr + offset
        r = self.work.ring
        return r.base + (r.head + offset) % r.size

    def grow(self, need: int) -> Sequence[int]:
        """Read more of the batch until ``need`` dwords are shadowed."""
        while len(self.dw) < need:
            fetched = self.addr + len(self.data)
            if self.level == 0 or fetched >= self.limit:
                reason = AuditReason.TRUNCATED_COMMAND if self.level == 0 else AuditReason.BATCH_UNTERMINATED
                raise CommandRejected(reason, "command stream ends before the command or batch does")
            chunk = min(self.limit - fetched, max(PAGE_SIZE - fetched % PAGE_SIZE, len(self.data)))
            self.data += self.auditor._read(self.work, fetched, chunk)
            self.dw = _dwords(self.data)
        return self.dw


class CommandAuditor:
    """The audit of one vGPU: its memory (partition), its command-accessible registers, limits."""

    def __init__(
        self,
        memory: GraphicsMemory,
        *,
        cmd_registers: Container[int] = frozenset(),
        limits: AuditLimits | None = None,
    ) -> None:
        self._memory = memory
        self._partition = memory.partition
        self._cmd_registers = cmd_registers
        self._limits = limits or AuditLimits()
        self._rejections: Counter[str] = Counter()
        self._workloads = self._rejected = self._commands = self._shadow = 0
        table: list[Callable[[Sequence[int], int, int, _Work, int], bool]] = [self._nothing] * 256
        table[c.Opcode.USER_INTERRUPT] = self._user_interrupt
        table[c.Opcode.BATCH_BUFFER_END] = self._bb_end
        table[c.Opcode.BATCH_BUFFER_START] = self._bb_start
        table[c.Opcode.DISPLAY_FLIP] = self._display_flip
        table[c.Opcode.SPIN] = self._spin
        table[c.Opcode.STORE_DWORD] = self._store_dword
        table[c.Opcode.STORE_SEQNO] = self._store_seqno
        table[c.Opcode.LOAD_REGISTER_IMM] = self._lri
        table[c.Opcode.FILL] = self._fill
        table[c.Opcode.COPY] = self._copy
        table[c.Opcode.COMPUTE] = self._compute
        self._handlers = tuple(table)

    # ---- entry point ------------------------------------------------------------------------

    def audit(self, ring: RingState) -> AuditResult:
        """Shadow and check the commands in ``ring`` between head and tail.

        Return: ``AuditResult(workload)`` (an empty workload when head == tail), or
        ``AuditResult(None, error)`` whose ``failsafe`` is set; the rejection is counted.
        """
        work = _Work(ring)
        try:
            data = self._read_ring(work, ring)
            self._scan(_Stream(self, work, 0, data, ring.base + ring.head, 0), work)
        except CommandRejected as e:
            self._rejected += 1
            self._rejections[e.reason] += 1
            return AuditResult(None, e)
        self._workloads += 1
        self._commands += work.commands
        self._shadow += work.shadow
        return AuditResult(
            AuditedWorkload(ring.engine, tuple(work.ops), ring.tail, work.commands, work.batches, work.shadow)
        )

    def statistics(self) -> AuditStats:
        return AuditStats(
            self._workloads, self._rejected, self._commands, self._shadow, dict(self._rejections)
        )

    # ---- reading ----------------------------------------------------------------------------

    def _read(self, work: _Work, gm_addr: int, size: int) -> bytes:
        work.shadow += size
        if work.shadow > self._limits.max_shadow_bytes:
            raise CommandRejected(AuditReason.WORKLOAD_TOO_LARGE, "workload exceeds the shadow limit")
        try:
            views = self._memory.translate(gm_addr, size, write=False)
        except DmaFault as e:
            raise CommandRejected(AuditReason.DMA_FAULT, f"reading commands: {e.message}") from e
        return bytes(views[0]) if len(views) == 1 else b"".join(views)

    def _read_ring(self, work: _Work, r: RingState) -> bytes:
        lim = self._limits
        if r.size < PAGE_SIZE or r.size % PAGE_SIZE or r.size > lim.max_ring_size or r.base % PAGE_SIZE:
            raise CommandRejected(AuditReason.BAD_RING, f"ring base {r.base:#x} size {r.size:#x}")
        if not (0 <= r.head < r.size and 0 <= r.tail < r.size) or (r.head | r.tail) % 4:
            raise CommandRejected(AuditReason.BAD_RING, f"ring head {r.head:#x} tail {r.tail:#x}")
        if not self._partition.contains(r.base, r.size):
            raise CommandRejected(AuditReason.ADDRESS_OUT_OF_PARTITION, f"ring at {r.base:#x}")
        if r.head <= r.tail:
            return self._read(work, r.base + r.head, r.tail - r.head)
        return self._read(work, r.base + r.head, r.size - r.head) + self._read(work, r.base, r.tail)

    # ---- decoding ---------------------------------------------------------------------------

    def _scan(self, st: _Stream, work: _Work) -> None:
        """Decode ``st`` up to its end (ring) or its BATCH_BUFFER_END (batch), emitting ops."""
        level, dw, i = st.level, st.dw, 0
        spec_by_byte, handlers, max_commands = c.SPEC_BY_BYTE, self._handlers, self._limits.max_commands
        while True:
            if i >= len(dw):
                if level == 0:
                    return
                dw = st.grow(i + 1)
            h = dw[i]
            code = h >> 24
            spec = spec_by_byte[code]
            try:
                if spec is None:
                    raise CommandRejected(AuditReason.UNKNOWN_OPCODE, f"opcode {code:#04x}")
                length = h & 0xFF
                if not spec.length_ok(length):
                    raise CommandRejected(AuditReason.BAD_COMMAND_LENGTH, f"{spec.opcode.name} len {length}")
                if h & 0xFFFF00 & ~spec.flags_mask:
                    raise CommandRejected(AuditReason.INVALID_OPERAND, f"{spec.opcode.name} reserved flags")
                if i + 1 + length > len(dw):
                    dw = st.grow(i + 1 + length)
                work.commands += 1
                if work.commands > max_commands:
                    raise CommandRejected(AuditReason.WORKLOAD_TOO_LARGE, "too many commands")
                if handlers[code](dw, i, h, work, level):
                    return
            except CommandRejected as e:
                if not e.located:
                    e.located = True
                    e.metadata.update(level=str(level), offset=str(4 * i), gm_addr=hex(st.where(4 * i)))
                raise
            i += 1 + length

    def _range(self, addr: int, size: int) -> None:
        if size > self._limits.max_surface_size:
            raise CommandRejected(AuditReason.SURFACE_TOO_LARGE, f"size {size:#x} above max_surface_size")
        if not self._partition.contains(addr, size):
            raise CommandRejected(AuditReason.ADDRESS_OUT_OF_PARTITION, f"[{addr:#x}, +{size:#x}) outside")

    @staticmethod
    def _aligned(value: int, alignment: int, what: str) -> None:
        if value % alignment:
            raise CommandRejected(AuditReason.MISALIGNED, f"{what} {value:#x} not {alignment}-byte aligned")

    # ---- per-opcode checks (dw, index of the header, header, work, level) -> end of batch -----

    @staticmethod
    def _nothing(dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        return False  # NOOP, and the default of the dispatch table (unknown opcodes never get here)

    def _user_interrupt(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        w.ops.append(_OP_USER_INTERRUPT)
        return False

    def _bb_end(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        if level == 0:
            raise CommandRejected(AuditReason.BATCH_NESTING, "BATCH_BUFFER_END outside a batch")
        return True

    def _bb_start(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        addr, second = dw[i + 1] | dw[i + 2] << 32, bool(h & c.BB_SECOND_LEVEL)
        if level == 2:
            raise CommandRejected(AuditReason.BATCH_NESTING, "batch start inside a 2nd-level batch")
        if second != (level == 1):
            what = "the ring may not start a 2nd-level batch" if second else "batch chaining is not supported"
            raise CommandRejected(AuditReason.BATCH_NESTING, what)
        self._aligned(addr, 4, "batch address")
        end = self._partition.span_end(addr)
        if end is None:
            raise CommandRejected(AuditReason.ADDRESS_OUT_OF_PARTITION, f"batch at {addr:#x} outside")
        limit = min(end, addr + self._limits.max_batch_size)
        w.batches += 1
        self._scan(_Stream(self, w, level + 1, b"", addr, limit), w)
        return False

    def _display_flip(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        plane, base = (h & c.SELECT_MASK) >> c.SELECT_SHIFT, dw[i + 1] | dw[i + 2] << 32
        if plane not in (c.Plane.PRIMARY, c.Plane.CURSOR):
            raise CommandRejected(AuditReason.INVALID_OPERAND, f"display plane {plane}")
        self._aligned(base, PAGE_SIZE, "surface base")
        self._range(base, PAGE_SIZE)
        w.ops.append((_DISPLAY_FLIP, plane, base))
        return False

    def _spin(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        w.ops.append((_SPIN, dw[i + 1]))
        return False

    def _store_dword(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        addr = dw[i + 1] | dw[i + 2] << 32
        self._aligned(addr, 4, "address")
        self._range(addr, 4)
        w.ops.append((_STORE_DWORD, addr, dw[i + 3]))
        return False

    def _store_seqno(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        hwsp = w.ring.status_page
        if not w.status_checked:
            self._aligned(hwsp, PAGE_SIZE, "status page")
            self._range(hwsp, PAGE_SIZE)
            w.status_checked = True
        index = (h & c.SEQNO_INDEX_MASK) >> c.SEQNO_INDEX_SHIFT
        w.ops.append((_STORE_SEQNO, hwsp + 4 * index, dw[i + 1]))
        return False

    def _lri(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        body = tuple(dw[i + 1 : i + 1 + (h & 0xFF)])
        for reg in body[0::2]:
            if reg % 4 or reg not in self._cmd_registers:
                raise CommandRejected(AuditReason.REGISTER_NOT_ALLOWED, f"register {reg:#x} not allowed")
        w.ops.append((_LOAD_REGISTER_IMM, *body))
        return False

    def _fill(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        dst, size = dw[i + 1] | dw[i + 2] << 32, dw[i + 3]
        self._aligned(dst | size, 4, "fill destination/size")
        self._range(dst, size)
        w.ops.append((_FILL, dst, size, dw[i + 4]))
        return False

    def _copy(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        dst, src, size = dw[i + 1] | dw[i + 2] << 32, dw[i + 3] | dw[i + 4] << 32, dw[i + 5]
        self._range(src, size)
        self._range(dst, size)
        w.ops.append((_COPY, dst, src, size))
        return False

    def _compute(self, dw: Sequence[int], i: int, h: int, w: _Work, level: int) -> bool:
        dst, src, size = dw[i + 1] | dw[i + 2] << 32, dw[i + 3] | dw[i + 4] << 32, dw[i + 5]
        op = (h & c.SELECT_MASK) >> c.SELECT_SHIFT
        if op not in _COMPUTE_OPS:
            raise CommandRejected(AuditReason.INVALID_OPERAND, f"compute operation {op}")
        self._aligned(dst | src | size, 4, "compute source/destination/size")
        self._range(src, size)
        self._range(dst, 4)
        w.ops.append((_COMPUTE, dst, src, size, op))
        return False


_OP_USER_INTERRUPT: Op = (int(c.Opcode.USER_INTERRUPT),)
_DISPLAY_FLIP, _SPIN = int(c.Opcode.DISPLAY_FLIP), int(c.Opcode.SPIN)
_STORE_DWORD, _STORE_SEQNO = int(c.Opcode.STORE_DWORD), int(c.Opcode.STORE_SEQNO)
_LOAD_REGISTER_IMM, _FILL = int(c.Opcode.LOAD_REGISTER_IMM), int(c.Opcode.FILL)
_COPY, _COMPUTE = int(c.Opcode.COPY), int(c.Opcode.COMPUTE)
_COMPUTE_OPS = frozenset(int(o) for o in c.ComputeOp)
