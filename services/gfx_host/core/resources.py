"""Per-GPU resource partitioning: low GM, high GM, fences, vGPU IDs (GVT-g ``aperture_gm.c``).

Each physical GPU owns one :class:`GpuResources`.  Creating a vGPU carves a :class:`Partition`
out of it; removing the vGPU gives it back.  The host reservation sits at the bottom of every
pool (low GM ``[reserved, aperture)``, high GM ``[aperture + reserved, ggtt)``, fences
``[reserved, fences)``).  Ranges are allocated **first-fit**, so after churn the free space can
be split into holes: ``available_instances`` (computed from free *totals*, as i915's
``intel_vgpu_get_available``) may say 1 while no hole is big enough; that create then fails
with reason ``APERTURE_FRAGMENTED`` (or ``HIGH_GM_FRAGMENTED``, ...) instead of ``*_EXHAUSTED``.

Create checks, in this order (i915 ``intel_gvt_create_vgpu`` then ``alloc_resource``):

| check | reason (``Exhausted``, errno) |
|---|---|
| homogeneous model, another type exists | ``TYPE_MISMATCH`` (EUSERS) |
| no free vGPU ID (1..max_vgpus) | ``VGPU_ID_EXHAUSTED`` (ENOSPC) |
| low GM | ``LOW_GM_EXHAUSTED`` or ``APERTURE_FRAGMENTED`` |
| framebuffer (its low GM) | ``FRAMEBUFFER_EXHAUSTED`` or ``FRAMEBUFFER_FRAGMENTED`` |
| high GM | ``HIGH_GM_EXHAUSTED`` or ``HIGH_GM_FRAGMENTED`` |
| fences (contiguous) | ``FENCE_EXHAUSTED`` or ``FENCE_FRAGMENTED`` |
| type's ``max_instances`` reached | ``MAX_INSTANCES_REACHED`` (ENOSPC) |

``metadata["resource"]`` names the pool; ``requested``, ``free`` and ``largest_free`` give numbers.
``available_instances`` is the minimum of the three §4.2 terms, also bounded by the free vGPU
IDs and ``max_instances`` (neither changes the §4.2 numbers of the shipped models), and 0 for a
mismatched type on a homogeneous model.

Glossary:
- extent: a ``[start, start + size)`` range of one pool (bytes of GM, or fence indices).
- partition: the extents and the vGPU ID owned by one vGPU.
"""

from __future__ import annotations

import bisect
import errno
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from vgpusim.common.errors import Exhausted
from vgpusim.gfx_host.core.models import GpuModel, ModelKind, VgpuType


@dataclass(frozen=True, slots=True)
class Extent:
    """``[start, start + size)`` of one pool."""

    start: int
    size: int

    @property
    def end(self) -> int:
        """One past the last unit."""
        return self.start + self.size

    def contains(self, start: int, size: int = 1) -> bool:
        """Whether ``[start, start + size)`` lies entirely inside this extent (size >= 1)."""
        return self.start <= start and start + size <= self.end and size >= 1


@dataclass(frozen=True, slots=True)
class Partition:
    """What one vGPU owns: its ID and its extents (high GM and fences may be empty)."""

    vgpu_id: int
    type_name: str
    low_gm: Extent
    high_gm: Extent
    fences: Extent


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """Totals of one pool (bytes, or fence registers) available to vGPUs."""

    total: int
    used: int
    free: int
    largest_free: int
    holes: int


@dataclass(frozen=True, slots=True)
class ResourceStatistics:
    """A snapshot of a GPU's resources."""

    low_gm: PoolStatistics
    high_gm: PoolStatistics
    fences: PoolStatistics
    vgpu_ids_used: int
    vgpu_ids_total: int
    active_type: str | None
    allocations_total: int
    frees_total: int
    failures_total: Mapping[str, int]


