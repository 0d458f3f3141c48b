"""The GTT window of BAR0 and its shadow: guest graphics pages -> pinned host pages.

**Entry format** (8 bytes, little-endian, entry *i* at BAR0 ``GTT_OFFSET + 8*i`` maps the 4 KiB
graphics page at GM address ``i * 4096``)::

    bit 0        PRESENT
    bits 1..11   ignored (kept, read back as written)
    bits 12..51  guest-physical page frame number (the IOVA page, since RAM is mapped IOVA = GPA)
    bits 52..63  ignored

Guest side (:meth:`Gtt.read`, :meth:`Gtt.write`, offsets relative to the window):

- an entry outside the vGPU's partition (its low and high GM ranges) is not stored: writes are
  ignored (``writes_ignored_total``), reads return 0 (GVT-g ballooning);
- 4-byte writes are staged until both halves of the entry were written; an 8-byte write, or the
  second half, makes the entry *pending* (``write`` returns True: the GTT_UPDATED effect).

Host side: :meth:`Gtt.apply_pending` shadows every pending entry.  The guest pages that are not
pinned yet are pinned through the injected :class:`Pinner`, batched into contiguous runs of at
most :data:`MAX_PIN_PAGES` (512, ``VFIO_PIN_PAGES_MAX_ENTRIES``) pages per call.  A run that fails
with a per-page error (InvalidArgument, PermissionDenied) is split in halves until the bad pages
are isolated; other errors fail the whole run.  A page is pinned once however many entries point
at it (the pin is released when the last entry lets go).  Present entries whose page cannot be
pinned map to the **scratch page**: they are counted, and :meth:`Gtt.translate` faults on them.

:meth:`Gtt.unmap_notify` is the ``dma_unmap`` callback: every shadow entry in the IOVA range goes
to scratch and its pages are unpinned before it returns.  :meth:`Gtt.translate` turns a GM range
into host spans, coalescing contiguous host pages; it never touches memory outside the vGPU's
partition and pinned pages, raising :class:`GttFault` (recorded in :meth:`Gtt.faults`) instead.
Translations see the shadow as of the last ``apply_pending``, like a GPU before a TLB flush.

Glossary:
- gfn: guest frame number, ``iova >> 12``; HostPage: where a pinned page lives (segment, offset).
- scratch page: the host page a bad entry points at, so a GPU access through it is harmless.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from vgpusim.common.errors import InvalidArgument, PermissionDenied, VgpusimError
from vgpusim.gfx_host.core.resources import Extent

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
GTT_PRESENT: Final = 1 << 0
GTT_PFN_MASK: Final = 0x000F_FFFF_FFFF_F000
MAX_PIN_PAGES: Final = 512
_CACHE_MAX = 1024


@dataclass(frozen=True, slots=True)
class HostPage:
    """A pinned page as ``iommu_type2.PinPages`` returns it: a segment name and a byte offset."""

    segment: str
    offset: int


class HostSpan(NamedTuple):
    """``length`` bytes at ``offset`` in shared-memory ``segment``."""

    segment: str
    offset: int
    length: int


class Pinner(Protocol):
    """Pins guest pages for this vGPU (``iommu_type2.PinPages/UnpinPages`` of its container)."""

    async def pin_pages(self, iova: int, npage: int) -> Sequence[HostPage]:
        """Pin ``npage`` (1..512) contiguous pages from ``iova``; all or nothing; one HostPage each."""
        ...

    async def unpin_pages(self, iova: int, npage: int) -> None:
        """Drop one pin of each of ``npage`` (1..512) contiguous pages from ``iova``."""
        ...


class HostMemory(Protocol):
    """Access to the shared-memory segments that pinned pages live in."""

    def view(self, segment: str) -> memoryview:
        """A writable view of the whole segment."""
        ...


class GttFault(InvalidArgument):
    """EFAULT: a GM access outside the partition, through a non-present or a scratch entry."""

    default_errno = errno.EFAULT
    default_reason = "GTT_FAULT"


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One translation fault: the GM range asked for and the reason (``GTT_*``)."""

    gm_addr: int
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class GttStatistics:
    """A snapshot of the GTT and its shadow."""

    entries_valid: int
    entries_shadowed: int
    entries_scratch: int
    entries_pending: int
    pages_pinned: int
    writes_total: int
    writes_ignored_total: int
    partial_writes_total: int
    pin_calls_total: int
    pages_pinned_total: int
    pin_failures_total: int
    unpin_calls_total: int
    pages_unpinned_total: int
    unpin_errors_total: int
    scratch_mappings_total: int
    unmap_notifies_total: int
    faults_total: int


