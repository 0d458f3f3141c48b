"""In-memory fakes of the gfx_host core's peers: a ``Pinner`` and a ``HostMemory``.

:class:`FakeHostMemory` holds named ``bytearray`` segments.  :class:`FakePinner` behaves like
``iommu_type2.PinPages``/``UnpinPages`` for one container whose guest RAM is mapped at
IOVA = guest-physical address into segment ``"ram"`` at offset = IOVA: 1..512 pages per call
(``TooBig`` beyond), every page inside a mapping (``InvalidArgument`` IOVA_NOT_MAPPED, all or
nothing), per-page refcounts, unpin of a never-pinned page a no-op.  Tests can fail chosen pages
(``fail_gfns``), make every call fail (``fail_all``), or hold pins in flight (``gate``).  Every
call is recorded in ``calls`` as ``("pin" | "unpin", iova, npage)``.

Glossary:
- gfn: guest frame number (``iova >> 12``).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from vgpusim.common.errors import InvalidArgument, TooBig, VgpusimError
from vgpusim.gfx_host.core.gtt import MAX_PIN_PAGES, PAGE_SHIFT, PAGE_SIZE, HostPage

RAM_SEGMENT = "ram"


class FakeHostMemory:
    """Named shared-memory segments as bytearrays."""

    def __init__(self, segments: dict[str, int] | None = None) -> None:
        self.segments = {name: bytearray(size) for name, size in (segments or {}).items()}
        self._views: dict[str, memoryview] = {}

    def add(self, name: str, size: int) -> bytearray:
        """Create segment ``name`` of ``size`` zero bytes."""
        self.segments[name] = bytearray(size)
        return self.segments[name]

    def view(self, segment: str) -> memoryview:
        """A writable view of the whole segment."""
        view = self._views.get(segment)
        if view is None:
            view = self._views[segment] = memoryview(self.segments[segment])
        return view


class FakePinner:
    """A ``Pinner`` over guest RAM mapped at IOVA = GPA into :data:`RAM_SEGMENT` of ``memory``."""

    def __init__(self, memory: FakeHostMemory | None = None, *, ram_size: int = 16 << 20) -> None:
        self.memory = memory or FakeHostMemory()
        if RAM_SEGMENT not in self.memory.segments:
            self.memory.add(RAM_SEGMENT, ram_size)
        self.mapped: list[tuple[int, int]] = [(0, len(self.memory.segments[RAM_SEGMENT]))]
        self.refs: Counter[int] = Counter()
        self.calls: list[tuple[str, int, int]] = []
        self.fail_gfns: set[int] = set()
        self.fail_all: VgpusimError | None = None
        self.gate: asyncio.Event | None = None

    @property
    def pinned(self) -> set[int]:
        """gfns with at least one pin."""
        return {g for g, n in self.refs.items() if n > 0}

    def unmap(self, iova: int, size: int) -> None:
        """Remove ``[iova, iova + size)`` from the mappings (the caller then notifies the vGPU)."""
        out: list[tuple[int, int]] = []
        for start, length in self.mapped:
            end = start + length
            if start < iova:
                out.append((start, min(end, iova) - start))
            if end > iova + size:
                out.append((max(start, iova + size), end - max(start, iova + size)))
        self.mapped = out

    def _is_mapped(self, gfn: int) -> bool:
        addr = gfn << PAGE_SHIFT
        return any(start <= addr < start + length for start, length in self.mapped)

    async def pin_pages(self, iova: int, npage: int) -> list[HostPage]:
        """Pin ``npage`` contiguous pages from ``iova``: all or nothing."""
        self.calls.append(("pin", iova, npage))
        if self.gate is not None:
            await self.gate.wait()
        if not 1 <= npage <= MAX_PIN_PAGES:
            raise TooBig(f"npage {npage} not in 1..{MAX_PIN_PAGES}")
        if iova % PAGE_SIZE:
            raise InvalidArgument(f"iova {iova:#x} not page aligned")
        if self.fail_all is not None:
            raise self.fail_all
        first = iova >> PAGE_SHIFT
        for gfn in range(first, first + npage):
            if gfn in self.fail_gfns or not self._is_mapped(gfn):
                raise InvalidArgument(f"iova {gfn << PAGE_SHIFT:#x} is not mapped", reason="IOVA_NOT_MAPPED")
        for gfn in range(first, first + npage):
            self.refs[gfn] += 1
        return [HostPage(RAM_SEGMENT, (first + i) << PAGE_SHIFT) for i in range(npage)]

    async def unpin_pages(self, iova: int, npage: int) -> None:
        """Drop one pin of each page (never-pinned pages: no-op)."""
        self.calls.append(("unpin", iova, npage))
        if not 1 <= npage <= MAX_PIN_PAGES:
            raise TooBig(f"npage {npage} not in 1..{MAX_PIN_PAGES}")
        first = iova >> PAGE_SHIFT
        for gfn in range(first, first + npage):
            if self.refs[gfn] > 0:
                self.refs[gfn] -= 1
