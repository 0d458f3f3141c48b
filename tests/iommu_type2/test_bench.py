"""The micro-benchmark runs (its numbers are reported, never asserted)."""

from __future__ import annotations

from vgpusim.iommu_type2.core.bench import run_benchmark


def test_benchmark_runs() -> None:
    result = run_benchmark(mappings=2_000, batch=500, pin_calls=40)
    assert result.mappings == 2_000 and result.pin_calls == 40
    assert min(result.maps_per_s, result.unmaps_per_s, result.pin_pages_per_s, result.unpin_pages_per_s) > 0
    assert "pages/s" in result.report()
