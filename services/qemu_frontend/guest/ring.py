"""Where the guest's commands live: an engine's ring (with its status page) and the batch buffers.

The ring is a circular buffer in graphics memory; the driver owns the *tail* (where it writes
next) and the GPU owns the *head* (how far it has consumed, the ``RING_HEAD`` register).  The
space between tail and head is free, minus a gap of :data:`RING_GAP` bytes so that a full ring
never looks empty (tail == head).  Tail and head are qword aligned, so every submission is padded
to 8 bytes.  A submission that does not fit before the end of the ring is preceded by NOOPs up to
the end (the GPU skips them) and starts again at offset 0, as i915's ``intel_ring_begin`` wraps.

The hardware status page (HWSP) of each engine receives ``STORE_SEQNO`` writes: dword 0 holds
the last completed sequence number, which the driver reads straight from guest RAM.

Batch buffers are a small round-robin pool: each slot remembers the seqno of the request that
last used it (its *fence*) and is reused only once that request retired.

Glossary:
- seqno: the 32-bit sequence number a request writes to the HWSP when it completes.
- outstanding: requests submitted to the ring whose seqno has not been seen in the HWSP yet.
- fence: the seqno after which a buffer is free again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.guest.gtt import GmBuffer

RING_GAP: Final = 8  # bytes kept free between tail and head
SEQNO_MASK: Final = 0xFFFF_FFFF


def seqno_passed(done: int, seqno: int) -> bool:
    """True if ``done`` is at or after ``seqno`` (32-bit wrap-around safe, as i915_seqno_passed)."""
    return (done - seqno) & SEQNO_MASK < 1 << 31


def count_commands(data: bytes) -> int:
    """How many commands ``data`` holds, following each header's length field (no validation)."""
    n = i = 0
    words = len(data) // 4
    while i < words:
        header = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        n += 1
        i += 1 + (header & 0xFF)
    return n


class Ring:
    """One engine's ring buffer and status page, as the driver tracks them."""

    def __init__(self, engine: Engine, buffer: GmBuffer, hws: GmBuffer) -> None:
        self.engine = engine
        self.buffer = buffer
        self.hws = hws
        self.size = buffer.size
        self.tail = 0
        self.last_submitted = 0  # seqno of the newest request, 0 before the first
        self.outstanding: deque[int] = deque()

    @property
    def max_payload(self) -> int:
        """The largest submission that always fits, wherever the tail is (wrap padding included)."""
        return self.size // 2 - RING_GAP

    def space(self, head: int) -> int:
        """Free bytes between the tail and ``head`` (the GPU's position), minus the gap."""
        return (head - self.tail - RING_GAP) % self.size

    def padding(self, nbytes: int) -> int:
        """NOOP bytes needed before an ``nbytes`` submission so that it does not straddle the end."""
        return 0 if self.tail + nbytes <= self.size else self.size - self.tail

    def emit(self, env: GuestEnv, payload: bytes) -> int:
        """Write ``payload`` (qword multiple) at the tail, wrapping with NOOPs; return the new tail.

        The caller has checked the space against the head (:meth:`space`, :meth:`padding`).
        """
        if len(payload) % 8 or not 0 < len(payload) <= self.max_payload:
            raise InvalidArgument(
                f"ring payload of {len(payload)} bytes (qword multiple up to {self.max_payload})",
                reason="BAD_RING_PAYLOAD",
            )
        pad = self.padding(len(payload))
        if pad:
            env.zero_ram(self.buffer.gpa + self.tail, pad)  # NOOP is the all-zero dword
            self.tail = 0
        env.write_ram(self.buffer.gpa + self.tail, payload)
        self.tail = (self.tail + len(payload)) % self.size
        return self.tail

    def completed(self, env: GuestEnv) -> int:
        """The last seqno the GPU stored in dword 0 of the status page."""
        return env.read_u32(self.hws.gpa)

    def force_completed(self, env: GuestEnv, seqno: int) -> None:
        """Store ``seqno`` in the status page from the CPU (after a reset discarded requests)."""
        env.write_u32(self.hws.gpa, seqno)

    def reset(self) -> None:
        """Forget the software tail (the engine was reset: head and tail are 0 again)."""
        self.tail = 0


@dataclass(slots=True)
class BatchSlot:
    """One batch buffer and the seqno of its last user (None: never used)."""

    buffer: GmBuffer
    fence: int | None = None


class BatchPool:
    """Batch buffers handed out round robin (the next slot is always the least recently used)."""

    def __init__(self, buffers: Sequence[GmBuffer]) -> None:
        if not buffers:
            raise InvalidArgument("a batch pool needs at least one buffer", reason="NO_BATCH_BUFFERS")
        self._slots = [BatchSlot(b) for b in buffers]
        self._next = 0

    @property
    def slots(self) -> tuple[BatchSlot, ...]:
        return tuple(self._slots)

    @property
    def capacity(self) -> int:
        """Bytes of commands one batch can hold (its BATCH_BUFFER_END included)."""
        return min(s.buffer.size for s in self._slots)

    def next(self) -> BatchSlot:
        """The least recently used slot (the caller waits for its fence before reusing it)."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        return slot
