"""A micro-benchmark of the pure core: batched mappings per second and pinned pages per second.

It measures the Python work the core does per request, with no gRPC and no processes, so the
service-level targets (>= 50,000 batched mappings/s and >= 500,000 pinned pages/s in 512-page
calls, measured later through gRPC) can be judged against the head-room the core leaves.
Run it with ``python -m vgpusim.iommu_type2.core.bench``; the test suite only checks that it
runs (timings are never asserted in tests).

Glossary:
- batch: one ``map_dma_batch`` call of ``batch`` 4 KiB mappings at increasing IOVAs.
- pin call: one ``pin_pages`` of 512 pages (a 2 MiB range), as a vendor shadowing a GTT does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from vgpusim.iommu_type2.core.fakes import InMemorySegmentStore, UnpinningListener
from vgpusim.iommu_type2.core.mapper import Mapper
from vgpusim.iommu_type2.core.model import PAGE_SIZE, PIN_PAGES_MAX, PROT_RW, DmaMapping, IommuMode

_WINDOW = PIN_PAGES_MAX * PAGE_SIZE  # 2 MiB: what one 512-page pin covers


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Rates measured by :func:`run_benchmark` (operations per second of wall-clock time)."""

    mappings: int
    maps_per_s: float
    unmaps_per_s: float
    pin_calls: int
    pin_pages_per_s: float
    unpin_pages_per_s: float
    cycle_pages_per_s: float
    dma_reads_per_s: float

    def report(self) -> str:
        """A short human-readable table."""
        return "\n".join(
            (
                f"map_dma_batch   {self.maps_per_s:>14,.0f} mappings/s ({self.mappings} mappings)",
                f"unmap_all       {self.unmaps_per_s:>14,.0f} mappings/s",
                f"pin_pages       {self.pin_pages_per_s:>14,.0f} pages/s ({self.pin_calls} calls x 512)",
                f"unpin_pages     {self.unpin_pages_per_s:>14,.0f} pages/s",
                f"pin+unpin fresh {self.cycle_pages_per_s:>14,.0f} pages/s (each page pinned once)",
                f"dma_read 64 B   {self.dma_reads_per_s:>14,.0f} reads/s",
            )
        )


def run_benchmark(mappings: int = 50_000, batch: int = 1_000, pin_calls: int = 2_000) -> BenchResult:
    """Time ``mappings`` mappings in batches of ``batch``, their unmap, then ``pin_calls``
    512-page pins and the matching unpins over 16 windows of 2 MiB (so later pins only raise
    reference counts), pin+unpin pairs of fresh pages, and 64-byte DMA reads. Returns the rates."""
    return asyncio.run(_run(mappings, batch, pin_calls))


async def _run(mappings: int, batch: int, pin_calls: int) -> BenchResult:
    store = InMemorySegmentStore()
    store.create("ram", _WINDOW)
    mapper = Mapper(store)
    container = mapper.create_container("bench", IommuMode.EMULATED)
    container.register_segment("ram", _WINDOW)

    requests = [DmaMapping(i * PAGE_SIZE, PAGE_SIZE, "ram", 0, PROT_RW) for i in range(mappings)]
    started = time.perf_counter()
    for first in range(0, mappings, batch):
        container.map_dma_batch(requests[first : first + batch])
    map_s = time.perf_counter() - started
    started = time.perf_counter()
    await container.unmap_all()
    unmap_s = time.perf_counter() - started

    windows = 16
    container.map_dma_batch([DmaMapping(w * _WINDOW, _WINDOW, "ram", 0, PROT_RW) for w in range(windows)])
    container.attach_device("vgpu")
    container.watch_unmap("vgpu", UnpinningListener(container, "vgpu"))
    started = time.perf_counter()
    for call in range(pin_calls):
        container.pin_pages("vgpu", (call % windows) * _WINDOW, PIN_PAGES_MAX, PROT_RW)
    pin_s = time.perf_counter() - started
    started = time.perf_counter()
    for call in range(pin_calls):
        container.unpin_pages("vgpu", (call % windows) * _WINDOW, PIN_PAGES_MAX)
    unpin_s = time.perf_counter() - started
    assert container.statistics().pinned_pages == 0
    started = time.perf_counter()
    for call in range(pin_calls):
        container.pin_pages("vgpu", (call % windows) * _WINDOW, PIN_PAGES_MAX, PROT_RW)
        container.unpin_pages("vgpu", (call % windows) * _WINDOW, PIN_PAGES_MAX)
    cycle_s = time.perf_counter() - started

    reads = 20_000
    started = time.perf_counter()
    for i in range(reads):
        container.dma_read("vgpu", (i % 512) * PAGE_SIZE + 64, 64)
    read_s = time.perf_counter() - started
    await mapper.destroy_container(container.container_id)

    pages = pin_calls * PIN_PAGES_MAX
    return BenchResult(
        mappings=mappings,
        maps_per_s=mappings / map_s,
        unmaps_per_s=mappings / unmap_s,
        pin_calls=pin_calls,
        pin_pages_per_s=pages / pin_s,
        unpin_pages_per_s=pages / unpin_s,
        cycle_pages_per_s=pages / cycle_s,
        dma_reads_per_s=reads / read_s,
    )


def main() -> None:
    """``python -m vgpusim.iommu_type2.core.bench [--mappings N] [--batch N] [--pin-calls N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mappings", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--pin-calls", type=int, default=2_000)
    args = parser.parse_args()
    print(run_benchmark(args.mappings, args.batch, args.pin_calls).report())


if __name__ == "__main__":
    main()
