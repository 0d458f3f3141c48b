"""Device DMA through a container's mappings: ``vfio_dma_rw`` reads/writes and ``translate``.

Every access is split at mapping edges and checked before a single byte moves (all or
nothing): an unmapped IOVA is ``DMA_FAULT`` (EINVAL), a protection the mapping lacks is
``PROT_MISMATCH`` (EPERM). As in type1's ``vfio_dma_rw`` a read needs READ and a write needs
READ and WRITE; ``translate`` (the bulk-DMA path) needs READ to read memory and WRITE to write
it. Writes and write translations mark the touched pages dirty while tracking is on. Nothing is
pinned. In hardware-IOMMU mode every refused access is also recorded as a
:class:`~.model.FaultRecord` (the last ``fault_log_size`` are kept, the total is counted).

Glossary:
- view: the ``memoryview`` of a registered segment (from the :class:`~.ops.SegmentStore`).
- fault: an access a hardware IOMMU would block, with the reason of the error raised for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping as MappingABC

from vgpusim.common.errors import VgpusimError
from vgpusim.iommu_type2.core import reasons
from vgpusim.iommu_type2.core.dirty import DirtyTracker
from vgpusim.iommu_type2.core.mappings import Mapping, MappingTable
from vgpusim.iommu_type2.core.model import (
    PAGE_SHIFT,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    FaultLog,
    FaultRecord,
    HostRun,
    Prot,
)
from vgpusim.iommu_type2.core.pins import prot_name

Chunk = tuple[Mapping, int, int]


class FaultRecorder:
    """The fault log of a container; records only when ``enabled`` (hardware mode)."""

    __slots__ = ("enabled", "records", "total")

    def __init__(self, size: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.records: deque[FaultRecord] = deque(maxlen=size)
        self.total = 0

    def record(self, iova: int, size: int, write: bool, device: str, reason: str) -> None:
        if self.enabled:
            self.records.append(FaultRecord(iova, size, write, device, reason))
            self.total += 1

    def snapshot(self) -> FaultLog:
        return FaultLog(tuple(self.records), self.total)


class DmaAccess:
    """Reads, writes and translations over one container's mappings and segment views."""

    __slots__ = ("dirty", "faults", "read_bytes", "table", "translations", "views", "write_bytes")

    def __init__(
        self,
        table: MappingTable,
        views: MappingABC[str, memoryview],
        dirty: DirtyTracker,
        faults: FaultRecorder,
    ) -> None:
        self.table = table
        self.views = views
        self.dirty = dirty
        self.faults = faults
        self.read_bytes = 0
        self.write_bytes = 0
        self.translations = 0

    def _chunks(self, device: str, iova: int, size: int, need: Prot, write: bool) -> list[Chunk]:
        chunks: list[Chunk] = []
        error: VgpusimError
        for mapping, start, length in self.table.walk(iova, size):
            if mapping is None:
                error = reasons.dma_fault(start, iova, size)
            elif not mapping.prot.allows(need):
                error = reasons.prot_mismatch(start, prot_name(mapping.prot), prot_name(need))
            else:
                chunks.append((mapping, start, length))
                continue
            self.faults.record(iova, size, write, device, error.reason)
            raise error
        return chunks

    def _mark(self, chunks: list[Chunk]) -> None:
        for mapping, start, length in chunks:
            if mapping.dirty is not None:
                first = (start - mapping.iova) >> PAGE_SHIFT
                last = (start - mapping.iova + length - 1) >> PAGE_SHIFT
                self.dirty.mark(mapping, first, last - first + 1)

    def read(self, device: str, iova: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``iova`` (the caller checked ``length`` and ``iova``)."""
        chunks = self._chunks(device, iova, length, PROT_READ, False)
        parts = []
        for mapping, start, size in chunks:
            offset = mapping.offset + (start - mapping.iova)
            parts.append(bytes(self.views[mapping.segment][offset : offset + size]))
        self.read_bytes += length
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, device: str, iova: int, data: bytes) -> None:
        """Store ``data`` at ``iova`` and mark the pages dirty."""
        chunks = self._chunks(device, iova, len(data), PROT_RW, True)
        source = memoryview(data)
        pos = 0
        for mapping, start, size in chunks:
            offset = mapping.offset + (start - mapping.iova)
            self.views[mapping.segment][offset : offset + size] = source[pos : pos + size]
            pos += size
        self._mark(chunks)
        self.write_bytes += len(data)

    def translate(self, device: str, iova: int, size: int, write: bool) -> tuple[HostRun, ...]:
        """Host runs backing ``[iova, iova + size)`` for a device DMA (write: marks dirty)."""
        chunks = self._chunks(device, iova, size, PROT_WRITE if write else PROT_READ, write)
        if write:
            self._mark(chunks)
        self.translations += 1
        out: list[HostRun] = []
        for mapping, start, length in chunks:
            offset = mapping.offset + (start - mapping.iova)
            if out:
                prev = out[-1]
                if prev.segment == mapping.segment and prev.offset + prev.length == offset:
                    out[-1] = HostRun(prev.iova, prev.segment, prev.offset, prev.length + length)
                    continue
            out.append(HostRun(start, mapping.segment, offset, length))
        return tuple(out)