class ExtentAllocator:
    """First-fit allocator over one pool, with a sorted, coalesced free list."""

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size
        self._free: list[Extent] = [Extent(start, size)] if size > 0 else []

    @property
    def free_total(self) -> int:
        """Sum of all holes."""
        return sum(e.size for e in self._free)

    @property
    def largest_free(self) -> int:
        """Size of the biggest hole."""
        return max((e.size for e in self._free), default=0)

    def alloc(self, size: int) -> Extent | None:
        """The lowest-addressed hole of at least ``size`` units, or None; size 0 gives an empty extent."""
        if size == 0:
            return Extent(self.start, 0)
        for i, hole in enumerate(self._free):
            if hole.size >= size:
                if hole.size == size:
                    del self._free[i]
                else:
                    self._free[i] = Extent(hole.start + size, hole.size - size)
                return Extent(hole.start, size)
        return None

    def free(self, extent: Extent) -> None:
        """Return ``extent``; merging with its neighbours.  Freeing free space is a bug (crashes)."""
        if extent.size == 0:
            return
        if extent.start < self.start or extent.end > self.start + self.size:
            raise RuntimeError(f"free of {extent} outside the pool")
        i = bisect.bisect_left([e.start for e in self._free], extent.start)
        prev = self._free[i - 1] if i > 0 else None
        nxt = self._free[i] if i < len(self._free) else None
        if (prev and prev.end > extent.start) or (nxt and extent.end > nxt.start):
            raise RuntimeError(f"double free of {extent}")
        start, end = extent.start, extent.end
        if nxt and nxt.start == end:
            end = nxt.end
            del self._free[i]
        if prev and prev.end == start:
            start = prev.start
            del self._free[i - 1]
            i -= 1
        self._free.insert(i, Extent(start, end - start))

    def statistics(self) -> PoolStatistics:
        """Totals of this pool."""
        free = self.free_total
        return PoolStatistics(self.size, self.size - free, free, self.largest_free, len(self._free))


