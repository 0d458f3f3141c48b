"""Stateful property test of one container against a small reference model.

Random sequences of map/map-batch/unmap (whole, bisecting, empty, unmap-all, with bitmaps),
pin/unpin by two listening devices (plus one without a listener and one never attached), DMA
read/write, translate, dirty tracking start/stop and GET_BITMAP run against the real
:class:`Container` and against :class:`Model`, written from the README's "Semantics" (kernel-mdev
§2.2-2.7). Every call the model rejects must fail with exactly the expected class and reason and
change nothing; after every step the invariants compare mappings, statistics, per-device per-page
refcounts, memlock and the segment bytes. One machine per mode (emulated, hardware).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeGuard

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.iommu_type2.helpers import PAGE, RAM
from vgpusim.common.errors import (
    AlreadyExists,
    Busy,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooBig,
    VgpusimError,
)
from vgpusim.iommu_type2.core import (
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    Container,
    ContainerStatistics,
    DmaMapping,
    HostRun,
    InMemorySegmentStore,
    IommuMode,
    Mapper,
    MapperConfig,
    Prot,
    UnmapResult,
    UnpinningListener,
)

HIGH = 1 << 64  # first value past u64
U64_MAX = HIGH - 1
SEG_PAGES = 96
SEG_SIZE = SEG_PAGES * PAGE
ENTRY_LIMIT = 10
DMA_RW_MAX = 3 * PAGE
MAX_BITMAP = 268_435_456
LISTENING = ("vgpu0", "vgpu1")
SILENT = "vgpu2"  # attached, no unmap listener: may DMA, may not pin
GHOST = "ghost"  # never attached
CONFIG = MapperConfig(notify_timeout_s=0.5, dma_entry_limit=ENTRY_LIMIT, dma_rw_max=DMA_RW_MAX)

Err = tuple[type[VgpusimError], str]

# -- strategies -----------------------------------------------------------------------------------

PROTS = st.sampled_from([PROT_READ, PROT_WRITE, PROT_RW, PROT_RW, PROT_NONE])
page_iova: st.SearchStrategy[int] = st.integers(0, 64).map(lambda n: n * PAGE)
high_iova: st.SearchStrategy[int] = st.integers(1, 8).map(lambda n: HIGH - n * PAGE)
odd = st.integers(0, 64 * PAGE)
bad_u64 = st.sampled_from([-PAGE, -1, HIGH, HIGH + PAGE])
IOVAS: st.SearchStrategy[int] = st.one_of(page_iova, page_iova, page_iova, page_iova, high_iova, odd, bad_u64)
page_size: st.SearchStrategy[int] = st.integers(1, 16).map(lambda n: n * PAGE)
SIZES: st.SearchStrategy[int] = st.one_of(
    page_size,
    page_size,
    page_size,
    st.just(0),
    st.integers(1, 16 * PAGE),
    st.sampled_from([HIGH - PAGE, HIGH, -PAGE]),
)
OFFSETS: st.SearchStrategy[int] = st.one_of(
    st.integers(0, SEG_PAGES - 1).map(lambda n: n * PAGE),
    st.integers(0, SEG_PAGES - 1).map(lambda n: n * PAGE),
    st.integers(SEG_PAGES - 8, SEG_PAGES + 8).map(lambda n: n * PAGE),
    odd,
    st.sampled_from([HIGH - PAGE, -PAGE]),
)
SEGMENTS = st.sampled_from([RAM, RAM, RAM, RAM, "nope"])
REQUESTS = st.builds(DmaMapping, iova=IOVAS, size=SIZES, segment=SEGMENTS, offset=OFFSETS, prot=PROTS)
NPAGES: st.SearchStrategy[int] = st.one_of(
    st.sampled_from([0, 1, 1, 2, 4, 8, 16, 512, 513]), st.integers(1, 24)
)
DEVICES = st.sampled_from([*LISTENING, *LISTENING, SILENT, GHOST])
PGSIZES = st.sampled_from([0, 0, 0, 0, PAGE, PAGE, 0, 1, 2 * PAGE])
BITMAP_PGSIZES = st.sampled_from([PAGE, PAGE, PAGE, PAGE, 0, 1, 2 * PAGE, PAGE // 2])


def is_err(value: object) -> TypeGuard[Err]:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], type)


def allows(have: Prot, need: Prot) -> bool:
    """``(dma->prot & prot) == prot``."""
    return (have.read or not need.read) and (have.write or not need.write)


def ffs(value: int) -> int:
    return (value & -value).bit_length() - 1


def bitmap_bytes(npages: int) -> int:
    return ((npages + 63) // 64) * 8


def u64(*values: int) -> bool:
    return all(0 <= value <= U64_MAX for value in values)


# -- the reference model ----------------------------------------------------------------------------


@dataclass
class Model:
    """What the container should hold, from the README's semantics only."""

    hardware: bool
    memlock_limit_pages: int
    maps: dict[int, DmaMapping] = field(default_factory=dict)
    refs: dict[str, Counter[int]] = field(default_factory=lambda: {d: Counter() for d in LISTENING})
    dirty: set[int] | None = None  # page IOVAs; None while tracking is off
    memory: bytearray = field(default_factory=lambda: bytearray(SEG_SIZE))
    stats: Counter[str] = field(default_factory=Counter)

    # queries

    def find(self, iova: int) -> DmaMapping | None:
        for mapping in self.maps.values():
            if mapping.iova <= iova < mapping.iova + mapping.size:
                return mapping
        return None

    def sorted(self) -> list[DmaMapping]:
        return sorted(self.maps.values(), key=lambda m: m.iova)

    def pinned(self) -> set[int]:
        return {page for refs in self.refs.values() for page, n in refs.items() if n}

    def mapped_pages(self) -> int:
        return sum(m.size for m in self.maps.values()) // PAGE

    def memlock_pages(self) -> int:
        return self.mapped_pages() if self.hardware else len(self.pinned())

    def inside(self, iova: int, end: int) -> list[DmaMapping]:
        return sorted((m for m in self.maps.values() if iova <= m.iova < end), key=lambda m: m.iova)

    def bisected(self, iova: int, end: int) -> bool:
        return any(
            m.iova < end and iova < m.iova + m.size and not (iova <= m.iova and m.iova + m.size <= end)
            for m in self.maps.values()
        )

    def statistics(self) -> ContainerStatistics:
        return ContainerStatistics(
            mappings=len(self.maps),
            mapped_bytes=self.mapped_pages() * PAGE,
            pinned_pages=len(self.pinned()),
            memlock_bytes=self.memlock_pages() * PAGE,
            **{name: self.stats[name] for name in ContainerStatistics.__slots__ if name.endswith("_total")},
        )

    def bitmap(self, iova: int, npages: int, mappings: list[DmaMapping]) -> bytes:
        assert self.dirty is not None
        acc = 0
        for mapping in mappings:
            for page in range(mapping.iova, mapping.iova + mapping.size, PAGE):
                if page in self.dirty:
                    acc |= 1 << ((page - iova) // PAGE)
        self.stats["dirty_pages_reported_total"] += acc.bit_count()
        return acc.to_bytes(bitmap_bytes(npages), "little")

    # map

    def map_error(self, req: DmaMapping, pending: list[DmaMapping]) -> Err | None:
        if not u64(req.iova, req.size, req.offset):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if not (req.prot.read or req.prot.write):
            return InvalidArgument, "BAD_PROT"
        if req.size == 0:
            return InvalidArgument, "ZERO_SIZE"
        if (req.size | req.iova | req.offset) % PAGE:
            return InvalidArgument, "MISALIGNED"
        if req.iova + req.size > HIGH or req.offset + req.size > HIGH:
            return InvalidArgument, "WRAP"
        if req.segment != RAM:
            return InvalidArgument, "UNKNOWN_SEGMENT"
        if req.offset + req.size > SEG_SIZE:
            return InvalidArgument, "OUTSIDE_SEGMENT"
        existing = [*self.maps.values(), *pending]
        if any(m.iova < req.iova + req.size and req.iova < m.iova + m.size for m in existing):
            return AlreadyExists, "OVERLAP"
        if len(existing) >= ENTRY_LIMIT:
            return Exhausted, "DMA_ENTRY_LIMIT"
        if self.hardware and self.memlock_limit_pages:
            pages = self.mapped_pages() + sum(m.size for m in pending) // PAGE + req.size // PAGE
            if pages > self.memlock_limit_pages:
                return Exhausted, "MEMLOCK_EXCEEDED"
        return None

    def add(self, requests: list[DmaMapping]) -> None:
        for req in requests:
            self.maps[req.iova] = req
        self.stats["maps_total"] += len(requests)

    # pins

    def pin(self, device: str, iova: int, npage: int, prot: Prot) -> Err | tuple[HostRun, ...]:
        if not u64(iova, npage):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if npage == 0:
            return InvalidArgument, "ZERO_NPAGE"
        if device == GHOST:
            return InvalidArgument, "DEVICE_NOT_ATTACHED"
        if device not in LISTENING:
            return InvalidArgument, "NO_UNMAP_LISTENER"
        if npage > 512:
            return TooBig, "TOO_MANY_PAGES"
        if iova % PAGE:
            return InvalidArgument, "MISALIGNED"
        pinned = self.pinned()
        new = 0
        runs: list[HostRun] = []
        for page in range(iova, iova + npage * PAGE, PAGE):
            mapping = self.find(page)
            if mapping is None:
                return InvalidArgument, "NOT_MAPPED"
            if not allows(mapping.prot, prot):
                return PermissionDenied, "PROT_MISMATCH"
            new += page not in pinned
            if (
                not self.hardware
                and self.memlock_limit_pages
                and len(pinned) + new > self.memlock_limit_pages
            ):
                return Exhausted, "MEMLOCK_EXCEEDED"
            offset = mapping.offset + page - mapping.iova
            last = runs[-1] if runs else None
            if last and last.iova + last.length == page and last.offset + last.length == offset:
                runs[-1] = HostRun(last.iova, RAM, last.offset, last.length + PAGE)
            else:
                runs.append(HostRun(page, RAM, offset, PAGE))
        for page in range(iova, iova + npage * PAGE, PAGE):
            self.refs[device][page] += 1
            if self.dirty is not None:
                self.dirty.add(page)
        self.stats["pins_total"] += npage
        return tuple(runs)

    def unpin(self, device: str, iova: int, npage: int) -> Err | int:
        if not u64(iova, npage):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if device == GHOST:
            return NotFound, "DEVICE_NOT_ATTACHED"
        if npage > 512:
            return TooBig, "TOO_MANY_PAGES"
        if iova % PAGE:
            return InvalidArgument, "MISALIGNED"
        released = 0
        mine = self.refs.get(device, Counter())
        for page in range(iova, iova + npage * PAGE, PAGE):
            if self.find(page) is None:
                break
            if mine[page]:
                mine[page] -= 1
                self.stats["unpins_total"] += 1
                released += page not in self.pinned()
        return released

    # unmap

    def unmap_error(self, iova: int, size: int, unmap_all: bool, pgsize: int) -> Err | None:
        if not u64(iova, size, pgsize):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if pgsize and unmap_all:
            return InvalidArgument, "BAD_FLAGS"
        if pgsize:
            npages = size >> ffs(pgsize)
            if npages == 0 or bitmap_bytes(npages) > MAX_BITMAP:
                return InvalidArgument, "BAD_BITMAP_SIZE"
        if iova % PAGE:
            return InvalidArgument, "MISALIGNED"
        if unmap_all:
            if iova or size:
                return InvalidArgument, "BAD_UNMAP_ALL"
        elif size == 0:
            return InvalidArgument, "ZERO_SIZE"
        elif size % PAGE:
            return InvalidArgument, "MISALIGNED"
        elif iova + size > HIGH:
            return InvalidArgument, "WRAP"
        if pgsize:
            if self.dirty is None:
                return InvalidArgument, "DIRTY_TRACKING_OFF"
            if pgsize != PAGE:
                return InvalidArgument, "BAD_PGSIZE"
        if not unmap_all and self.bisected(iova, iova + size):
            return InvalidArgument, "BISECT"
        return None

    def unmap(self, iova: int, end: int, pgsize: int) -> tuple[int, bytes | None]:
        removed = self.inside(iova, end)
        pages = {p for m in removed for p in range(m.iova, m.iova + m.size, PAGE)}
        held = sum(n for refs in self.refs.values() for page, n in refs.items() if page in pages)
        if held:  # one round: both listeners called, each unpins all it holds in the span
            self.stats["notifications_total"] += len(LISTENING)
            self.stats["unpins_total"] += held
            for refs in self.refs.values():
                for page in pages:
                    refs.pop(page, None)
        bitmap = self.bitmap(iova, (end - iova) // PAGE, removed) if pgsize else None
        if self.dirty is not None:
            self.dirty -= pages
        for mapping in removed:
            del self.maps[mapping.iova]
        unmapped = sum(m.size for m in removed)
        self.stats["unmaps_total"] += len(removed)
        self.stats["unmapped_bytes_total"] += unmapped
        return unmapped, bitmap

    # DMA

    def chunks(self, iova: int, length: int, need: Prot) -> Err | list[tuple[DmaMapping, int, int]]:
        out: list[tuple[DmaMapping, int, int]] = []
        pos, end = iova, iova + length
        while pos < end:
            mapping = self.find(pos)
            if mapping is None:
                error: Err = (InvalidArgument, "DMA_FAULT")
            elif not allows(mapping.prot, need):
                error = (PermissionDenied, "PROT_MISMATCH")
            else:
                stop = min(end, mapping.iova + mapping.size)
                out.append((mapping, pos, stop - pos))
                pos = stop
                continue
            self.stats["faults_total"] += self.hardware
            return error
        return out

    def dma_checks(self, device: str, iova: int, length: int, limit: int) -> Err | None:
        if device == GHOST:
            return InvalidArgument, "DEVICE_NOT_ATTACHED"
        if not u64(iova):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if not 0 < length <= limit:
            return InvalidArgument, "BAD_LENGTH"
        return None

    def mark(self, iova: int, length: int) -> None:
        if self.dirty is not None:
            self.dirty.update(range(iova - iova % PAGE, iova + length, PAGE))


class ProbingListener(UnpinningListener):
    """Unpins like :class:`UnpinningListener`, but first tries to pin the notified range's first
    page again (it must be refused with ``Busy UNMAP_IN_PROGRESS``), recording what it got."""

    def __init__(self, container: Container, device: str) -> None:
        super().__init__(container, device)
        self.container = container
        self.probes: list[object] = []

    async def notify_unmap(self, iova: int, size: int) -> None:
        try:
            self.probes.append(self.container.pin_pages(self.device, iova, 1, PROT_NONE))
        except VgpusimError as error:
            self.probes.append((type(error), error.reason))
        await super().notify_unmap(iova, size)


# -- the machine ----------------------------------------------------------------------------------


class ContainerMachine(RuleBasedStateMachine):
    """Drives one container and the model side by side (subclasses pick the mode)."""

    MODE: ClassVar[IommuMode] = IommuMode.EMULATED
    MEMLOCK_PAGES: ClassVar[int] = 8

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = InMemorySegmentStore()
        self.segment = self.store.create(RAM, SEG_SIZE)
        self.ctr = Mapper(self.store, CONFIG).create_container("vm0", self.MODE, self.MEMLOCK_PAGES * PAGE)
        self.ctr.register_segment(RAM, SEG_SIZE)
        self.listeners: dict[str, ProbingListener] = {}
        for device in LISTENING:
            self.ctr.attach_device(device)
            self.listeners[device] = ProbingListener(self.ctr, device)
            self.ctr.watch_unmap(device, self.listeners[device])
        self.ctr.attach_device(SILENT)
        self.model = Model(hardware=self.MODE is IommuMode.HARDWARE, memlock_limit_pages=self.MEMLOCK_PAGES)

    def teardown(self) -> None:
        self.loop.close()

    def fails(self, expected: Err, call: Callable[[], object]) -> VgpusimError:
        """``call`` must raise exactly ``expected`` (class and reason) and change nothing."""
        before = self.ctr.statistics()
        with pytest.raises(VgpusimError) as caught:
            call()
        got = caught.value
        assert (type(got), got.reason) == expected, repr(got)
        after = self.ctr.statistics()
        faults = after.faults_total - before.faults_total
        assert after == ContainerStatistics(**{**_asdict(before), "faults_total": after.faults_total})
        assert faults in (0, 1)
        return got

    def pick_iova(self, data: st.DataObject) -> int:
        if bool(self.model.maps) and data.draw(st.booleans(), label="near a mapping"):
            mapping: DmaMapping = data.draw(st.sampled_from(self.model.sorted()))
            return mapping.iova + data.draw(st.integers(0, mapping.size // PAGE)) * PAGE
        return data.draw(IOVAS, label="iova")

    @initialize(
        layout=st.lists(
            st.tuples(st.integers(0, 60), st.integers(1, 8), st.sampled_from([PROT_RW, PROT_RW, PROT_READ])),
            min_size=2,
            max_size=6,
        ),
        tracking=st.booleans(),
    )
    def populate(self, layout: list[tuple[int, int, Prot]], tracking: bool) -> None:
        """Start with a few mappings (overlapping ones are refused like any other), maybe tracking."""
        self.set_dirty_tracking(tracking)
        for page, pages, prot in layout:
            self.map_valid(page * PAGE, pages, page, prot)

    # -- map --------------------------------------------------------------------------------------

    @rule(req=REQUESTS)
    def map_dma(self, req: DmaMapping) -> None:
        error = self.model.map_error(req, [])
        if error:
            self.fails(error, lambda: self.ctr.map_dma(req))
        else:
            self.ctr.map_dma(req)
            self.model.add([req])

    @rule(
        iova=page_iova,
        pages=st.integers(1, 8),
        offset=st.integers(0, SEG_PAGES - 8),
        prot=st.sampled_from([PROT_RW, PROT_RW, PROT_READ, PROT_WRITE]),
    )
    def map_valid(self, iova: int, pages: int, offset: int, prot: Prot) -> None:
        """A well-formed request (it may still overlap or hit a limit): keeps the table populated."""
        self.map_dma(DmaMapping(iova, pages * PAGE, RAM, offset * PAGE, prot))

    @rule(iova=page_iova, pages=st.integers(1, 8), offset=st.integers(0, SEG_PAGES - 8))
    def map_valid_too(self, iova: int, pages: int, offset: int) -> None:
        """(a second well-formed map rule, for weight)"""
        self.map_valid(iova, pages, offset, PROT_RW)

    @rule(reqs=st.lists(REQUESTS, max_size=4))
    def map_dma_batch(self, reqs: list[DmaMapping]) -> None:
        pending: list[DmaMapping] = []
        for index, req in enumerate(reqs):
            error = self.model.map_error(req, pending)
            if error:
                got = self.fails(error, lambda: self.ctr.map_dma_batch(reqs))
                assert got.metadata["index"] == str(index)
                return
            pending.append(req)
        assert self.ctr.map_dma_batch(reqs) == len(reqs)
        self.model.add(reqs)

    # -- unmap ------------------------------------------------------------------------------------

    def unmap(self, iova: int, size: int, unmap_all: bool, pgsize: int) -> None:
        def call() -> UnmapResult:
            return self.loop.run_until_complete(
                self.ctr.unmap_dma(iova, size, unmap_all=unmap_all, dirty_pgsize=pgsize)
            )

        error = self.model.unmap_error(iova, size, unmap_all, pgsize)
        if error:
            self.fails(error, call)
            return
        result = call()
        probes = [probe for listener in self.listeners.values() for probe in listener.probes]
        for listener in self.listeners.values():
            listener.probes.clear()
        # new pins into a range being unmapped are refused (README "Unmap notification")
        assert probes == [(Busy, "UNMAP_IN_PROGRESS")] * len(probes)
        end = HIGH if unmap_all else iova + size
        unmapped, bitmap = self.model.unmap(iova, end, pgsize)
        assert (result.unmapped_bytes, result.dirty_bitmap) == (unmapped, bitmap)

    @rule(data=st.data(), pgsize=PGSIZES)
    def unmap_whole(self, data: st.DataObject, pgsize: int) -> None:
        """A range from one mapping's start to another's end, maybe widened into the holes."""
        maps = sorted(self.model.maps.values(), key=lambda m: m.iova)
        if not maps:
            return self.unmap(0, 64 * PAGE, False, pgsize)
        i = data.draw(st.integers(0, len(maps) - 1))
        j = data.draw(st.integers(i, len(maps) - 1))
        start = max(0, maps[i].iova - data.draw(st.integers(0, 2)) * PAGE)
        end = min(HIGH, maps[j].iova + maps[j].size + data.draw(st.integers(0, 2)) * PAGE)
        self.unmap(start, end - start, False, pgsize)

    @rule(data=st.data(), pgsize=PGSIZES)
    def unmap_bisect(self, data: st.DataObject, pgsize: int) -> None:
        """A range starting or ending inside a mapping (BISECT unless it lines up), or any
        range at all (misaligned, empty, wrapping, out of u64)."""
        iova = self.pick_iova(data)
        size = data.draw(st.one_of(st.integers(1, 12).map(lambda n: n * PAGE), SIZES))
        self.unmap(iova, size, False, pgsize)

    @rule(
        iova=st.sampled_from([0, 0, PAGE, 1]),
        size=st.sampled_from([0, PAGE]),
        pgsize=st.sampled_from([0, PAGE]),
    )
    def unmap_all(self, iova: int, size: int, pgsize: int) -> None:
        self.unmap(iova, size, True, pgsize)

    # -- pins -------------------------------------------------------------------------------------

    @rule(data=st.data(), device=DEVICES, npage=NPAGES, prot=PROTS)
    def pin_pages(self, data: st.DataObject, device: str, npage: int, prot: Prot) -> None:
        self.pin_pages_at(device, self.pick_iova(data), npage, prot)

    @precondition(lambda self: self.model.maps)
    @rule(data=st.data(), device=st.sampled_from(LISTENING), prot=PROTS)
    def pin_in_mapping(self, data: st.DataObject, device: str, prot: Prot) -> None:
        """Pages inside one mapping (or running one page past its end), mostly allowed prot."""
        mapping = data.draw(st.sampled_from(sorted(self.model.maps.values(), key=lambda m: m.iova)))
        first = data.draw(st.integers(0, mapping.size // PAGE - 1))
        npage = data.draw(st.integers(1, mapping.size // PAGE - first + 1))
        if data.draw(st.integers(0, 3)):
            prot = Prot(prot.read and mapping.prot.read, prot.write and mapping.prot.write)
        self.pin_pages_at(device, mapping.iova + first * PAGE, npage, prot)

    @precondition(lambda self: self.model.maps)
    @rule(data=st.data(), device=st.sampled_from(LISTENING), prot=PROTS)
    def pin_in_mapping_too(self, data: st.DataObject, device: str, prot: Prot) -> None:
        """(the same again: pins are the interesting state, so they get twice the weight)"""
        self.pin_in_mapping(data, device, prot)

    def pin_pages_at(self, device: str, iova: int, npage: int, prot: Prot) -> None:
        expected = self.model.pin(device, iova, npage, prot)
        if is_err(expected):
            self.fails(expected, lambda: self.ctr.pin_pages(device, iova, npage, prot))
        else:
            assert self.ctr.pin_pages(device, iova, npage, prot) == expected

    @rule(data=st.data(), device=DEVICES, npage=NPAGES)
    def unpin_pages(self, data: st.DataObject, device: str, npage: int) -> None:
        iova = self.pick_iova(data)
        expected = self.model.unpin(device, iova, npage)
        if isinstance(expected, tuple):
            self.fails(expected, lambda: self.ctr.unpin_pages(device, iova, npage))
        else:
            assert self.ctr.unpin_pages(device, iova, npage) == expected

    @rule(device=st.sampled_from(LISTENING))
    def unpin_everything(self, device: str) -> None:
        """The device drops everything it holds, run by run (what a listener does)."""
        for start, count in self.ctr.pinned_runs(device):
            for done in range(0, count, 512):
                step = min(512, count - done)
                iova = start + done * PAGE
                assert self.ctr.unpin_pages(device, iova, step) == self.model.unpin(device, iova, step)

    # -- DMA --------------------------------------------------------------------------------------

    @rule(data=st.data(), device=DEVICES, length=st.integers(0, DMA_RW_MAX + 1), byte=st.integers(1, 255))
    def dma_write(self, data: st.DataObject, device: str, length: int, byte: int) -> None:
        iova = self.pick_iova(data) + data.draw(st.integers(0, PAGE - 1))
        payload = bytes([byte]) * length
        error = self.model.dma_checks(device, iova, length, DMA_RW_MAX)
        chunks = error or self.model.chunks(iova, length, PROT_RW)
        if isinstance(chunks, tuple):
            self.fails(chunks, lambda: self.ctr.dma_write(device, iova, payload))
            return
        self.ctr.dma_write(device, iova, payload)
        pos = 0
        for mapping, start, size in chunks:
            offset = mapping.offset + start - mapping.iova
            self.model.memory[offset : offset + size] = payload[pos : pos + size]
            pos += size
            self.model.mark(start, size)
        self.model.stats["dma_write_bytes_total"] += length

    @rule(data=st.data(), device=DEVICES, length=st.integers(0, DMA_RW_MAX + 1))
    def dma_read(self, data: st.DataObject, device: str, length: int) -> None:
        iova = self.pick_iova(data) + data.draw(st.integers(0, PAGE - 1))
        error = self.model.dma_checks(device, iova, length, DMA_RW_MAX)
        chunks = error or self.model.chunks(iova, length, PROT_READ)
        if isinstance(chunks, tuple):
            self.fails(chunks, lambda: self.ctr.dma_read(device, iova, length))
            return
        expected = b"".join(
            bytes(self.model.memory[m.offset + s - m.iova : m.offset + s - m.iova + n]) for m, s, n in chunks
        )
        assert self.ctr.dma_read(device, iova, length) == expected
        self.model.stats["dma_read_bytes_total"] += length

    @rule(data=st.data(), device=DEVICES, size=st.integers(0, 20 * PAGE), write=st.booleans())
    def translate(self, data: st.DataObject, device: str, size: int, write: bool) -> None:
        iova = self.pick_iova(data) + data.draw(st.integers(0, PAGE - 1))
        error = self.model.dma_checks(device, iova, size, HIGH)
        chunks = error or self.model.chunks(iova, size, PROT_WRITE if write else PROT_READ)
        if isinstance(chunks, tuple):
            self.fails(chunks, lambda: self.ctr.translate(device, iova, size, write))
            return
        runs: list[HostRun] = []
        for mapping, start, length in chunks:
            offset = mapping.offset + start - mapping.iova
            last = runs[-1] if runs else None
            if last and last.offset + last.length == offset:
                runs[-1] = HostRun(last.iova, RAM, last.offset, last.length + length)
            else:
                runs.append(HostRun(start, RAM, offset, length))
            if write:
                self.model.mark(start, length)
        assert self.ctr.translate(device, iova, size, write) == tuple(runs)
        self.model.stats["translations_total"] += 1

    # -- dirty tracking ---------------------------------------------------------------------------

    @rule(enabled=st.sampled_from([True, True, False]))
    def set_dirty_tracking(self, enabled: bool) -> None:
        self.ctr.set_dirty_tracking(enabled)
        if not enabled:
            self.model.dirty = None
        elif self.model.dirty is None:
            self.model.dirty = self.model.pinned()

    @rule(data=st.data(), pgsize=BITMAP_PGSIZES)
    def get_dirty_bitmap(self, data: st.DataObject, pgsize: int) -> None:
        maps = sorted(self.model.maps.values(), key=lambda m: m.iova)
        if maps and data.draw(st.integers(0, 3)) > 0:
            i = data.draw(st.integers(0, len(maps) - 1))
            j = data.draw(st.integers(i, min(len(maps) - 1, i + 3)))
            iova = max(0, maps[i].iova - data.draw(st.integers(0, 1)) * PAGE)
            size = maps[j].iova + maps[j].size - iova
        else:
            iova, size = data.draw(IOVAS), data.draw(SIZES)
        error = self.bitmap_error(iova, size, pgsize)
        if error:
            self.fails(error, lambda: self.ctr.get_dirty_bitmap(iova, size, pgsize))
            return
        inside = self.model.inside(iova, iova + size)
        expected = self.model.bitmap(iova, size // PAGE, inside)
        got = self.ctr.get_dirty_bitmap(iova, size, pgsize)
        assert got == expected
        bits = int.from_bytes(got, "little")
        for page in self.model.pinned():  # pinned pages are dirty in every round
            if iova <= page < iova + size:
                assert bits >> ((page - iova) // PAGE) & 1
        assert self.model.dirty is not None
        for mapping in inside:  # written pages are dirty once: reset to the still-pinned pages
            pages = set(range(mapping.iova, mapping.iova + mapping.size, PAGE))
            self.model.dirty -= pages
            self.model.dirty |= pages & self.model.pinned()
        if data.draw(st.booleans(), label="second round"):
            # next round, nothing written since: exactly the still-pinned pages of the range
            again = self.ctr.get_dirty_bitmap(iova, size, pgsize)
            pinned = sum(1 << (p - iova) // PAGE for p in self.model.pinned() if iova <= p < iova + size)
            assert again == pinned.to_bytes(len(again), "little")
            assert again == self.model.bitmap(iova, size // PAGE, inside)

    def bitmap_error(self, iova: int, size: int, pgsize: int) -> Err | None:
        if not u64(iova, size, pgsize):
            return InvalidArgument, "VALUE_OUT_OF_RANGE"
        if size and iova + size > U64_MAX:
            return InvalidArgument, "WRAP"
        if pgsize == 0:
            return InvalidArgument, "BAD_PGSIZE"
        npages = size >> ffs(pgsize)
        if npages == 0 or bitmap_bytes(npages) > MAX_BITMAP:
            return InvalidArgument, "BAD_BITMAP_SIZE"
        if pgsize != PAGE:
            return InvalidArgument, "BAD_PGSIZE"
        if iova % PAGE or size % PAGE:
            return InvalidArgument, "MISALIGNED"
        if self.model.dirty is None:
            return InvalidArgument, "DIRTY_TRACKING_OFF"
        if self.model.bisected(iova, iova + size):
            return InvalidArgument, "BISECT"
        return None

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def mappings_match(self) -> None:
        got = self.ctr.mappings()
        assert all(a.iova + a.size <= b.iova for a, b in itertools.pairwise(got)), got
        assert got == tuple(sorted(self.model.maps.values(), key=lambda m: m.iova))
        assert self.ctr.get_info().dma_avail == ENTRY_LIMIT - len(got)
        assert self.ctr.info().dirty_tracking == (self.model.dirty is not None)

    @invariant()
    def statistics_match(self) -> None:
        stats = self.ctr.statistics()
        assert stats == self.model.statistics()
        if self.MODE is IommuMode.EMULATED:
            assert stats.memlock_bytes == stats.pinned_pages * PAGE
        else:  # whole mappings charged at map time, nothing extra for pins
            assert stats.memlock_bytes == stats.mapped_bytes

    @invariant()
    def pins_match(self) -> None:
        for device in (*LISTENING, SILENT):
            pages = sorted(p for p, n in self.model.refs.get(device, Counter()).items() if n)
            runs: list[tuple[int, int]] = []
            for page in pages:
                if runs and runs[-1][0] + runs[-1][1] * PAGE == page:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((page, 1))
            assert self.ctr.pinned_runs(device) == tuple(runs)
        # per device, per page reference counts (internal, the only place they are visible)
        got: dict[str, Counter[int]] = {}
        totals: Counter[int] = Counter()
        for mapping in self.ctr._table:
            for device, held in mapping.holders.items():
                got.setdefault(device, Counter()).update(
                    {mapping.iova + page * PAGE: n for page, n in held.items() if n}
                )
            totals.update({mapping.iova + page * PAGE: n for page, n in mapping.pins.items() if n})
        want = {d: Counter({p: n for p, n in refs.items() if n}) for d, refs in self.model.refs.items()}
        assert got == {d: refs for d, refs in want.items() if refs}
        assert totals == sum(want.values(), Counter())

    @invariant()
    def memory_matches(self) -> None:
        assert bytes(self.segment) == bytes(self.model.memory)


def _asdict(stats: ContainerStatistics) -> dict[str, int]:
    return {name: getattr(stats, name) for name in ContainerStatistics.__slots__}


class HardwareMachine(ContainerMachine):
    MODE = IommuMode.HARDWARE
    MEMLOCK_PAGES = 24


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestEmulatedContainer = ContainerMachine.TestCase
TestEmulatedContainer.settings = SETTINGS
TestHardwareContainer = HardwareMachine.TestCase
TestHardwareContainer.settings = SETTINGS
