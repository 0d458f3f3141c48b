"""The vGPU command set: opcodes, dword encoding, encoder helpers and a decoder.

A command is a header dword followed by ``LEN`` operand dwords (little-endian in memory)::

    31      24 23              8 7       0
    +---------+-----------------+---------+
    | OPCODE  |      FLAGS      |   LEN   |    LEN = operand dwords after the header
    +---------+-----------------+---------+

so a header-only command has ``LEN`` 0 and ``NOOP`` encodes as ``0x00000000`` (as i915's
``MI_NOOP``).  64-bit graphics addresses take two operand dwords, low then high.  Flag bits not
defined for an opcode must be zero.  The MI-style opcodes reuse i915's MI numbers; the blit and
compute ones live at 0x40+.  ``services/gfx_host/COMMANDS.md`` is the reference for guest driver
authors; :data:`SPECS` is the table both this module and the audit are driven by.

Glossary:
- dword: 32-bit word; GM address: graphics-memory address (see ``memory``).
- 1st/2nd-level batch: a buffer jumped to by ``BATCH_BUFFER_START`` from the ring (1st level) or
  from a 1st-level batch with ``SECOND_LEVEL`` set (2nd level); ``BATCH_BUFFER_END`` returns.
- HWSP: hardware status page, one 4 KiB page per engine where ``STORE_SEQNO`` writes.
- LRI: ``LOAD_REGISTER_IMM``, (register offset, value) pairs.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vgpusim.common.errors import InvalidArgument

OPCODE_SHIFT = 24
FLAGS_SHIFT = 8
FLAGS_MASK = 0xFFFF
LEN_MASK = 0xFF
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


class Opcode(enum.IntEnum):
    """Bits 31..24 of a command header."""

    NOOP = 0x00
    USER_INTERRUPT = 0x02
    BATCH_BUFFER_END = 0x0A
    DISPLAY_FLIP = 0x14
    SPIN = 0x1C
    STORE_DWORD = 0x20
    STORE_SEQNO = 0x21
    LOAD_REGISTER_IMM = 0x22
    BATCH_BUFFER_START = 0x31
    FILL = 0x40
    COPY = 0x41
    COMPUTE = 0x42


class ComputeOp(enum.IntEnum):
    """``COMPUTE`` flags bits 9..8: the 32-bit result written to ``dst``."""

    SUM32 = 0  # sum of the little-endian dwords of src, modulo 2**32
    XOR32 = 1  # xor of the little-endian dwords of src
    CRC32 = 2  # zlib/IEEE CRC-32 of the src bytes


class Plane(enum.IntEnum):
    """``DISPLAY_FLIP`` flags bits 9..8: the plane whose base address changes."""

    PRIMARY = 0
    CURSOR = 1


# Flag fields.
BB_SECOND_LEVEL = 1 << 8  # BATCH_BUFFER_START: the target is a 2nd-level batch
SEQNO_INDEX_SHIFT = 8  # STORE_SEQNO: dword index into the HWSP (0..1023)
SEQNO_INDEX_MASK = 0x3FF << SEQNO_INDEX_SHIFT
SELECT_SHIFT = 8  # COMPUTE op / DISPLAY_FLIP plane
SELECT_MASK = 0x3 << SELECT_SHIFT
MAX_LRI_PAIRS = LEN_MASK // 2  # 127 (register, value) pairs in one LRI


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """The encoding rules of one opcode: operand dword counts allowed and defined flag bits."""

    opcode: Opcode
    min_len: int
    max_len: int
    len_step: int  # LEN must be min_len + k * len_step
    flags_mask: int  # defined bits of the flags field, already shifted to the header position
    operands: tuple[str, ...]  # operand names, for documentation and Command.fields()

    def length_ok(self, length: int) -> bool:
        return self.min_len <= length <= self.max_len and (length - self.min_len) % self.len_step == 0


SPECS: dict[Opcode, CommandSpec] = {
    s.opcode: s
    for s in (
        CommandSpec(Opcode.NOOP, 0, 0, 1, 0, ()),
        CommandSpec(Opcode.USER_INTERRUPT, 0, 0, 1, 0, ()),
        CommandSpec(Opcode.BATCH_BUFFER_END, 0, 0, 1, 0, ()),
        CommandSpec(Opcode.DISPLAY_FLIP, 2, 2, 1, SELECT_MASK, ("base_lo", "base_hi")),
        CommandSpec(Opcode.SPIN, 1, 1, 1, 0, ("microseconds",)),
        CommandSpec(Opcode.STORE_DWORD, 3, 3, 1, 0, ("addr_lo", "addr_hi", "value")),
        CommandSpec(Opcode.STORE_SEQNO, 1, 1, 1, SEQNO_INDEX_MASK, ("seqno",)),
        CommandSpec(Opcode.LOAD_REGISTER_IMM, 2, 2 * MAX_LRI_PAIRS, 2, 0, ("register", "value")),
        CommandSpec(Opcode.BATCH_BUFFER_START, 2, 2, 1, BB_SECOND_LEVEL, ("addr_lo", "addr_hi")),
        CommandSpec(Opcode.FILL, 4, 4, 1, 0, ("dst_lo", "dst_hi", "size", "pattern")),
        CommandSpec(Opcode.COPY, 5, 5, 1, 0, ("dst_lo", "dst_hi", "src_lo", "src_hi", "size")),
        CommandSpec(Opcode.COMPUTE, 5, 5, 1, SELECT_MASK, ("dst_lo", "dst_hi", "src_lo", "src_hi", "size")),
    )
}

# Indexed by the opcode byte (None = unknown): the audit's dispatch table.
SPEC_BY_BYTE: tuple[CommandSpec | None, ...] = tuple(
    next((s for s in SPECS.values() if s.opcode == b), None) for b in range(256)
)


def header(opcode: Opcode, length: int, flags: int = 0) -> int:
    """The header dword; ``flags`` is the already-shifted flag bits (e.g. :data:`BB_SECOND_LEVEL`)."""
    return (int(opcode) << OPCODE_SHIFT) | (flags & (FLAGS_MASK << FLAGS_SHIFT)) | (length & LEN_MASK)


def _u32(name: str, v: int) -> int:
    if not 0 <= v <= U32:
        raise InvalidArgument(f"{name} {v:#x} does not fit in 32 bits", reason="INVALID_OPERAND")
    return v


def _addr(name: str, v: int) -> tuple[int, int]:
    if not 0 <= v <= U64:
        raise InvalidArgument(f"{name} {v:#x} does not fit in 64 bits", reason="INVALID_OPERAND")
    return v & U32, v >> 32


# ---- encoders (used by the guest driver) --------------------------------------------------------


def noop() -> tuple[int, ...]:
    return (header(Opcode.NOOP, 0),)


def user_interrupt() -> tuple[int, ...]:
    """Raise the engine's completion interrupt (the vGPU's MSI) when the workload completes."""
    return (header(Opcode.USER_INTERRUPT, 0),)


def batch_buffer_end() -> tuple[int, ...]:
    return (header(Opcode.BATCH_BUFFER_END, 0),)


def batch_buffer_start(addr: int, *, second_level: bool = False) -> tuple[int, ...]:
    """Execute the batch at ``addr`` up to its ``BATCH_BUFFER_END``, then continue here."""
    flags = BB_SECOND_LEVEL if second_level else 0
    return (header(Opcode.BATCH_BUFFER_START, 2, flags), *_addr("addr", addr))


def store_dword(addr: int, value: int) -> tuple[int, ...]:
    return (header(Opcode.STORE_DWORD, 3), *_addr("addr", addr), _u32("value", value))


def store_seqno(seqno: int, *, index: int = 0) -> tuple[int, ...]:
    """Write ``seqno`` to dword ``index`` of the engine's HWSP and into its seqno register."""
    if not 0 <= index <= SEQNO_INDEX_MASK >> SEQNO_INDEX_SHIFT:
        raise InvalidArgument(f"HWSP index {index} out of 0..1023", reason="INVALID_OPERAND")
    return (header(Opcode.STORE_SEQNO, 1, index << SEQNO_INDEX_SHIFT), _u32("seqno", seqno))


