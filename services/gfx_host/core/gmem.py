"""The engine's ``GraphicsMemory`` over a vGPU's GTT shadow and the guest RAM segments.

``core/engine`` executes commands against the ``engine.memory.GraphicsMemory`` ops table (a
partition and ``translate(gm_addr, size, write=) -> [memoryview]``).  :class:`GttGraphicsMemory`
is its real implementation: :meth:`gtt.Gtt.translate` gives coalesced host spans of pinned pages,
:class:`gtt.HostMemory` turns each span into a view of its shared-memory segment, and every
``GttFault`` becomes the engine's ``DmaFault`` (EFAULT), so a hostile command fails its workload
and never touches memory outside the vGPU's partition and pinned pages.

Glossary:
- span: ``(segment, offset, length)`` of host memory backing a contiguous GM range.
"""

from __future__ import annotations

from vgpusim.gfx_host.core.engine.memory import DmaFault, GmPartition, GmRange
from vgpusim.gfx_host.core.gtt import Gtt, GttFault, HostMemory
from vgpusim.gfx_host.core.resources import Partition


class GttGraphicsMemory:
    """``GraphicsMemory`` of one open vGPU (pinned pages are mapped read/write)."""

    def __init__(self, gtt: Gtt, memory: HostMemory, partition: Partition) -> None:
        self._gtt = gtt
        self._memory = memory
        self._partition = GmPartition(
            low=GmRange(partition.low_gm.start, partition.low_gm.size),
            high=GmRange(partition.high_gm.start, partition.high_gm.size),
        )

    @property
    def partition(self) -> GmPartition:
        """The vGPU's low/high GM ranges."""
        return self._partition

    def translate(self, gm_addr: int, size: int, *, write: bool) -> list[memoryview]:
        """Views of the host pages behind ``[gm_addr, gm_addr + size)``, one per contiguous run."""
        if size == 0 and self._partition.contains(gm_addr, 0):
            return []
        try:
            spans = self._gtt.translate(gm_addr, size)
        except GttFault as exc:
            raise DmaFault(f"{exc.message} [{exc.reason}]", gm_addr=gm_addr, size=size, write=write) from exc
        view = self._memory.view
        return [view(s.segment)[s.offset : s.offset + s.length] for s in spans]
