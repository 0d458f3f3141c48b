"""Page pinning for vendor devices (``vfio_pin_pages``/``vfio_unpin_pages``) and memlock accounting.

Pins are counted per page *and per device*: each :class:`~.mappings.Mapping` keeps ``pins``
(page index -> references from all devices) and ``holders`` (device -> page index ->
references), both :class:`collections.Counter` so a 512-page pin is two C-level counting passes
with no per-page objects. A device only ever drops its own references, and detaching a device
drops all of them at once. A page is *pinned* while any device holds it; only then is it
charged to memlock (emulated mode) and it is released when the last reference goes.

:class:`PinTracker` works on pages the container has already validated the call for (npage,
device, alignment; see ``container.py``). Per page, in IOVA order, it checks as type1 does:
mapped (EINVAL), not being unmapped (EBUSY, iommufd's ``prevent_access``), prot (EPERM), memlock
(ENOMEM). On any error every page the call pinned before is unpinned again.

Glossary:
- memlock: pages locked in host memory, limited per container (``RLIMIT_MEMLOCK`` of type1);
  charged at pin time in emulated mode, at map time in hardware mode (never twice).
- chunk: the part of a call's IOVA range that falls in one mapping.
- released: a page whose last reference (from any device) was dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import repeat

from vgpusim.iommu_type2.core import reasons
from vgpusim.iommu_type2.core.dirty import runs, set_bits
from vgpusim.iommu_type2.core.mappings import NO_PINS, Mapping, MappingTable
from vgpusim.iommu_type2.core.model import PAGE_SHIFT, PAGE_SIZE, HostRun, Prot


def prot_name(prot: Prot) -> str:
    """``"RW"``, ``"R"``, ``"W"`` or ``"-"``."""
    return ("R" if prot.read else "") + ("W" if prot.write else "") or "-"


class Memlock:
    """Locked-page accounting against a byte limit (0 = unlimited)."""

    __slots__ = ("limit_bytes", "used_pages")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_pages = 0

    @property
    def used_bytes(self) -> int:
        return self.used_pages * PAGE_SIZE

    def fits(self, pages: int) -> bool:
        return not self.limit_bytes or (self.used_pages + pages) * PAGE_SIZE <= self.limit_bytes

    def charge(self, pages: int) -> None:
        """Charge ``pages``, or raise ``MEMLOCK_EXCEEDED`` and charge nothing."""
        if not self.fits(pages):
            raise reasons.memlock_exceeded(self.used_bytes, pages * PAGE_SIZE, self.limit_bytes)
        self.used_pages += pages

    def uncharge(self, pages: int) -> None:
        self.used_pages -= pages
        assert self.used_pages >= 0, "memlock accounting went negative"


class PinTracker:
    """The pins of one container; ``account`` is true in emulated mode (charge pins to memlock)."""

    __slots__ = ("account", "by_device", "memlock", "pinned_pages", "pins_total", "table", "unpins_total")

    def __init__(self, table: MappingTable, memlock: Memlock, *, account: bool) -> None:
        self.table = table
        self.memlock = memlock
        self.account = account
        self.by_device: dict[str, set[Mapping]] = {}
        self.pinned_pages = 0
        self.pins_total = 0
        self.unpins_total = 0

    def pin(self, device: str, iova: int, npage: int, prot: Prot) -> tuple[HostRun, ...]:
        """Pin ``npage`` pages from page-aligned ``iova`` for ``device``; returns coalesced runs."""
        done: list[tuple[Mapping, int, int]] = []
        try:
            for mapping, start, length in self.table.walk(iova, npage << PAGE_SHIFT):
                if mapping is None:
                    raise reasons.not_mapped(start)
                if mapping.unmapping:
                    raise reasons.unmap_in_progress(start)
                if not mapping.prot.allows(prot):
                    raise reasons.prot_mismatch(start, prot_name(mapping.prot), prot_name(prot))
                first = (start - mapping.iova) >> PAGE_SHIFT
                self._pin_chunk(device, mapping, first, length >> PAGE_SHIFT)
                done.append((mapping, first, length >> PAGE_SHIFT))
        except BaseException:
            unpins_total = self.unpins_total
            for mapping, first, count in reversed(done):
                self._unpin_chunk(device, mapping, first, count)
            self.unpins_total = unpins_total  # an unwind is not an unpin
            raise
        self.pins_total += npage
        out: list[HostRun] = []
        for mapping, first, count in done:
            if mapping.dirty is not None:
                set_bits(mapping.dirty, first, count)
            run = HostRun(
                mapping.iova + (first << PAGE_SHIFT),
                mapping.segment,
                mapping.offset + (first << PAGE_SHIFT),
                count << PAGE_SHIFT,
            )
            if out and _adjacent(out[-1], run):
                prev = out[-1]
                run = HostRun(prev.iova, prev.segment, prev.offset, prev.length + run.length)
                out[-1] = run
            else:
                out.append(run)
        return tuple(out)

    def unpin(self, device: str, iova: int, npage: int) -> int:
        """Drop one of ``device``'s references on each page; stop at the first unmapped page.

        Pages the device does not hold are ignored. Returns the pages released.
        """
        released = 0
        for mapping, start, length in self.table.walk(iova, npage << PAGE_SHIFT):
            if mapping is None:
                break  # type1 stops early (and WARNs)
            released += self._unpin_chunk(
                device, mapping, (start - mapping.iova) >> PAGE_SHIFT, length >> PAGE_SHIFT
            )
        return released

    def _pin_chunk(self, device: str, mapping: Mapping, first: int, count: int) -> None:
        pages = range(first, first + count)
        pins = mapping.pins
        if pins is NO_PINS:
            pins = mapping.pins = Counter()
        before = len(pins)
        pins.update(dict.fromkeys(pages, 1) if not pins else pages)
        new = len(pins) - before
        if self.account and not self.memlock.fits(new):
            used, limit = self.memlock.used_bytes, self.memlock.limit_bytes
            pins.subtract(pages)
            for page in pages:
                if not pins[page]:
                    pins.pop(page)
            raise reasons.memlock_exceeded(used, new * PAGE_SIZE, limit)
        mine = mapping.holders.get(device)
        if mine is None:
            mine = mapping.holders[device] = Counter()
            self.by_device.setdefault(device, set()).add(mapping)
        mine.update(dict.fromkeys(pages, 1) if not mine else pages)
        self.pinned_pages += new
        if self.account:
            self.memlock.used_pages += new

    def _unpin_chunk(self, device: str, mapping: Mapping, first: int, count: int) -> int:
        """Drop one reference of ``device`` per page; returns the pages released.

        Vectorised: ``dict.pop`` mapped over the pages (C speed), then the pages that keep
        references are written back; with one device holding each page once (the common case)
        nothing is written back.
        """
        mine = mapping.holders.get(device)
        if not mine:
            return 0
        stop = first + count
        pages: Sequence[int] = range(first, stop)
        if len(mine) < count:
            pages = sorted(page for page in mine if first <= page < stop)
        n = len(pages)
        refs = list(map(mine.pop, pages, repeat(0, n)))
        held = n - refs.count(0)
        if not held:
            return 0
        if max(refs) > 1:
            dict.update(mine, {page: ref - 1 for page, ref in zip(pages, refs, strict=True) if ref > 1})
        totals = list(map(mapping.pins.pop, pages, repeat(0, n)))
        if held == n and max(totals) == 1:
            released = n
        else:
            released = sum(1 for total, ref in zip(totals, refs, strict=True) if ref and total == 1)
            keep = {
                page: total - (ref > 0)
                for page, total, ref in zip(pages, totals, refs, strict=True)
                if total - (ref > 0) > 0
            }
            dict.update(mapping.pins, keep)
        if not mine:
            self._forget(device, mapping)
        self.unpins_total += held
        self._released(released)
        return released

    def _forget(self, device: str, mapping: Mapping) -> None:
        del mapping.holders[device]
        maps = self.by_device[device]
        maps.discard(mapping)
        if not maps:
            del self.by_device[device]

    def _released(self, pages: int) -> None:
        self.pinned_pages -= pages
        if self.account:
            self.memlock.uncharge(pages)

    def drop_device(self, device: str) -> int:
        """Drop every reference of ``device``; returns the distinct pages it held."""
        held = 0
        for mapping in list(self.by_device.get(device, ())):
            held += self._drop(device, mapping)
        return held

    def drop_mapping(self, mapping: Mapping) -> None:
        """Drop every device's references in ``mapping`` (it is being destroyed by force)."""
        for device in list(mapping.holders):
            self._drop(device, mapping)

    def _drop(self, device: str, mapping: Mapping) -> int:
        mine = mapping.holders[device]
        pins = mapping.pins
        released = 0
        for page, refs in mine.items():
            total = pins[page] - refs
            if total:
                pins[page] = total
            else:
                pins.pop(page)
                released += 1
        self.unpins_total += sum(mine.values())
        self._forget(device, mapping)
        self._released(released)
        return len(mine)

    def device_runs(self, device: str, iova: int, end: int) -> list[tuple[int, int]]:
        """``device``'s pinned pages in ``[iova, end)`` as ``(iova, npages)`` runs, IOVA order."""
        out: list[tuple[int, int]] = []
        maps = sorted(self.by_device.get(device, ()), key=lambda m: m.iova)
        for mapping in maps:
            if mapping.end <= iova or mapping.iova >= end:
                continue
            lo = max(0, (iova - mapping.iova) >> PAGE_SHIFT)
            hi = min(mapping.npages, (end - mapping.iova + PAGE_SIZE - 1) >> PAGE_SHIFT)
            pages = sorted(page for page in mapping.holders[device] if lo <= page < hi)
            for first, count in runs(pages):
                start = mapping.iova + (first << PAGE_SHIFT)
                if out and out[-1][0] + (out[-1][1] << PAGE_SHIFT) == start:
                    out[-1] = (out[-1][0], out[-1][1] + count)
                else:
                    out.append((start, count))
        return out


def _adjacent(prev: HostRun, run: HostRun) -> bool:
    return (
        prev.segment == run.segment
        and prev.offset + prev.length == run.offset
        and prev.iova + prev.length == run.iova
    )
