"""The records of the type2 mapper: constants, configuration, requests and results.

Everything a caller (the gRPC servicer, a test, the benchmark) hands to or gets from the core is a
frozen dataclass or an enum defined here; the live state (mappings, pins, bitmaps) is private to
the other modules. Sizes and addresses are bytes; a page is :data:`PAGE_SIZE` bytes.

Glossary:
- container: one DMA address space (one per VM), the ``vfio_iommu`` of type1.
- mapping: IOVA range -> bytes of a registered segment (a ``vfio_dma``).
- segment: a named shared-memory file standing in for the VM's virtual address space.
- pin: a device's reference on one mapped page (``vfio_pin_pages``), counted per page.
- run: a contiguous stretch of host memory (``segment``, ``offset``, ``length``) backing an IOVA
  range, what :class:`HostRun` carries; adjacent pages are coalesced into one run.
- emulated / hardware mode: whether the container has no IOMMU (mdev-only, type1 with emulated
  groups) or a hardware IOMMU checking every DMA (see :class:`IommuMode`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
PAGE_MASK: Final = PAGE_SIZE - 1
U64_MAX: Final = (1 << 64) - 1
IOVA_PGSIZES: Final = U64_MAX & ~PAGE_MASK  # 0xFFFF_FFFF_FFFF_F000, type1's PAGE_MASK bitmap
DMA_ENTRY_LIMIT: Final = 65535  # type1 module parameter dma_entry_limit (U16_MAX)
PIN_PAGES_MAX: Final = 512  # VFIO_PIN_PAGES_MAX_ENTRIES on 64-bit/4K
UNMAP_RETRIES: Final = 10  # type1 BUG_ON(++retries > 10)
MAX_DIRTY_BITMAP_SIZE: Final = 268_435_456  # DIRTY_BITMAP_SIZE_MAX, bytes
FAULT_LOG_SIZE: Final = 256
DMA_RW_MAX: Final = 1 << 20  # largest DmaRead/DmaWrite (the proto's limit)


class IommuMode(enum.Enum):
    """How a container's DMA is checked (chosen at creation, never changes)."""

    EMULATED = 1
    """mdev-only: map records, pins charge the memlock limit lazily (type1, emulated groups)."""
    HARDWARE = 2
    """A hardware IOMMU: maps charge memlock, every DMA is translated and checked, faults logged."""


class Extension(enum.IntEnum):
    """``VFIO_CHECK_EXTENSION`` arguments (uapi ``vfio.h``)."""

    TYPE1 = 1
    SPAPR = 2
    TYPE1V2 = 3
    DMA_CC = 4
    EEH = 5
    NOIOMMU = 8
    UNMAP_ALL = 9
    UPDATE_VADDR = 10


@dataclass(frozen=True, slots=True)
class Prot:
    """Protection of a mapping, or the access a pin/DMA needs (device's view: read/write memory)."""

    read: bool = False
    write: bool = False

    def allows(self, needed: Prot) -> bool:
        """``(dma->prot & prot) == prot``."""
        return (self.read or not needed.read) and (self.write or not needed.write)


PROT_NONE: Final = Prot()
PROT_READ: Final = Prot(read=True)
PROT_WRITE: Final = Prot(write=True)
PROT_RW: Final = Prot(read=True, write=True)


@dataclass(frozen=True, slots=True)
class DmaMapping:
    """One ``MapDma`` request, and a mapping as listed: ``size`` bytes at ``iova`` backed by
    ``segment`` from byte ``offset``."""

    iova: int
    size: int
    segment: str
    offset: int
    prot: Prot = PROT_RW


@dataclass(frozen=True, slots=True)
class HostRun:
    """``length`` bytes at ``offset`` of ``segment``, backing IOVA ``iova`` (contiguous both ways)."""

    iova: int
    segment: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class UnmapResult:
    """What ``UnmapDma`` returns: bytes unmapped and, when asked, the dirty bitmap of the range."""

    unmapped_bytes: int
    dirty_bitmap: bytes | None = None


