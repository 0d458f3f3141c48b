"""Resource partitioning: the §4.2 arithmetic, exhaustion reasons, fragmentation, homogeneity."""

from __future__ import annotations

import dataclasses
import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gfx_host.helpers import GVT, MIB, NV
from vgpusim.common.errors import Exhausted
from vgpusim.gfx_host.core.models import GpuModel
from vgpusim.gfx_host.core.resources import Extent, ExtentAllocator, GpuResources

_8, _4, _2, _1 = (GVT.find_type(f"GVTg_V5_{n}") for n in (8, 4, 2, 1))


def avail(res: GpuResources, model: GpuModel = GVT) -> dict[str, int]:
    return {t.name: res.available_instances(t) for t in model.types}


def test_initial_available_instances_match_kernel_mdev_example() -> None:
    """1 GiB aperture, 4 GiB GGTT, 32 fences: _8 = 7, _4 = 5, _2 = 2, _1 = 1 (and 7 IDs)."""
    assert avail(GpuResources(GVT)) == {"GVTg_V5_8": 7, "GVTg_V5_4": 5, "GVTg_V5_2": 2, "GVTg_V5_1": 1}


def test_one_v5_4_lowers_the_counts() -> None:
    res = GpuResources(GVT)
    before = avail(res)
    part = res.allocate(_4)
    after = avail(res)
    assert after == {"GVTg_V5_8": 5, "GVTg_V5_4": 4, "GVTg_V5_2": 2, "GVTg_V5_1": 1}
    assert all(after[k] <= before[k] for k in before) and after != before
    res.free(part)
    assert avail(res) == before


def test_partition_layout_is_above_the_host_reservation() -> None:
    res = GpuResources(GVT)
    a, b = res.allocate(_4), res.allocate(_8)
    assert (a.vgpu_id, b.vgpu_id) == (1, 2)
    assert a.low_gm == Extent(128 * MIB, 128 * MIB) and b.low_gm == Extent(256 * MIB, 64 * MIB)
    assert a.high_gm == Extent((1024 + 384) * MIB, 512 * MIB)
    assert a.fences == Extent(4, 4) and b.fences == Extent(8, 4)
    res.free(a)
    assert res.allocate(_8).vgpu_id == 1  # lowest free ID, as idr_alloc


def test_eighth_vgpu_fails_with_vgpu_id_exhausted() -> None:
    res = GpuResources(GVT, parent="0000:00:02.0")
    for _ in range(7):
        res.allocate(_8)
    assert avail(res)["GVTg_V5_8"] == 0
    with pytest.raises(Exhausted) as exc:
        res.allocate(_8)
    assert exc.value.reason == "VGPU_ID_EXHAUSTED" and exc.value.errno == errno.ENOSPC
    assert exc.value.metadata["resource"] == "vgpu_id" and exc.value.metadata["parent"] == "0000:00:02.0"


def test_high_gm_exhausted_names_the_resource() -> None:
    res = GpuResources(GVT)
    for _ in range(5):
        res.allocate(_4)  # 5 x 512 MB of the 2688 MB high GM
    with pytest.raises(Exhausted) as exc:
        res.allocate(_8)
    err = exc.value
    assert err.reason == "HIGH_GM_EXHAUSTED" and err.metadata["resource"] == "high_gm"
    assert err.metadata["requested"] == str(384 * MIB) and err.metadata["free"] == str(128 * MIB)


def test_low_gm_exhausted_when_the_aperture_is_small() -> None:
    model = dataclasses.replace(GVT, aperture_size=512 * MIB)  # 384 MB of low GM for vGPUs
    res = GpuResources(model)
    for _ in range(6):
        res.allocate(_8)
    assert res.available_instances(_8) == 0
    with pytest.raises(Exhausted) as exc:
        res.allocate(_8)
    assert exc.value.reason == "LOW_GM_EXHAUSTED" and exc.value.metadata["resource"] == "low_gm"


def test_fence_exhausted_and_failed_create_rolls_back() -> None:
    res = GpuResources(dataclasses.replace(GVT, num_fences=12))  # 8 fences for vGPUs
    res.allocate(_8)
    res.allocate(_8)
    before = res.statistics()
    assert res.available_instances(_8) == 0
    with pytest.raises(Exhausted) as exc:
        res.allocate(_8)
    assert exc.value.reason == "FENCE_EXHAUSTED"
    after = res.statistics()
    assert (after.low_gm, after.high_gm, after.vgpu_ids_used) == (before.low_gm, before.high_gm, 2)
    assert after.failures_total == {"FENCE_EXHAUSTED": 1}


