"""The iommu_type2 metrics: one custom collector reading the core's statistics at scrape time,
plus the latency histogram of the mapping RPCs observed by the servicer.

Nothing is counted twice: gauges and ``_total`` counters come from ``Mapper.statistics()``
(whose totals include destroyed containers, so counters never go backwards) and from the live
containers' records (``Mapper.containers()``, for the per-mode split). Labels are bounded: no
container, owner or device ids, only ``mode``, ``op`` and ``direction``. Series:

- ``vgpusim_iommu_containers{mode}``: live containers (``emulated``/``hardware``);
- ``vgpusim_iommu_owners``, ``vgpusim_iommu_devices``: owners with containers, attached devices;
- ``vgpusim_iommu_mappings``, ``vgpusim_iommu_mapped_bytes``: mappings of all containers;
- ``vgpusim_iommu_pinned_pages``, ``vgpusim_iommu_memlock_bytes``: distinct pinned pages, memlock;
- ``vgpusim_iommu_map_operations_total{op}``: mappings created (``map``) and removed (``unmap``);
- ``vgpusim_iommu_unmapped_bytes_total``: bytes those removals covered;
- ``vgpusim_iommu_page_pins_total`` / ``vgpusim_iommu_page_unpins_total``: page references
  taken / dropped (the pin throughput is the rate of the first). Not ``pinned_pages_total``:
  in OpenMetrics a counter's family name drops ``_total``, and ``vgpusim_iommu_pinned_pages``
  is the gauge's family already (two families of one name fail the scrape);
- ``vgpusim_iommu_unmap_notifications_total``, ``vgpusim_iommu_unmap_retries_total``: calls to
  devices' unmap listeners, and notification rounds after an unmap's first;
- ``vgpusim_iommu_faults_total``: refused DMAs (hardware mode);
- ``vgpusim_iommu_dirty_pages_reported_total``: dirty pages reported by bitmaps;
- ``vgpusim_iommu_dma_bytes_total{direction}``: ``DmaRead``/``DmaWrite`` bytes;
- ``vgpusim_iommu_translations_total``: ``Translate`` calls;
- ``vgpusim_iommu_containers_created_total`` / ``..._destroyed_total``;
- ``vgpusim_iommu_map_duration_seconds{op}`` (histogram, 1 us..10 ms): time in the core of
  ``map``, ``map_batch``, ``unmap``, ``pin`` and ``unpin`` calls (conversion and wire excluded).

Glossary:
- scrape: one ``GET /metrics``; the collector runs synchronously inside it, on the event loop.
- op: one of :data:`OPS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vgpusim.iommu_type2.core import IommuMode, Mapper

__all__ = ["DURATION_BUCKETS", "OPS", "IommuCollector", "IommuMetrics", "register_metrics"]

OPS = ("map", "map_batch", "unmap", "pin", "unpin")
DURATION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2)
_PREFIX = "vgpusim_iommu_"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, doc, value=value)


class IommuCollector:
    """Reads ``mapper``'s statistics at each scrape (a prometheus_client custom collector)."""

    def __init__(self, mapper: Mapper) -> None:
        self._mapper = mapper

    def collect(self) -> Iterator[Metric]:
        stats = self._mapper.statistics()
        t = stats.totals
        modes = Counter(info.mode for info in self._mapper.containers())
        containers = GaugeMetricFamily(_PREFIX + "containers", "Live containers, by mode.", labels=["mode"])
        for mode in IommuMode:
            containers.add_metric([mode.name.lower()], modes[mode])
        yield containers
        yield _gauge("owners", "Owners with at least one live container.", stats.owners)
        yield _gauge("devices", "Devices attached to a container.", stats.devices)
        yield _gauge("mappings", "DMA mappings of all containers.", t.mappings)
        yield _gauge("mapped_bytes", "Bytes mapped in all containers.", t.mapped_bytes)
        yield _gauge("pinned_pages", "Distinct pages pinned by devices.", t.pinned_pages)
        yield _gauge("memlock_bytes", "Bytes charged to the containers' memlock limits.", t.memlock_bytes)
        ops = CounterMetricFamily(_PREFIX + "map_operations", "Mappings created and removed.", labels=["op"])
        ops.add_metric(["map"], t.maps_total)
        ops.add_metric(["unmap"], t.unmaps_total)
        yield ops
        yield _counter("unmapped_bytes", "Bytes covered by removed mappings.", t.unmapped_bytes_total)
        yield _counter("page_pins", "Page references taken by PinPages.", t.pins_total)
        yield _counter("page_unpins", "Page references dropped (unpin, detach).", t.unpins_total)
        yield _counter("unmap_notifications", "Unmap events sent to devices.", t.notifications_total)
        yield _counter("unmap_retries", "Unmap notification rounds after the first.", t.retries_total)
        yield _counter("faults", "DMA accesses refused (hardware mode).", t.faults_total)
        yield _counter(
            "dirty_pages_reported", "Dirty pages reported in bitmaps.", t.dirty_pages_reported_total
        )
        dma = CounterMetricFamily(_PREFIX + "dma_bytes", "DmaRead/DmaWrite bytes.", labels=["direction"])
        dma.add_metric(["read"], t.dma_read_bytes_total)
        dma.add_metric(["write"], t.dma_write_bytes_total)
        yield dma
        yield _counter("translations", "Translate calls answered.", t.translations_total)
        yield _counter("containers_created", "Containers created.", stats.containers_created_total)
        yield _counter("containers_destroyed", "Containers destroyed.", stats.containers_destroyed_total)


class IommuMetrics:
    """What the servicer observes itself: the core time of the mapping calls, per op."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            _PREFIX + "map_duration_seconds",
            "Time spent in the mapper by map, map_batch, unmap, pin and unpin calls.",
            ["op"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.duration: Mapping[str, Histogram] = {op: self.histogram.labels(op) for op in OPS}
        """The labelled child of each op, resolved once (``duration["pin"].observe(seconds)``)."""


def register_metrics(registry: CollectorRegistry, mapper: Mapper) -> IommuMetrics:
    """Register the collector of ``mapper`` and the duration histogram on ``registry``."""
    registry.register(IommuCollector(mapper))
    return IommuMetrics(registry)