@dataclass(frozen=True, slots=True)
class IommuInfo:
    """``VFIO_IOMMU_GET_INFO`` with the migration and DMA_AVAIL capabilities."""

    iova_pgsizes: int
    dma_avail: int
    migration_pgsize_bitmap: int
    max_dirty_bitmap_size: int
    mode: IommuMode


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """A DMA the container refused (recorded in hardware mode only); ``reason`` is the error's."""

    iova: int
    size: int
    write: bool
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class FaultLog:
    """The last recorded faults (oldest first, at most ``fault_log_size``) and the total count."""

    faults: tuple[FaultRecord, ...]
    faults_total: int


@dataclass(frozen=True, slots=True)
class ContainerStatistics:
    """Counters of one container (or the sum over containers). Gauges first, then ``_total``s.

    ``pinned_pages`` counts distinct pinned pages; ``pins_total``/``unpins_total`` count page
    references taken and dropped (one per page per call), so pin throughput is their rate.
    ``unmaps_total`` counts mappings removed (also by destroy), ``notifications_total`` calls to
    devices' ``notify_unmap``, ``retries_total`` notification rounds after the first of an unmap.
    """

    mappings: int = 0
    mapped_bytes: int = 0
    pinned_pages: int = 0
    memlock_bytes: int = 0
    maps_total: int = 0
    unmaps_total: int = 0
    unmapped_bytes_total: int = 0
    pins_total: int = 0
    unpins_total: int = 0
    notifications_total: int = 0
    retries_total: int = 0
    faults_total: int = 0
    dirty_pages_reported_total: int = 0
    dma_read_bytes_total: int = 0
    dma_write_bytes_total: int = 0
    translations_total: int = 0

    def __add__(self, other: ContainerStatistics) -> ContainerStatistics:
        return ContainerStatistics(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(stats: ContainerStatistics) -> tuple[int, ...]:
    return tuple(getattr(stats, name) for name in ContainerStatistics.__slots__)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as listed (``ListContainers``)."""

    container_id: str
    owner: str
    mode: IommuMode
    memlock_limit_bytes: int
    devices: tuple[str, ...]
    segments: tuple[str, ...]
    dirty_tracking: bool
    statistics: ContainerStatistics


@dataclass(frozen=True, slots=True)
class MapperStatistics:
    """Counters of the whole mapper; ``totals`` includes containers destroyed since start."""

    containers: int
    owners: int
    devices: int
    containers_created_total: int
    containers_destroyed_total: int
    totals: ContainerStatistics = field(default_factory=ContainerStatistics)


@dataclass(frozen=True, slots=True)
class MapperConfig:
    """Tunables of the mapper; defaults are the kernel's. Validated at construction.

    - ``dma_entry_limit``: mappings per container (type1 ``dma_entry_limit``, 65535).
    - ``unmap_retries``: notification rounds after the first before an unmap gives up (type1: 10).
    - ``notify_timeout_s``: deadline of one device's ``notify_unmap`` call (seconds, > 0).
    - ``fault_log_size``: fault records kept per container (256).
    - ``dma_rw_max``: largest DmaRead/DmaWrite in bytes (1 MiB).
    """

    dma_entry_limit: int = DMA_ENTRY_LIMIT
    unmap_retries: int = UNMAP_RETRIES
    notify_timeout_s: float = 5.0
    fault_log_size: int = FAULT_LOG_SIZE
    dma_rw_max: int = DMA_RW_MAX

    def __post_init__(self) -> None:
        if not 0 < self.dma_entry_limit <= 1 << 32:
            raise ValueError(f"dma_entry_limit must be in 1..2**32, not {self.dma_entry_limit}")
        if not 0 <= self.unmap_retries <= 1000:
            raise ValueError(f"unmap_retries must be in 0..1000, not {self.unmap_retries}")
        if not (math.isfinite(self.notify_timeout_s) and self.notify_timeout_s > 0):
            raise ValueError(f"notify_timeout_s must be a positive number, not {self.notify_timeout_s}")
        if not 0 < self.fault_log_size <= 1 << 16:
            raise ValueError(f"fault_log_size must be in 1..65536, not {self.fault_log_size}")
        if not 0 < self.dma_rw_max <= 1 << 30:
            raise ValueError(f"dma_rw_max must be in 1..2**30, not {self.dma_rw_max}")
