"""The graphics memory a vGPU's commands execute against: the ``GraphicsMemory`` ops table and a fake.

The command engine never touches guest RAM by itself.  It asks a :class:`GraphicsMemory` (in the
service: the GTT shadow of one vGPU, whose entries point at pages pinned through ``iommu_type2``)
to *translate* a graphics-memory range into host ``memoryview`` runs, and moves data with slice
assignments between those views.  A translation checks everything a real GPU's GGTT and the
host's shadow would: the range lies inside the vGPU's partition, every page is mapped (a present
shadow entry), and written pages are writable.  Anything else raises :class:`DmaFault`.

:class:`FakeGraphicsMemory` is the in-memory implementation used by tests and benchmarks: one
``bytearray`` is the host memory and a page table maps GM pages onto it.  Consecutive GM pages
whose host pages are consecutive too are kept as one *extent*, so a translation returns one view
per contiguous run (perf-limits.md: "coalesce contiguous pages into one copy").

Glossary:
- GM: graphics memory, the GPU's address space; the vGPU owns a low (aperture) and a high
  (hidden) GM range, together its *partition*.
- run: a maximal range of GM whose host backing is one contiguous ``memoryview``.
- extent: the fake's page-table record of one run (GM page, host page, page count, writable).
- DMA fault: a GPU access the translation refuses (outside the partition, unmapped, read-only).
"""

from __future__ import annotations

import bisect
import errno as _errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vgpusim.common.errors import PermissionDenied

PAGE_SIZE = 4096
PAGE_SHIFT = 12


class DmaFault(PermissionDenied):
    """EFAULT: a GPU access outside the vGPU's partition, to an unmapped page, or a write to a
    read-only page.  Raised by :meth:`GraphicsMemory.translate`; counted by the audit and the
    executor, never propagated to the guest as anything but a failed workload."""

    default_errno = _errno.EFAULT
    default_reason = "DMA_FAULT"

    def __init__(self, message: str, *, gm_addr: int, size: int, write: bool) -> None:
        super().__init__(
            message, metadata={"gm_addr": hex(gm_addr), "size": str(size), "write": str(write).lower()}
        )
        self.gm_addr = gm_addr
        self.size = size
        self.write = write


@dataclass(frozen=True, slots=True)
class GmRange:
    """One range of graphics memory, ``[base, base + size)``."""

    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, gm_addr: int, size: int) -> bool:
        """True if ``[gm_addr, gm_addr + size)`` lies inside (a zero size needs ``gm_addr`` inside)."""
        return self.base <= gm_addr < self.base + self.size and gm_addr + size <= self.base + self.size


@runtime_checkable
class PartitionLike(Protocol):
    """What the audit needs to know about a vGPU's partition."""

    def contains(self, gm_addr: int, size: int) -> bool:
        """True if the whole range lies inside one of the vGPU's GM ranges (low or high)."""
        ...

    def span_end(self, gm_addr: int) -> int | None:
        """The end of the partition range containing ``gm_addr``, None if none contains it."""
        ...


@dataclass(frozen=True, slots=True)
class GmPartition:
    """A vGPU's partition: its low (aperture) and high (hidden) GM ranges.  A range never spans
    both: an access must fit entirely in one of them."""

    low: GmRange
    high: GmRange

    def contains(self, gm_addr: int, size: int) -> bool:
        return self.low.contains(gm_addr, size) or self.high.contains(gm_addr, size)

    def span_end(self, gm_addr: int) -> int | None:
        for r in (self.low, self.high):
            if r.base <= gm_addr < r.end:
                return r.end
        return None


@runtime_checkable
class GraphicsMemory(Protocol):
    """The ops table the engine executes against: one vGPU's view of graphics memory.

    Implementations: the GTT shadow of a vGPU (service), :class:`FakeGraphicsMemory` (tests).
    Translations are on the hot path (every command that touches memory): cache contiguous runs.
    """

    @property
    def partition(self) -> PartitionLike:
        """The vGPU's low/high GM ranges, used by the audit before any translation."""
        ...

    def translate(self, gm_addr: int, size: int, *, write: bool) -> Sequence[memoryview]:
        """Host views covering ``[gm_addr, gm_addr + size)`` in order, one per contiguous run.

        Return: views whose lengths add up to ``size`` (empty for ``size == 0``).  The views are
        valid until the next unmap of the pages; writes through them are guest-visible.
        Errors: :class:`DmaFault` if any byte lies outside the partition, is unmapped, or
        ``write`` is set and the page is read-only.
        """
        ...


@dataclass(frozen=True, slots=True)
class Access:
    """One recorded translation of :class:`FakeGraphicsMemory` (``record=True``)."""

    gm_addr: int
    size: int
    write: bool


