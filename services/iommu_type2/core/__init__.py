"""The domain core of iommu_type2: vfio_iommu_type1 semantics for mediated (emulated) devices.

No gRPC and no generated code here: frozen dataclasses in and out, errors from
``vgpusim.common.errors`` (each with a reason from ``reasons``), peers injected as Protocols.
Modules, one concept each:

- ``model``: constants, enums and the frozen records (requests, results, statistics, config);
- ``reasons``: the error catalogue; ``checks``: argument validation in the kernel's order;
- ``ops``: the ``SegmentStore`` and ``UnmapListener`` Protocols; ``fakes``: their fakes;
- ``mappings``: the sorted mapping table; ``dirty``: page bitmaps and dirty tracking;
- ``pins``: per-device page pins and memlock;
- ``dma``: DMA read/write/translate and the fault log; ``unmap``: the unmap handshake;
- ``access``: the vendor device calls; ``container``: one address space; ``mapper``: all of them;
- ``bench``: a micro-benchmark of the pure core.

Glossary: see ``model`` (container, mapping, segment, pin, run, emulated/hardware mode).
"""

from vgpusim.iommu_type2.core.container import Container
from vgpusim.iommu_type2.core.fakes import InMemorySegmentStore, UnpinningListener
from vgpusim.iommu_type2.core.mapper import Mapper, parse_mode
from vgpusim.iommu_type2.core.model import (
    DMA_ENTRY_LIMIT,
    IOVA_PGSIZES,
    MAX_DIRTY_BITMAP_SIZE,
    PAGE_SIZE,
    PIN_PAGES_MAX,
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    UNMAP_RETRIES,
    ContainerInfo,
    ContainerStatistics,
    DmaMapping,
    Extension,
    FaultLog,
    FaultRecord,
    HostRun,
    IommuInfo,
    IommuMode,
    MapperConfig,
    MapperStatistics,
    Prot,
    UnmapResult,
)
from vgpusim.iommu_type2.core.ops import SegmentStore, UnmapListener

__all__ = [
    "DMA_ENTRY_LIMIT",
    "IOVA_PGSIZES",
    "MAX_DIRTY_BITMAP_SIZE",
    "PAGE_SIZE",
    "PIN_PAGES_MAX",
    "PROT_NONE",
    "PROT_READ",
    "PROT_RW",
    "PROT_WRITE",
    "UNMAP_RETRIES",
    "Container",
    "ContainerInfo",
    "ContainerStatistics",
    "DmaMapping",
    "Extension",
    "FaultLog",
    "FaultRecord",
    "HostRun",
    "InMemorySegmentStore",
    "IommuInfo",
    "IommuMode",
    "Mapper",
    "MapperConfig",
    "MapperStatistics",
    "Prot",
    "SegmentStore",
    "UnmapListener",
    "UnmapResult",
    "UnpinningListener",
    "parse_mode",
]