def load_register_imm(writes: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """Write each ``(register offset, value)``; only command-accessible registers pass the audit."""
    body: list[int] = []
    for reg, value in writes:
        body += (_u32("register", reg), _u32("value", value))
    if not 2 <= len(body) <= 2 * MAX_LRI_PAIRS:
        raise InvalidArgument(f"LRI takes 1..{MAX_LRI_PAIRS} registers", reason="INVALID_OPERAND")
    return (header(Opcode.LOAD_REGISTER_IMM, len(body)), *body)


def display_flip(base: int, *, plane: Plane = Plane.PRIMARY) -> tuple[int, ...]:
    """Point ``plane`` at the surface at ``base`` (4 KiB aligned)."""
    return (header(Opcode.DISPLAY_FLIP, 2, int(plane) << SELECT_SHIFT), *_addr("base", base))


def spin(microseconds: int) -> tuple[int, ...]:
    """Keep the engine busy for ``microseconds`` of GPU time (beyond the watchdog: a hang)."""
    return (header(Opcode.SPIN, 1), _u32("microseconds", microseconds))


def fill(dst: int, size: int, pattern: int) -> tuple[int, ...]:
    """Fill ``size`` bytes (dword multiple) at ``dst`` (dword aligned) with a 32-bit pattern."""
    return (header(Opcode.FILL, 4), *_addr("dst", dst), _u32("size", size), _u32("pattern", pattern))


def copy(dst: int, src: int, size: int) -> tuple[int, ...]:
    """Copy ``size`` bytes from ``src`` to ``dst`` (the DMA/blit path)."""
    return (header(Opcode.COPY, 5), *_addr("dst", dst), *_addr("src", src), _u32("size", size))


def compute(dst: int, src: int, size: int, op: ComputeOp = ComputeOp.CRC32) -> tuple[int, ...]:
    """Reduce ``size`` bytes at ``src`` with ``op``; write the 32-bit result to ``dst``."""
    return (
        header(Opcode.COMPUTE, 5, int(op) << SELECT_SHIFT),
        *_addr("dst", dst),
        *_addr("src", src),
        _u32("size", size),
    )


def pack(*commands: Sequence[int]) -> bytes:
    """The little-endian bytes of the concatenated commands (what the guest writes to memory)."""
    dwords = [d for c in commands for d in c]
    return struct.pack(f"<{len(dwords)}I", *dwords)


def unpack(data: bytes) -> tuple[int, ...]:
    """Little-endian dwords of ``data`` (its length must be a dword multiple)."""
    if len(data) % 4:
        raise InvalidArgument("command data is not a whole number of dwords", reason="TRUNCATED_COMMAND")
    return struct.unpack(f"<{len(data) // 4}I", data)


# ---- decoder -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One decoded command: its opcode, flag bits (shifted down to bit 0) and operand dwords."""

    opcode: Opcode
    flags: int
    operands: tuple[int, ...]

    def dwords(self) -> tuple[int, ...]:
        """Re-encode (header + operands)."""
        return (header(self.opcode, len(self.operands), self.flags << FLAGS_SHIFT), *self.operands)

    def address(self, index: int) -> int:
        """The 64-bit address made of operands ``index`` (low) and ``index + 1`` (high)."""
        return self.operands[index] | (self.operands[index + 1] << 32)


def decode(dwords: Sequence[int]) -> list[Command]:
    """Decode a dword stream into commands, checking only the encoding (opcode, length, flags).

    Errors: InvalidArgument with reason UNKNOWN_OPCODE, BAD_COMMAND_LENGTH, INVALID_OPERAND
    (reserved flag bits) or TRUNCATED_COMMAND.  Addresses and nesting are the audit's business.
    """
    out: list[Command] = []
    i, n = 0, len(dwords)
    while i < n:
        h = dwords[i]
        spec = SPEC_BY_BYTE[(h >> OPCODE_SHIFT) & 0xFF]
        length = h & LEN_MASK
        if spec is None:
            raise InvalidArgument(f"unknown opcode {h >> OPCODE_SHIFT:#04x}", reason="UNKNOWN_OPCODE")
        if not spec.length_ok(length):
            raise InvalidArgument(f"{spec.opcode.name} with length {length}", reason="BAD_COMMAND_LENGTH")
        if h & (FLAGS_MASK << FLAGS_SHIFT) & ~spec.flags_mask:
            raise InvalidArgument(f"{spec.opcode.name} with reserved flags", reason="INVALID_OPERAND")
        if i + 1 + length > n:
            raise InvalidArgument(f"{spec.opcode.name} truncated", reason="TRUNCATED_COMMAND")
        out.append(
            Command(spec.opcode, (h >> FLAGS_SHIFT) & FLAGS_MASK, tuple(dwords[i + 1 : i + 1 + length]))
        )
        i += 1 + length
    return out