@dataclass(slots=True)
class _Counters:
    writes: int = 0
    ignored: int = 0
    partial: int = 0
    pin_calls: int = 0
    pinned: int = 0
    pin_failures: int = 0
    unpin_calls: int = 0
    unpinned: int = 0
    unpin_errors: int = 0
    scratch: int = 0
    unmaps: int = 0
    faults: int = 0


def page_runs(gfns: Sequence[int], limit: int = MAX_PIN_PAGES) -> list[tuple[int, int]]:
    """Sorted distinct ``gfns`` as ``(first_gfn, count)`` runs of at most ``limit`` pages."""
    runs: list[tuple[int, int]] = []
    for gfn in gfns:
        if runs and runs[-1][0] + runs[-1][1] == gfn and runs[-1][1] < limit:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((gfn, 1))
    return runs


class Gtt:
    """The guest GTT of one vGPU and its shadow; ``ranges`` are the partition's GM extents."""

    def __init__(self, ranges: Sequence[Extent]) -> None:
        self._ranges = tuple((e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT) for e in ranges if e.size)
        self._gm_ranges = tuple(e for e in ranges if e.size)
        self.pinner: Pinner | None = None
        self._entries: dict[int, int] = {}  # index -> guest value
        self._halves: dict[int, int] = {}  # index -> halves written so far (1 = low, 2 = high)
        self._pending: dict[int, int] = {}  # index -> value to shadow
        self._shadow: dict[int, tuple[int, HostPage]] = {}  # index -> (gfn, page)
        self._scratch: dict[int, int] = {}  # index -> gfn that could not be pinned
        self._pins: dict[int, HostPage] = {}  # gfn -> page (pinned once)
        self._users: dict[int, set[int]] = {}  # gfn -> indices mapping it
        self._cache: dict[tuple[int, int], tuple[HostSpan, ...]] = {}
        self._lock = asyncio.Lock()
        self._applying = False
        self._raced: list[tuple[int, int]] = []  # gfn ranges unmapped while pins were in flight
        self._faults: deque[FaultRecord] = deque(maxlen=64)
        self._n = _Counters()

    def _inside(self, index: int) -> bool:
        return any(lo <= index < hi for lo, hi in self._ranges)

    # ------------------------------------------------------------- guest side
    def read(self, offset: int, size: int) -> int:
        """Guest read of 4 or 8 bytes at ``offset`` in the window (other sizes read 0)."""
        value = self._entries.get(offset >> 3, 0)
        if size == 8:
            return value
        return (value >> 32 if offset & 4 else value) & 0xFFFF_FFFF if size == 4 else 0

    def write(self, offset: int, size: int, value: int) -> bool:
        """Guest write; True when an entry became pending (call :meth:`apply_pending`)."""
        self._n.writes += 1
        index = offset >> 3
        if size not in (4, 8) or not self._inside(index):
            self._n.ignored += 1
            return False
        if size == 4:
            old = self._entries.get(index, 0)
            if offset & 4:
                value = (old & 0xFFFF_FFFF) | (value & 0xFFFF_FFFF) << 32
                half = 2
            else:
                value = (old & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF)
                half = 1
            self._entries[index] = value
            halves = self._halves.pop(index, 0) | half
            if halves != 3:
                self._halves[index] = halves
                self._n.partial += 1
                return False
        else:
            self._halves.pop(index, None)
        self._entries[index] = value
        self._pending[index] = value
        return True

    @property
    def pending_count(self) -> int:
        """Entries written but not shadowed yet."""
        return len(self._pending)

    # -------------------------------------------------------------- host side
    async def apply_pending(self) -> int:
        """Shadow every pending entry (batched pins); returns how many entries were applied."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return 0
            want = {i: (v & GTT_PFN_MASK) >> PAGE_SHIFT for i, v in batch.items() if v & GTT_PRESENT}
            new_gfns = sorted({g for g in want.values() if g not in self._pins})
            self._applying, self._raced = True, []
            try:
                pinned = await self._pin(new_gfns) if new_gfns else {}
            finally:
                self._applying = False
            stale = [g for g in pinned if any(lo <= g < hi for lo, hi in self._raced)]
            for g in stale:
                del pinned[g]
            self._pins.update(pinned)
            released: set[int] = set(pinned)
            for index in batch:
                released.update(self._drop(index))
                gfn = want.get(index)
                if gfn is None:
                    continue
                if gfn in self._pins:
                    self._shadow[index] = (gfn, self._pins[gfn])
                    self._users.setdefault(gfn, set()).add(index)
                else:
                    self._scratch[index] = gfn
                    self._n.scratch += 1
            self._cache.clear()
            await self._unpin(sorted(stale) + self._forget_unused(released))
            return len(batch)

    def _drop(self, index: int) -> tuple[int, ...]:
        """Un-shadow entry ``index``; returns the gfn it let go of (to check for release)."""
        self._scratch.pop(index, None)
        old = self._shadow.pop(index, None)
        if old is None:
            return ()
        self._users[old[0]].discard(index)
        return (old[0],)

    def _forget_unused(self, gfns: set[int]) -> list[int]:
        unused = sorted(g for g in gfns if not self._users.get(g))
        for g in unused:
            self._users.pop(g, None)
            self._pins.pop(g, None)
        return unused

    async def _pin(self, gfns: list[int]) -> dict[int, HostPage]:
        if self.pinner is None:
            raise RuntimeError("GTT entries applied with no pinner attached (vGPU not open)")
        pinned: dict[int, HostPage] = {}
        todo = page_runs(gfns)
        while todo:
            first, count = todo.pop(0)
            self._n.pin_calls += 1
            try:
                pages = await self.pinner.pin_pages(first << PAGE_SHIFT, count)
            except (InvalidArgument, PermissionDenied):
                if count > 1:  # isolate the bad pages; the good ones still get pinned
                    half = count // 2
                    todo[:0] = [(first, half), (first + half, count - half)]
                else:
                    self._n.pin_failures += 1
                continue
            except VgpusimError:
                self._n.pin_failures += count
                continue
            if len(pages) != count:
                raise RuntimeError(f"pinner returned {len(pages)} pages for {count}")
            self._n.pinned += count
            pinned.update(zip(range(first, first + count), pages, strict=True))
        return pinned

    async def _unpin(self, gfns: list[int]) -> None:
        pinner = self.pinner
        if pinner is None:
            if gfns:
                raise RuntimeError("pages pinned with no pinner attached")
            return
        for first, count in page_runs(gfns):
            self._n.unpin_calls += 1
            try:
                await pinner.unpin_pages(first << PAGE_SHIFT, count)
            except VgpusimError:  # the container or its mapping is gone: nothing left to unpin
                self._n.unpin_errors += 1
            self._n.unpinned += count

    async def unmap_notify(self, iova: int, size: int) -> list[int]:
        """Tear down shadows of ``[iova, iova + size)``, unpin; returns the IOVAs of the unpinned pages."""
        self._n.unmaps += 1
        lo, hi = iova >> PAGE_SHIFT, (iova + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        if self._applying:
            self._raced.append((lo, hi))
        victims = sorted(g for g in self._pins if lo <= g < hi)
        for gfn in victims:
            for index in self._users.pop(gfn, set()):
                del self._shadow[index]
                self._scratch[index] = gfn
                self._n.scratch += 1
            del self._pins[gfn]
        if victims:
            self._cache.clear()
            await self._unpin(victims)
        return [g << PAGE_SHIFT for g in victims]

    async def reset(self) -> None:
        """Forget every entry and shadow, unpinning everything (DMLR, release).

        Waits for an ``apply_pending`` in flight, so its pins are released too.
        """
        async with self._lock:
            gfns = sorted(self._pins)
            self._entries.clear()
            self._halves.clear()
            self._pending.clear()
            self._shadow.clear()
            self._scratch.clear()
            self._pins.clear()
            self._users.clear()
            self._cache.clear()
            if gfns:
                await self._unpin(gfns)

    # ------------------------------------------------------------ translation
    def translate(self, gm_addr: int, size: int) -> tuple[HostSpan, ...]:
        """Host spans backing ``[gm_addr, gm_addr + size)``; GttFault if any page is not usable."""
        key = (gm_addr, size)
        spans = self._cache.get(key)
        if spans is not None:
            return spans
        if size <= 0 or not any(e.contains(gm_addr, size) for e in self._gm_ranges):
            raise self._fault(gm_addr, size, "GTT_OUT_OF_PARTITION", "outside the vGPU's partition")
        out: list[HostSpan] = []
        first, last = gm_addr >> PAGE_SHIFT, (gm_addr + size - 1) >> PAGE_SHIFT
        skip = gm_addr & (PAGE_SIZE - 1)
        left = size
        shadow = self._shadow
        for index in range(first, last + 1):
            entry = shadow.get(index)
            if entry is None:
                if index in self._scratch:
                    raise self._fault(gm_addr, size, "GTT_SCRATCH_PAGE", f"page {index:#x} maps to scratch")
                raise self._fault(gm_addr, size, "GTT_NOT_PRESENT", f"page {index:#x} is not present")
            page = entry[1]
            length = min(PAGE_SIZE - skip, left)
            prev = out[-1] if out else None
            if prev and prev.segment == page.segment and prev.offset + prev.length == page.offset + skip:
                out[-1] = HostSpan(prev.segment, prev.offset, prev.length + length)
            else:
                out.append(HostSpan(page.segment, page.offset + skip, length))
            left -= length
            skip = 0
        spans = tuple(out)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = spans
        return spans

    def _fault(self, gm_addr: int, size: int, reason: str, what: str) -> GttFault:
        self._n.faults += 1
        self._faults.append(FaultRecord(gm_addr, size, reason))
        return GttFault(
            f"GM access [{gm_addr:#x}, +{size:#x}): {what}",
            reason=reason,
            metadata={"gm_addr": hex(gm_addr), "size": str(size)},
        )

    def faults(self) -> tuple[FaultRecord, ...]:
        """The most recent translation faults (at most 64), oldest first."""
        return tuple(self._faults)

    def statistics(self) -> GttStatistics:
        """A snapshot of the counters."""
        n = self._n
        return GttStatistics(
            entries_valid=sum(1 for v in self._entries.values() if v & GTT_PRESENT),
            entries_shadowed=len(self._shadow),
            entries_scratch=len(self._scratch),
            entries_pending=len(self._pending),
            pages_pinned=len(self._pins),
            writes_total=n.writes,
            writes_ignored_total=n.ignored,
            partial_writes_total=n.partial,
            pin_calls_total=n.pin_calls,
            pages_pinned_total=n.pinned,
            pin_failures_total=n.pin_failures,
            unpin_calls_total=n.unpin_calls,
            pages_unpinned_total=n.unpinned,
            unpin_errors_total=n.unpin_errors,
            scratch_mappings_total=n.scratch,
            unmap_notifies_total=n.unmaps,
            faults_total=n.faults,
        )


def read_memory(gtt: Gtt, memory: HostMemory, gm_addr: int, size: int) -> bytes:
    """Copy ``size`` bytes of graphics memory at ``gm_addr`` (through :meth:`Gtt.translate`)."""
    spans = gtt.translate(gm_addr, size)
    return b"".join(memory.view(s.segment)[s.offset : s.offset + s.length] for s in spans)


def write_memory(gtt: Gtt, memory: HostMemory, gm_addr: int, data: bytes | memoryview) -> None:
    """Copy ``data`` into graphics memory at ``gm_addr`` (through :meth:`Gtt.translate`)."""
    src = memoryview(data).cast("B")
    done = 0
    for s in gtt.translate(gm_addr, len(src)):
        memory.view(s.segment)[s.offset : s.offset + s.length] = src[done : done + s.length]
        done += s.length