class GpuResources:
    """The partitionable resources of one physical GPU (``parent`` names it in errors)."""

    def __init__(self, model: GpuModel, *, parent: str = "") -> None:
        self.model = model
        self.parent = parent or model.name
        m = model
        self._low = ExtentAllocator(m.reserved_low_gm, m.aperture_size - m.reserved_low_gm)
        high_start = m.aperture_size + m.reserved_high_gm
        self._high = ExtentAllocator(high_start, m.gm_size - high_start)
        self._fences = ExtentAllocator(m.reserved_fences, m.num_fences - m.reserved_fences)
        self._partitions: dict[int, Partition] = {}
        self._per_type: Counter[str] = Counter()
        self._allocations = self._frees = 0
        self._failures: Counter[str] = Counter()

    @property
    def active_type(self) -> str | None:
        """On a homogeneous model, the type of the existing vGPUs (None when there are none)."""
        if not self.model.homogeneous or not self._partitions:
            return None
        return next(iter(self._partitions.values())).type_name

    def partitions(self) -> tuple[Partition, ...]:
        """Live partitions, by vGPU ID."""
        return tuple(self._partitions[k] for k in sorted(self._partitions))

    def available_instances(self, vgpu_type: VgpuType) -> int:
        """How many more vGPUs of ``vgpu_type`` fit (kernel-mdev §4.2, from free totals)."""
        active = self.active_type
        if active is not None and active != vgpu_type.name:
            return 0
        counts = [self.model.max_vgpus - len(self._partitions), self._low.free_total // vgpu_type.low_gm]
        if vgpu_type.high_gm:
            counts.append(self._high.free_total // vgpu_type.high_gm)
        if vgpu_type.fences:
            counts.append(self._fences.free_total // vgpu_type.fences)
        if vgpu_type.max_instances is not None:
            counts.append(vgpu_type.max_instances - self._per_type[vgpu_type.name])
        return max(0, min(counts))

    def allocate(self, vgpu_type: VgpuType) -> Partition:
        """Carve a partition for ``vgpu_type``; Exhausted (reason per the module table) if it does not fit."""
        active = self.active_type
        if active is not None and active != vgpu_type.name:
            raise self._fail(
                "TYPE_MISMATCH",
                f"{self.parent} already hosts {active} vGPUs; {vgpu_type.name} cannot be mixed with them",
                {"resource": "type", "active_type": active, "requested": vgpu_type.name},
                errno.EUSERS,
            )
        free_ids = set(range(1, self.model.max_vgpus + 1)) - set(self._partitions)
        if not free_ids:
            raise self._fail(
                "VGPU_ID_EXHAUSTED",
                f"{self.parent} has all {self.model.max_vgpus} vGPU IDs in use",
                {"resource": "vgpu_id", "requested": "1", "free": "0"},
            )
        fb = self.model.kind is ModelKind.FRAMEBUFFER
        low_name, low_frag = ("framebuffer", "FRAMEBUFFER") if fb else ("low_gm", "APERTURE")
        taken: list[tuple[ExtentAllocator, Extent]] = []
        try:
            low = self._take(self._low, vgpu_type.low_gm, low_name, low_frag, taken)
            high = self._take(self._high, vgpu_type.high_gm, "high_gm", "HIGH_GM", taken)
            fences = self._take(self._fences, vgpu_type.fences, "fence", "FENCE", taken)
            n = self._per_type[vgpu_type.name]
            if vgpu_type.max_instances is not None and n >= vgpu_type.max_instances:
                raise self._fail(
                    "MAX_INSTANCES_REACHED",
                    f"{self.parent} already has the maximum of {n} {vgpu_type.name} vGPUs",
                    {"resource": "instances", "requested": "1", "free": "0"},
                )
        except Exhausted:
            for pool, extent in reversed(taken):
                pool.free(extent)
            raise
        part = Partition(min(free_ids), vgpu_type.name, low, high, fences)
        self._partitions[part.vgpu_id] = part
        self._per_type[vgpu_type.name] += 1
        self._allocations += 1
        return part

    def free(self, partition: Partition) -> None:
        """Give a partition back.  Freeing one that is not live is a bug (crashes)."""
        if self._partitions.get(partition.vgpu_id) != partition:
            raise RuntimeError(f"free of a partition that is not live: {partition}")
        del self._partitions[partition.vgpu_id]
        self._per_type[partition.type_name] -= 1
        self._low.free(partition.low_gm)
        self._high.free(partition.high_gm)
        self._fences.free(partition.fences)
        self._frees += 1

    def statistics(self) -> ResourceStatistics:
        """A snapshot of every pool and counter."""
        return ResourceStatistics(
            low_gm=self._low.statistics(),
            high_gm=self._high.statistics(),
            fences=self._fences.statistics(),
            vgpu_ids_used=len(self._partitions),
            vgpu_ids_total=self.model.max_vgpus,
            active_type=self.active_type,
            allocations_total=self._allocations,
            frees_total=self._frees,
            failures_total=dict(self._failures),
        )

    def _take(
        self,
        pool: ExtentAllocator,
        size: int,
        resource: str,
        prefix: str,
        taken: list[tuple[ExtentAllocator, Extent]],
    ) -> Extent:
        extent = pool.alloc(size)
        if extent is None:
            free, largest = pool.free_total, pool.largest_free
            reason = f"{prefix}_FRAGMENTED" if free >= size else f"{resource.upper()}_EXHAUSTED"
            what = "no contiguous range fits" if free >= size else "not enough left"
            raise self._fail(
                reason,
                f"{self.parent}: fail to allocate resource {resource}: {what} "
                f"(requested {size}, free {free}, largest free range {largest})",
                {
                    "resource": resource,
                    "requested": str(size),
                    "free": str(free),
                    "largest_free": str(largest),
                },
            )
        taken.append((pool, extent))
        return extent

    def _fail(
        self, reason: str, message: str, metadata: dict[str, str], err: int = errno.ENOSPC
    ) -> Exhausted:
        self._failures[reason] += 1
        return Exhausted(message, reason=reason, errno=err, metadata={"parent": self.parent, **metadata})
