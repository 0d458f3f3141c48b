"""The records a workload passes through the engine as: ring snapshot, audited ops, completion.

``RingState`` (what the doorbell saw) goes into the audit, which produces an ``AuditedWorkload``:
the validated commands in *op* form, batches inlined, addresses resolved.  The executor turns it
into a ``Completion``.  Every op is a tuple whose first element is the opcode (``commands.Opcode``
as a plain int):

===================  =========================================================================
op                   tuple
===================  =========================================================================
USER_INTERRUPT       ``(0x02,)``
DISPLAY_FLIP         ``(0x14, plane, base)``
SPIN                 ``(0x1C, microseconds)``
STORE_DWORD          ``(0x20, addr, value)``
STORE_SEQNO          ``(0x21, addr, seqno)`` with ``addr = HWSP + 4 * index`` resolved by the audit
LOAD_REGISTER_IMM    ``(0x22, reg, value, reg, value, ...)``
FILL                 ``(0x40, dst, size, pattern)``
COPY                 ``(0x41, dst, src, size)``
COMPUTE              ``(0x42, dst, src, size, compute_op)``
===================  =========================================================================

NOOP and the batch commands never appear: the audit drops and inlines them.

Glossary:
- op: one audited command in executor form (above).
- ring head/tail: byte offsets in the ring; the head moves to the audited tail on completion.
- HWSP: the engine's hardware status page.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vgpusim.gfx_host.core.engine.memory import DmaFault

Op = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RingState:
    """The engine's ring registers when the guest rang the doorbell (a snapshot)."""

    engine: int
    base: int  # GM address, page aligned
    size: int  # bytes, a page multiple up to max_ring_size
    head: int  # byte offset of the first command to run
    tail: int  # byte offset just past the last submitted command
    status_page: int  # GM address of the engine's HWSP (STORE_SEQNO target), page aligned


@dataclass(frozen=True, slots=True)
class AuditedWorkload:
    """A checked workload: the ops to execute (batches inlined) and where the ring head goes.

    Only the audit builds these from guest commands; tests and benchmarks may build them directly.
    """

    engine: int
    ops: tuple[Op, ...]
    ring_head: int  # the new head register value once executed (the audited tail)
    commands: int = 0  # commands decoded, NOOPs and batch commands included
    batches: int = 0  # batch buffers shadowed
    shadow_bytes: int = 0  # bytes copied from the guest


class CompletionStatus(enum.Enum):
    COMPLETED = "completed"  # every op ran; interrupts are raised
    HUNG = "hung"  # the watchdog fired: stopped mid-way, no interrupt
    FAULTED = "faulted"  # a DMA fault stopped it: no interrupt


@dataclass(frozen=True, slots=True)
class DisplayFlip:
    """A ``DISPLAY_FLIP`` that ran: the owner updates the plane's base register."""

    plane: int
    base: int


@dataclass(frozen=True, slots=True)
class Completion:
    """What executing one workload did.  ``interrupts`` is 0 unless ``status`` is COMPLETED."""

    engine: int
    status: CompletionStatus
    ring_head: int  # the engine's new ring head (the workload's audited tail)
    busy_us: int  # simulated GPU time consumed (the budget when hung)
    seqno: int | None = None  # last STORE_SEQNO value written, None if none ran
    interrupts: int = 0  # USER_INTERRUPTs to deliver (the vGPU's completion MSI)
    bytes_moved: int = 0
    flips: tuple[DisplayFlip, ...] = ()
    register_writes: tuple[tuple[int, int], ...] = ()  # (register offset, value) from LRI
    fault: DmaFault | None = None

    @property
    def ok(self) -> bool:
        return self.status is CompletionStatus.COMPLETED
