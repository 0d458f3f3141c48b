"""The mapping table of a container: live ``Mapping`` records sorted by IOVA, found by bisection.

This is type1's ``dma_list`` rb-tree, done as two parallel sorted Python lists (starts and
records): lookup and overlap tests are one :func:`bisect.bisect_right`, insertion is a
``list.insert`` (a memmove, fast up to the 65535 entries a container may hold), and removing the
mappings of a range is one slice deletion. Appending in increasing IOVA order (what a batch of
guest RAM regions does) inserts at the end.

Each :class:`Mapping` carries its own pin counts and dirty bitmap, keyed by page index inside
the mapping (``(iova - mapping.iova) >> 12``), so there are no per-page objects.

Glossary:
- page index: a page's number inside its mapping (0 = the mapping's first page).
- pins: page index -> references from all devices; holders: device -> page index -> references.
- unmapping: how many unmaps are currently notifying over this mapping (new pins are refused).
- whole cover: a range whose first and last byte do not fall strictly inside a mapping
  (type1 v2's "no bisecting" rule).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterator

from vgpusim.iommu_type2.core import reasons
from vgpusim.iommu_type2.core.model import PAGE_SHIFT, DmaMapping, Prot

NO_PINS: Counter[int] = Counter()
"""The shared, always empty ``pins`` of a mapping never pinned (saves a Counter per mapping)."""


class Mapping:
    """One live mapping (a ``vfio_dma``). Mutable; only the container and its helpers touch it."""

    __slots__ = (
        "dirty",
        "end",
        "holders",
        "iova",
        "npages",
        "offset",
        "pins",
        "prot",
        "segment",
        "size",
        "unmapping",
    )

    def __init__(self, iova: int, size: int, segment: str, offset: int, prot: Prot) -> None:
        self.iova = iova
        self.size = size
        self.end = iova + size
        self.npages = size >> PAGE_SHIFT
        self.segment = segment
        self.offset = offset
        self.prot = prot
        self.pins: Counter[int] = NO_PINS  # replaced by a Counter of its own on the first pin
        self.holders: dict[str, Counter[int]] = {}
        self.dirty: bytearray | None = None
        self.unmapping = 0

    def describe(self) -> DmaMapping:
        """The frozen record of this mapping."""
        return DmaMapping(self.iova, self.size, self.segment, self.offset, self.prot)

    def __repr__(self) -> str:
        return f"Mapping({self.iova:#x}+{self.size:#x} -> {self.segment}@{self.offset:#x})"


class MappingTable:
    """Non-overlapping mappings sorted by IOVA."""

    __slots__ = ("_maps", "_starts", "mapped_bytes")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._maps: list[Mapping] = []
        self.mapped_bytes = 0

    def __len__(self) -> int:
        return len(self._maps)

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._maps)

    def find(self, iova: int) -> Mapping | None:
        """The mapping containing byte ``iova``, if any."""
        i = bisect_right(self._starts, iova) - 1
        if i >= 0:
            mapping = self._maps[i]
            if iova < mapping.end:
                return mapping
        return None

    def locate(self, iova: int, end: int) -> tuple[int, Mapping | None]:
        """Where a mapping of ``[iova, end)`` would go, and the lowest mapping it would overlap.

        Pass the index to :meth:`insert` when there is no overlap (one bisection for both).
        """
        starts = self._starts
        i = len(starts) if not starts or iova >= starts[-1] else bisect_right(starts, iova)
        if i and self._maps[i - 1].end > iova:
            return i, self._maps[i - 1]
        if i < len(starts) and starts[i] < end:
            return i, self._maps[i]
        return i, None

    def insert(self, mapping: Mapping, index: int | None = None) -> None:
        """Add ``mapping`` (at ``index`` from :meth:`locate`); the caller checked it overlaps nothing."""
        if index is None:
            index = bisect_right(self._starts, mapping.iova)
        self._starts.insert(index, mapping.iova)
        self._maps.insert(index, mapping)
        self.mapped_bytes += mapping.size

    def remove(self, mapping: Mapping) -> None:
        """Remove one mapping (present in the table)."""
        i = bisect_left(self._starts, mapping.iova)
        assert self._maps[i] is mapping, f"{mapping!r} is not in the table"
        del self._starts[i]
        del self._maps[i]
        self.mapped_bytes -= mapping.size

    def check_whole_cover(self, iova: int, end: int) -> None:
        """Raise ``BISECT`` unless ``[iova, end)`` cuts no mapping (type1 v2's two edge tests)."""
        first = self.find(iova)
        if first is not None and first.iova != iova:
            raise reasons.bisect(iova, end - iova, first.iova, first.size)
        last = self.find(end - 1)
        if last is not None and last.end != end:
            raise reasons.bisect(iova, end - iova, last.iova, last.size)

    def within(self, iova: int, end: int) -> list[Mapping]:
        """The mappings that start inside ``[iova, end)``, in IOVA order."""
        return self._maps[bisect_left(self._starts, iova) : bisect_left(self._starts, end)]

    def remove_within(self, iova: int, end: int) -> list[Mapping]:
        """Remove and return the mappings that start inside ``[iova, end)``."""
        i = bisect_left(self._starts, iova)
        j = bisect_left(self._starts, end)
        removed = self._maps[i:j]
        del self._starts[i:j]
        del self._maps[i:j]
        self.mapped_bytes -= sum(m.size for m in removed)
        return removed

    def walk(self, iova: int, size: int) -> Iterator[tuple[Mapping | None, int, int]]:
        """Split ``[iova, iova + size)`` at mapping edges: ``(mapping or None, start, length)``.

        A ``None`` chunk is a hole; the walk stops after the first hole (callers fail there).
        """
        end = iova + size
        pos = iova
        i = bisect_right(self._starts, pos) - 1
        maps = self._maps
        while pos < end:
            mapping = maps[i] if 0 <= i < len(maps) else None
            if mapping is None or not mapping.iova <= pos < mapping.end:
                yield None, pos, end - pos
                return
            stop = min(end, mapping.end)
            yield mapping, pos, stop - pos
            pos = stop
            i += 1