def test_fragmentation_after_churn_gives_aperture_fragmented() -> None:
    """Four _4 then three removed: 768 MB of low GM free in two holes of 384 MB; a _1 needs 512."""
    res = GpuResources(GVT)
    parts = [res.allocate(_4) for _ in range(4)]
    for part in parts[:3]:
        res.free(part)
    assert res.available_instances(_1) == 1  # from free totals, as the kernel computes it
    stats = res.statistics().low_gm
    assert (stats.free, stats.largest_free, stats.holes) == (768 * MIB, 384 * MIB, 2)
    with pytest.raises(Exhausted) as exc:
        res.allocate(_1)
    assert exc.value.reason == "APERTURE_FRAGMENTED"
    assert exc.value.metadata["largest_free"] == str(384 * MIB)
    res.free(parts[3])
    assert res.allocate(_1).low_gm == Extent(128 * MIB, 512 * MIB)  # holes coalesced again


def test_nvidia_is_homogeneous() -> None:
    res = GpuResources(NV, parent="0000:65:00.0")
    q1, q4, q2 = NV.find_type("A10-1Q"), NV.find_type("A10-4Q"), NV.find_type("A10-2Q")
    assert avail(res, NV)["A10-1Q"] == 24 and avail(res, NV)["A10-24Q"] == 1
    part = res.allocate(q4)
    counts = avail(res, NV)
    assert counts["A10-4Q"] == 5 and all(n == 0 for name, n in counts.items() if name != "A10-4Q")
    assert res.statistics().active_type == "A10-4Q"
    with pytest.raises(Exhausted) as exc:
        res.allocate(q2)
    assert exc.value.reason == "TYPE_MISMATCH" and exc.value.errno == errno.EUSERS
    assert exc.value.metadata["active_type"] == "A10-4Q"
    res.free(part)
    assert avail(res, NV)["A10-2Q"] == 12 and res.statistics().active_type is None
    assert res.allocate(q1).low_gm == Extent(0, 1024 * MIB)


def test_nvidia_framebuffer_exhausted() -> None:
    res = GpuResources(NV)
    q4 = NV.find_type("A10-4Q")
    parts = [res.allocate(q4) for _ in range(6)]
    assert parts[-1].high_gm.size == 0 and parts[-1].fences.size == 0
    with pytest.raises(Exhausted) as exc:
        res.allocate(q4)
    assert exc.value.reason == "FRAMEBUFFER_EXHAUSTED" and exc.value.metadata["resource"] == "framebuffer"


def test_max_instances_caps_a_type() -> None:
    model = dataclasses.replace(NV, aperture_size=48 * 1024 * MIB, gm_size=48 * 1024 * MIB)
    res = GpuResources(model)
    q4 = model.find_type("A10-4Q")
    for _ in range(6):
        res.allocate(q4)
    assert res.available_instances(q4) == 0
    with pytest.raises(Exhausted) as exc:
        res.allocate(q4)
    assert exc.value.reason == "MAX_INSTANCES_REACHED"
    assert res.statistics().low_gm.used == 24 * 1024 * MIB  # rolled back


def test_free_of_a_dead_partition_crashes() -> None:
    res = GpuResources(GVT)
    part = res.allocate(_8)
    res.free(part)
    with pytest.raises(RuntimeError):
        res.free(part)


def test_statistics_counts() -> None:
    res = GpuResources(GVT)
    res.free(res.allocate(_2))
    res.allocate(_2)
    stats = res.statistics()
    assert (stats.allocations_total, stats.frees_total, stats.vgpu_ids_used, stats.vgpu_ids_total) == (
        2,
        1,
        1,
        7,
    )
    assert stats.fences.total == 28 and stats.fences.used == 4


def test_extent_allocator_coalesces_and_detects_double_free() -> None:
    pool = ExtentAllocator(100, 10)
    a, b, c = pool.alloc(3), pool.alloc(3), pool.alloc(4)
    assert (a, b, c) == (Extent(100, 3), Extent(103, 3), Extent(106, 4)) and pool.alloc(1) is None
    assert a is not None and b is not None and c is not None
    pool.free(b)
    pool.free(a)
    assert pool.alloc(6) == Extent(100, 6)
    pool.free(c)
    with pytest.raises(RuntimeError):
        pool.free(c)
    with pytest.raises(RuntimeError):
        pool.free(Extent(0, 1))


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 16)), max_size=60))
def test_extent_allocator_never_overlaps(ops: list[tuple[bool, int]]) -> None:
    pool = ExtentAllocator(0, 64)
    live: list[Extent] = []
    for do_alloc, n in ops:
        if do_alloc or not live:
            extent = pool.alloc(n)
            if extent is None:
                assert pool.largest_free < n
            else:
                live.append(extent)
        else:
            pool.free(live.pop(n % len(live)))
        units = sorted(u for e in live for u in range(e.start, e.end))
        assert len(units) == len(set(units)) and all(0 <= u < 64 for u in units)
        assert pool.free_total == 64 - len(units)