class FakeGraphicsMemory:
    """A :class:`GraphicsMemory` over one ``bytearray`` with a page table (tests, benchmarks).

    ``map()`` points GM pages at host pages; pages mapped to consecutive host pages coalesce into
    one extent, so a translation of a contiguous mapping returns a single view.  With
    ``record=True`` every successful translation is appended to :attr:`accesses`.
    """

    def __init__(self, partition: GmPartition, host_size: int, *, record: bool = False) -> None:
        if host_size <= 0 or host_size % PAGE_SIZE:
            raise ValueError("host_size must be a positive multiple of PAGE_SIZE")
        self.host = bytearray(host_size)
        self._view = memoryview(self.host)
        self._partition = partition
        self._ranges = tuple((r.base, r.end) for r in (partition.low, partition.high))
        self._pages: dict[int, tuple[int, bool]] = {}  # GM page -> (host page, writable)
        self._starts: list[int] = []  # extent GM page starts, sorted
        self._extents: list[tuple[int, int, int, bool]] = []  # (gm page, host page, pages, writable)
        self.record = record
        self.accesses: list[Access] = []

    @property
    def partition(self) -> GmPartition:
        return self._partition

    # ---- page table -------------------------------------------------------------------------

    def map(self, gm_addr: int, host_offset: int, size: int, *, writable: bool = True) -> None:
        """Map ``size`` bytes of GM at ``gm_addr`` onto the host buffer at ``host_offset`` (page
        aligned; replaces earlier mappings of those pages)."""
        if (gm_addr | host_offset | size) % PAGE_SIZE or size <= 0:
            raise ValueError("map arguments must be page aligned and size positive")
        if host_offset + size > len(self.host) or host_offset < 0 or gm_addr < 0:
            raise ValueError("mapping beyond the host buffer")
        gpage, hpage = gm_addr >> PAGE_SHIFT, host_offset >> PAGE_SHIFT
        for i in range(size >> PAGE_SHIFT):
            self._pages[gpage + i] = (hpage + i, writable)
        self._rebuild()

    def unmap(self, gm_addr: int, size: int) -> None:
        """Remove the mappings of the pages in ``[gm_addr, gm_addr + size)`` (absent ones ignored)."""
        first, last = gm_addr >> PAGE_SHIFT, (gm_addr + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        for p in range(first, last):
            self._pages.pop(p, None)
        self._rebuild()

    def map_partition(self, *, host_offset: int = 0) -> None:
        """Map the whole partition contiguously: low range first, high range right after it."""
        p = self._partition
        self.map(p.low.base, host_offset, p.low.size)
        self.map(p.high.base, host_offset + p.low.size, p.high.size)

    def host_offset(self, gm_addr: int) -> int:
        """The host buffer offset backing ``gm_addr`` (raises :class:`DmaFault` if unmapped)."""
        entry = self._pages.get(gm_addr >> PAGE_SHIFT)
        if entry is None:
            raise DmaFault("unmapped graphics page", gm_addr=gm_addr, size=1, write=False)
        return (entry[0] << PAGE_SHIFT) | (gm_addr & (PAGE_SIZE - 1))

    def _rebuild(self) -> None:
        extents: list[tuple[int, int, int, bool]] = []
        for gpage in sorted(self._pages):
            hpage, writable = self._pages[gpage]
            if extents:
                g0, h0, n0, w0 = extents[-1]
                if g0 + n0 == gpage and h0 + n0 == hpage and w0 == writable:
                    extents[-1] = (g0, h0, n0 + 1, w0)
                    continue
            extents.append((gpage, hpage, 1, writable))
        self._extents = extents
        self._starts = [e[0] << PAGE_SHIFT for e in extents]

    # ---- GraphicsMemory ---------------------------------------------------------------------

    def translate(self, gm_addr: int, size: int, *, write: bool) -> list[memoryview]:
        end = gm_addr + size
        for base, limit in self._ranges:
            if base <= gm_addr < limit and gm_addr <= end <= limit:
                break
        else:
            raise DmaFault("access outside the vGPU partition", gm_addr=gm_addr, size=size, write=write)
        if self.record:
            self.accesses.append(Access(gm_addr, size, write))
        i = bisect.bisect_right(self._starts, gm_addr) - 1
        extents = self._extents
        if 0 <= i < len(extents):  # fast path: one extent covers the whole range
            gpage, hpage, npages, writable = extents[i]
            ext_start = gpage << PAGE_SHIFT
            if end <= ext_start + (npages << PAGE_SHIFT) and (writable or not write):
                host = (hpage << PAGE_SHIFT) + (gm_addr - ext_start)
                return [self._view[host : host + size]] if size else []
        runs: list[memoryview] = []
        addr = gm_addr
        while addr < end:
            if i < 0 or i >= len(extents):
                raise DmaFault("unmapped graphics page", gm_addr=addr, size=end - addr, write=write)
            gpage, hpage, npages, writable = extents[i]
            ext_start = gpage << PAGE_SHIFT
            ext_end = ext_start + (npages << PAGE_SHIFT)
            if not ext_start <= addr < ext_end:
                raise DmaFault("unmapped graphics page", gm_addr=addr, size=end - addr, write=write)
            if write and not writable:
                raise DmaFault("write to a read-only page", gm_addr=addr, size=end - addr, write=write)
            host = (hpage << PAGE_SHIFT) + (addr - ext_start)
            n = min(end, ext_end) - addr
            runs.append(self._view[host : host + n])
            addr += n
            i += 1
        return runs

    # ---- conveniences (tests) ---------------------------------------------------------------

    def read(self, gm_addr: int, size: int) -> bytes:
        """The bytes at ``[gm_addr, gm_addr + size)`` through the page table (not recorded)."""
        record, self.record = self.record, False
        try:
            return b"".join(self.translate(gm_addr, size, write=False))
        finally:
            self.record = record

    def write(self, gm_addr: int, data: bytes) -> None:
        """Store ``data`` at ``gm_addr`` through the page table (not recorded; ignores read-only)."""
        record, self.record = self.record, False
        try:
            pos = 0
            for run in self.translate(gm_addr, len(data), write=False):
                run[:] = data[pos : pos + len(run)]
                pos += len(run)
        finally:
            self.record = record
