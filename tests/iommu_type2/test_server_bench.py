"""The service benchmark (``vgpusim.iommu_type2.bench``) runs and reports; timings are never asserted."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from vgpusim.iommu_type2 import bench

if TYPE_CHECKING:
    from tests.iommu_type2.conftest import ServiceHarness

KEYS = {
    "map_batch_call_s",
    "mappings_per_s",
    "pin_call_s",
    "unpin_call_s",
    "pinned_pages_per_s",
    "unpinned_pages_per_s",
    "echo_map_batch_call_s",
    "echo_pin_call_s",
    "map_batch_echo_ratio",
    "pin_echo_ratio",
}


async def test_measure_leaves_nothing_behind(iommu: ServiceHarness) -> None:
    result = await bench.measure(
        iommu.handle.target, iommu.shm_dir, batch=8, batches=2, npage=16, pin_calls=4, echo="inline"
    )
    assert result.keys() >= KEYS
    assert all(result[key] > 0 for key in KEYS)
    assert (result["map_batch_size"], result["npage"]) == (8, 16)
    assert iommu.service.mapper.containers() == ()
    assert list(iommu.shm_dir.iterdir()) == []
    stats = iommu.service.mapper.statistics().totals
    assert (stats.maps_total, stats.pins_total) == (2 * 8 + 1, 4 * 16)


@pytest.mark.multiprocess
async def test_measure_with_an_echo_process(iommu: ServiceHarness) -> None:
    result = await bench.measure(iommu.handle.target, iommu.shm_dir, batch=4, batches=1, npage=8, pin_calls=2)
    assert result.keys() >= KEYS


@pytest.mark.multiprocess
def test_command_line_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--in-process", "--batch", "4", "--batches", "1", "--npage", "8", "--pin-calls", "2"]
    assert bench.main(argv) == 0
    assert json.loads(capsys.readouterr().out).keys() >= KEYS
