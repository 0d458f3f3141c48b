"""A single-producer/single-consumer ring of fixed-size slots in shared memory.

Guest MMIO traps, replies and interrupts travel between ``qemu_frontend`` and ``gfx_host`` as
small records in these rings.  A ring is a header plus ``nslots`` slots laid out in any buffer
(a :class:`~.segment.Segment` or a region of one); both processes map the same bytes, one only
puts, the other only gets.  Notification (waking a sleeping consumer) is not in this module: the
ring only holds the two *waiting* flags that :mod:`.endpoint` uses to decide whether to signal.

Glossary:
- index: a free-running u64 count of items produced (producer index) or consumed (consumer
  index); the slot of index ``i`` is ``i & (nslots - 1)``; ``used = (prod - cons) mod 2**64``.
- slot: ``slot_size`` bytes: a u32 length then up to ``slot_size - 4`` payload bytes.
- waiting flag: set by a side about to sleep on its eventfd, read by the other side after it
  published, to decide whether a signal is needed (see memory ordering below).
- state: OPEN (0) or CLOSED (1), one word per side, for an orderly "no more items / no reader".

Header (256 bytes, four 64-byte cache lines, little endian; version 1):

| offset | size | field | written by |
|---|---|---|---|
| 0 | 4 | magic ``0x474E5256`` (bytes ``VRNG``) | init |
| 4 | 2 | version (1) | init |
| 6 | 2 | header size (256) | init |
| 8 | 4 | slot size (multiple of 8, 8..64 MiB + 8) | init |
| 12 | 4 | slot count (power of two, 1..2**24) | init |
| 16 | 4 | producer state (0 open, 1 closed) | producer |
| 20 | 4 | consumer state (0 open, 1 closed) | consumer |
| 24-63 | | reserved, zero | |
| 64 | 8 | producer index (own cache line) | producer |
| 128 | 8 | consumer index (own cache line) | consumer |
| 192 | 4 | consumer waiting (0/1) | consumer |
| 196 | 4 | producer waiting (0/1) | producer |
| 256 | nslots * slot size | slots: ``u32 length`` at +0, payload at +4 | producer |

Memory ordering (x86-64 TSO, the only target): the producer writes the payload and length, then
stores the producer index last, as one aligned 8-byte store; the consumer loads the index, then
the slot, and stores the consumer index after copying the payload out.  TSO keeps store-store and
load-load order, so the data path needs no fence.  The waiting flags are a Dekker handshake (store
own flag, then load the other side's index), the one case TSO may reorder: both sides call
:func:`full_fence` between that store and that load.  Each object caches the other side's index
and rereads it only when the ring looks full (producer) or empty (consumer).

Shared words are read and written through ``memoryview.cast("Q")``/``cast("I")`` items (one
``memcpy`` of the word, i.e. one load or store), never with ``struct.pack_into``: CPython's
``pack_into`` zero-fills the target before packing, so a concurrent reader can see a transient 0
index (measured: thousands of torn reads per million stores).  The ring buffer must be 8-byte
aligned (segments are page aligned, channel rings 64-byte aligned).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from vgpusim.common.errors import InvalidArgument, TooBig

from .errors import RingEmpty, RingFull

__all__ = ["MAGIC", "VERSION", "BytesLike", "Ring", "RingLayout", "RingStatistics", "full_fence"]

BytesLike = bytes | bytearray | memoryview

MAGIC = 0x474E5256
VERSION = 1
HEADER_SIZE = 256
LEN_SIZE = 4
MAX_SLOTS = 1 << 24
MAX_SLOT_SIZE = (64 << 20) + 8
OPEN, CLOSED = 0, 1
# Shared words, as item indices: _W_* in the u32 view of the ring, _Q_* in the u64 view.
_W_PROD_STATE, _W_CONS_STATE, _W_CONS_WAIT, _W_PROD_WAIT = 16 // 4, 20 // 4, 192 // 4, 196 // 4
_Q_PROD, _Q_CONS = 64 // 8, 128 // 8
_HW = HEADER_SIZE // 4
_M64 = (1 << 64) - 1

_HEAD = struct.Struct("<IHHII")  # magic, version, header size, slot size, nslots

_FENCE = threading.Lock()


def full_fence() -> None:
    """A full memory barrier: an uncontended lock round trip is two ``lock``-prefixed atomics."""
    _FENCE.acquire()
    _FENCE.release()


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """A snapshot of a ring; ``produced``/``consumed`` are the free-running indices (mod 2**64)."""

    capacity: int
    used: int
    produced: int
    consumed: int


class RingLayout:
    """Geometry rules of the ring format (all static)."""

    HEADER_SIZE = HEADER_SIZE

    @staticmethod
    def validate(nslots: int, slot_size: int) -> None:
        """Raise ``InvalidArgument`` unless ``nslots``/``slot_size`` form a valid ring."""
        if not 1 <= nslots <= MAX_SLOTS or nslots & (nslots - 1):
            raise InvalidArgument(f"slot count {nslots} is not a power of two in 1..{MAX_SLOTS}")
        if not 8 <= slot_size <= MAX_SLOT_SIZE or slot_size % 8:
            raise InvalidArgument(f"slot size {slot_size} is not a multiple of 8 in 8..{MAX_SLOT_SIZE}")

    @staticmethod
    def size_for(nslots: int, slot_size: int) -> int:
        """Bytes a ring of ``nslots`` slots of ``slot_size`` bytes needs (header included)."""
        RingLayout.validate(nslots, slot_size)
        return HEADER_SIZE + nslots * slot_size

    @staticmethod
    def slot_size_for(max_payload: int) -> int:
        """The smallest valid slot size carrying payloads of up to ``max_payload`` bytes."""
        return max(8, (max_payload + LEN_SIZE + 7) & ~7)


class Ring:
    """One side's handle on a ring.  Build it with :meth:`init` (creator) or :meth:`attach`.

    Not thread-safe: one producer object and one consumer object (SPSC), possibly in two processes.
    """

    __slots__ = (
        "_buf",
        "_cons",
        "_mask",
        "_max",
        "_nslots",
        "_prod",
        "_q",
        "_sw",
        "_w",
        "max_payload",
        "nbytes",
    )

    def __init__(self, buf: memoryview, nslots: int, slot_size: int) -> None:
        self._buf = buf
        self._q = buf[:HEADER_SIZE].cast("Q")
        self._w = buf.cast("I")
        self._nslots = nslots
        self._mask = nslots - 1
        self._sw = slot_size // 4
        self._max = self.max_payload = slot_size - LEN_SIZE
        self.nbytes = len(buf)
        self._prod: int = self._q[_Q_PROD]
        self._cons: int = self._q[_Q_CONS]

    @staticmethod
    def _view(buf: BytesLike, size: int) -> memoryview:
        with memoryview(buf) as whole:
            if whole.readonly or not whole.c_contiguous:
                raise InvalidArgument("a ring needs a writable, contiguous buffer")
            with whole.cast("B") as flat:
                if len(flat) < size:
                    raise InvalidArgument(f"buffer of {len(flat)} bytes is too small for a ring of {size}")
                return flat[:size]

    @classmethod
    def init(cls, buf: BytesLike, nslots: int, slot_size: int, *, first_index: int = 0) -> Ring:
        """Write a fresh header at the start of ``buf`` (zeroing the slots) and return the ring.

        ``first_index`` starts both indices elsewhere than 0 (tests start near 2**64 to exercise
        index wrap-around).  Errors: ``InvalidArgument`` (geometry, buffer too small).
        """
        size = RingLayout.size_for(nslots, slot_size)
        view = cls._view(buf, size)
        view[:] = bytes(size)
        _HEAD.pack_into(view, 0, MAGIC, VERSION, HEADER_SIZE, slot_size, nslots)
        with view[:HEADER_SIZE].cast("Q") as q:
            q[_Q_PROD] = q[_Q_CONS] = first_index & _M64
        return cls(view, nslots, slot_size)

    @classmethod
    def attach(cls, buf: BytesLike) -> Ring:
        """Validate the header at the start of ``buf`` and return a handle on that ring.

        Errors: ``InvalidArgument`` for a bad magic, version, header size, geometry, a buffer
        shorter than the ring, or indices more than ``nslots`` apart (reason ``RING_CORRUPT``).
        """
        with memoryview(buf) as whole, whole.cast("B") as flat:
            if len(flat) < HEADER_SIZE:
                raise InvalidArgument(f"buffer of {len(flat)} bytes cannot hold a ring header")
            magic, version, header_size, slot_size, nslots = _HEAD.unpack_from(flat)
        if magic != MAGIC:
            raise InvalidArgument(f"bad ring magic {magic:#010x} (want {MAGIC:#010x})", reason="BAD_MAGIC")
        if version != VERSION or header_size != HEADER_SIZE:
            raise InvalidArgument(
                f"unsupported ring version {version} (header {header_size} bytes); this is {VERSION}",
                reason="BAD_VERSION",
            )
        ring = cls(cls._view(buf, RingLayout.size_for(nslots, slot_size)), nslots, slot_size)
        if (ring._prod - ring._cons) & _M64 > nslots:
            ring.release()
            raise InvalidArgument("ring indices are more than a ring apart", reason="RING_CORRUPT")
        return ring

    # -- producer side -------------------------------------------------------------------------

    def put_nowait(self, data: BytesLike) -> None:
        """Copy ``data`` (at most ``max_payload`` bytes) into the next slot and publish it.

        Errors: ``TooBig`` (payload larger than a slot), ``RingFull``.
        """
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n > self._max:
            raise TooBig(f"payload of {n} bytes exceeds the slot payload size {self._max}")
        prod = self._prod
        if (prod - self._cons) & _M64 >= self._nslots:
            self._cons = self._q[_Q_CONS]
            if (prod - self._cons) & _M64 >= self._nslots:
                raise RingFull(f"ring of {self._nslots} slots is full")
        w = _HW + (prod & self._mask) * self._sw
        self._w[w] = n
        off = 4 * w + LEN_SIZE
        self._buf[off : off + n] = data
        self._prod = prod = (prod + 1) & _M64
        self._q[_Q_PROD] = prod

    def put_batch(self, items: Sequence[BytesLike]) -> int:
        """Put as many leading ``items`` as fit, publish them with one index store; return how many.

        The items that fit are size-checked before any is written.  Errors: ``TooBig``,
        ``RingFull`` if ``items`` is not empty and not even the first one fits.
        """
        if not items:
            return 0
        prod, nslots = self._prod, self._nslots
        free = nslots - ((prod - self._cons) & _M64)
        if free < len(items):
            self._cons = self._q[_Q_CONS]
            free = nslots - ((prod - self._cons) & _M64)
            if free <= 0:
                raise RingFull(f"ring of {nslots} slots is full")
        views = [d if type(d) is bytes else memoryview(d).cast("B") for d in items[:free]]
        for d in views:
            if len(d) > self._max:
                raise TooBig(f"payload of {len(d)} bytes exceeds the slot payload size {self._max}")
        buf, words, mask, sw = self._buf, self._w, self._mask, self._sw
        for d in views:
            w = _HW + (prod & mask) * sw
            n = len(d)
            words[w] = n
            off = 4 * w + LEN_SIZE
            buf[off : off + n] = d
            prod = (prod + 1) & _M64
        self._prod = prod
        self._q[_Q_PROD] = prod
        return len(views)

    def has_space(self) -> bool:
        """True if a put would not raise ``RingFull`` (rereads the consumer index when needed)."""
        if (self._prod - self._cons) & _M64 < self._nslots:
            return True
        self._cons = self._q[_Q_CONS]
        return (self._prod - self._cons) & _M64 < self._nslots

    # -- consumer side -------------------------------------------------------------------------

    def _refresh_prod(self) -> int:
        """Reread the producer index; return how many items are available."""
        self._prod = self._q[_Q_PROD]
        avail: int = (self._prod - self._cons) & _M64
        if avail > self._nslots:
            raise InvalidArgument("producer index ran past the ring", reason="RING_CORRUPT")
        return avail

    def _slot(self, index: int) -> tuple[int, int]:
        """Byte offset of the payload of ``index`` and its length (``RING_CORRUPT`` if bad)."""
        w = _HW + (index & self._mask) * self._sw
        n: int = self._w[w]
        if n > self._max:
            raise InvalidArgument(f"slot length {n} exceeds the slot size", reason="RING_CORRUPT")
        return 4 * w + LEN_SIZE, n

    def get_nowait(self) -> bytes:
        """Copy out the oldest item and free its slot.  Errors: ``RingEmpty``, ``InvalidArgument``."""
        cons = self._cons
        if cons == self._prod and not self._refresh_prod():
            raise RingEmpty("ring is empty")
        off, n = self._slot(cons)
        data = self._buf[off : off + n].tobytes()
        self._cons = cons = (cons + 1) & _M64
        self._q[_Q_CONS] = cons
        return data

    def get_into(self, dst: BytesLike) -> int:
        """Copy the oldest item into the start of ``dst`` (no allocation); return its length.

        Errors: ``RingEmpty``, ``TooBig`` (``dst`` too short: the item stays in the ring).
        """
        cons = self._cons
        if cons == self._prod and not self._refresh_prod():
            raise RingEmpty("ring is empty")
        off, n = self._slot(cons)
        with memoryview(dst) as out, out.cast("B") as flat:
            if len(flat) < n:
                raise TooBig(f"item of {n} bytes does not fit a buffer of {len(flat)}")
            flat[:n] = self._buf[off : off + n]
        self._cons = cons = (cons + 1) & _M64
        self._q[_Q_CONS] = cons
        return n

    def get_batch(self, max_items: int) -> list[bytes]:
        """Copy out up to ``max_items`` (>= 1) oldest items, freeing them with one index store.

        Errors: ``RingEmpty`` if there is none, ``InvalidArgument`` (``max_items`` < 1, corruption).
        """
        if max_items < 1:
            raise InvalidArgument(f"max_items must be at least 1, not {max_items}")
        cons = self._cons
        avail = (self._prod - cons) & _M64
        if avail < max_items:
            avail = self._refresh_prod()
            if not avail:
                raise RingEmpty("ring is empty")
        buf, items = self._buf, []
        for i in range(min(max_items, avail)):
            off, n = self._slot(cons + i)
            items.append(buf[off : off + n].tobytes())
        self._cons = cons = (cons + len(items)) & _M64
        self._q[_Q_CONS] = cons
        return items

    def has_data(self) -> bool:
        """True if a get would not raise ``RingEmpty`` (rereads the producer index when needed)."""
        if self._cons != self._prod:
            return True
        self._prod = self._q[_Q_PROD]
        return self._cons != self._prod

    # -- shared state --------------------------------------------------------------------------

    @property
    def consumer_waiting(self) -> bool:
        """The consumer is (about to be) asleep and wants a signal after the next put."""
        return self._w[_W_CONS_WAIT] != 0

    def set_consumer_waiting(self, waiting: bool) -> None:
        self._w[_W_CONS_WAIT] = int(waiting)

    @property
    def producer_waiting(self) -> bool:
        """The producer is (about to be) asleep and wants a signal after the next get."""
        return self._w[_W_PROD_WAIT] != 0

    def set_producer_waiting(self, waiting: bool) -> None:
        self._w[_W_PROD_WAIT] = int(waiting)

    @property
    def producer_closed(self) -> bool:
        """The producer said it will put nothing more (the consumer drains, then stops)."""
        return self._w[_W_PROD_STATE] == CLOSED

    @property
    def consumer_closed(self) -> bool:
        """The consumer said it will get nothing more (puts are pointless)."""
        return self._w[_W_CONS_STATE] == CLOSED

    def close_producer(self) -> None:
        """Mark the producer side closed (the peer learns it on its next empty check)."""
        self._w[_W_PROD_STATE] = CLOSED

    def close_consumer(self) -> None:
        """Mark the consumer side closed."""
        self._w[_W_CONS_STATE] = CLOSED

    def statistics(self) -> RingStatistics:
        """Capacity, items in the ring and both indices, read from shared memory now."""
        prod, cons = self._q[_Q_PROD], self._q[_Q_CONS]
        return RingStatistics(self._nslots, (prod - cons) & _M64, prod, cons)

    @property
    def nslots(self) -> int:
        return self._nslots

    @property
    def slot_size(self) -> int:
        return self._sw * 4

    def release(self) -> None:
        """Drop this handle's views of the buffer (so its segment can be unmapped); idempotent."""
        self._q.release()
        self._w.release()
        self._buf.release()

    def __repr__(self) -> str:
        return f"Ring(nslots={self._nslots}, slot_size={self._slot})"
