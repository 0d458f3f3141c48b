"""The GTT window and its shadow: partition checks, partial writes, batched pins, refcounts,
scratch page, unmap notification, translation and reset."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gfx_host.helpers import MIB, gtt_offset, open_vgpu, pte
from vgpusim.common.errors import Unavailable, VgpusimError
from vgpusim.gfx_host.core.fakes import RAM_SEGMENT, FakePinner
from vgpusim.gfx_host.core.gtt import GttFault, HostSpan, page_runs
from vgpusim.gfx_host.core.registers import NO_EFFECT, WriteEffect
from vgpusim.gfx_host.core.vgpu import Vgpu

LOW = 128 * MIB  # the _4 vGPU's low GM: [128 MiB, 256 MiB)
HIGH = (1024 + 384) * MIB  # its high GM: [1408 MiB, 1920 MiB)


def map_pages(vgpu: Vgpu, gm_addr: int, gfns: list[int | None]) -> None:
    """Program one GTT entry per page from ``gm_addr`` (None = not present)."""
    for i, gfn in enumerate(gfns):
        value = pte(0, present=False) if gfn is None else pte(gfn)
        vgpu.mmio_write(gtt_offset(gm_addr + i * 4096), 8, value)


def pin_calls(pinner: FakePinner) -> list[tuple[int, int]]:
    return [(iova >> 12, n) for kind, iova, n in pinner.calls if kind == "pin"]


def test_page_runs() -> None:
    assert page_runs([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 2), (10, 1)]
    assert page_runs(list(range(5)), limit=2) == [(0, 2), (2, 2), (4, 1)]


def test_entries_outside_the_partition_are_ignored() -> None:
    vgpu, _, _ = open_vgpu()
    for gm in (LOW - 4096, LOW + 128 * MIB, HIGH - 4096, HIGH + 512 * MIB, 0):
        assert vgpu.mmio_write(gtt_offset(gm), 8, pte(1)) == NO_EFFECT
        assert vgpu.mmio_read(gtt_offset(gm), 8) == 0
    assert vgpu.mmio_write(gtt_offset(LOW), 8, pte(1)) == WriteEffect(gtt_updated=True)
    assert vgpu.mmio_write(gtt_offset(HIGH + 512 * MIB - 4096), 8, pte(2)) == WriteEffect(gtt_updated=True)
    stats = vgpu.gtt.statistics()
    assert (stats.writes_ignored_total, stats.entries_pending, stats.writes_total) == (5, 2, 7)


def test_partial_writes_are_staged_until_both_halves() -> None:
    vgpu, _, _ = open_vgpu()
    off = gtt_offset(LOW)
    value = pte(0x12345) | 0xAB_0000_0000_0000
    assert vgpu.mmio_write(off + 4, 4, value >> 32) == NO_EFFECT
    assert vgpu.gtt.pending_count == 0 and vgpu.mmio_read(off + 4, 4) == value >> 32
    assert vgpu.mmio_write(off, 4, value & 0xFFFF_FFFF) == WriteEffect(gtt_updated=True)
    assert vgpu.mmio_read(off, 8) == value and vgpu.gtt.pending_count == 1
    vgpu.mmio_write(off, 4, 0)  # a half again, then a full write clears the staging
    assert vgpu.mmio_write(off, 8, pte(7)) == WriteEffect(gtt_updated=True)
    assert vgpu.mmio_write(off + 4, 4, 0) == NO_EFFECT
    assert vgpu.mmio_write(off, 2, 0) == NO_EFFECT  # 1- and 2-byte writes are ignored
    assert vgpu.gtt.statistics().partial_writes_total == 3


async def test_pins_are_batched_into_runs_of_at_most_512() -> None:
    vgpu, pinner, _ = open_vgpu()
    map_pages(vgpu, LOW, list(range(0x100, 0x100 + 1200)))
    assert await vgpu.gtt.apply_pending() == 1200
    assert pin_calls(pinner) == [(0x100, 512), (0x300, 512), (0x500, 176)]
    assert pinner.pinned == set(range(0x100, 0x100 + 1200)) and max(pinner.refs.values()) == 1
    stats = vgpu.gtt.statistics()
    assert (stats.pin_calls_total, stats.pages_pinned_total, stats.entries_shadowed) == (3, 1200, 1200)
    assert await vgpu.gtt.apply_pending() == 0 and len(pinner.calls) == 3


async def test_a_shared_page_is_pinned_once_and_released_with_its_last_entry() -> None:
    vgpu, pinner, _ = open_vgpu()
    map_pages(vgpu, LOW, [5, 6, 7, 20, 5])
    await vgpu.gtt.apply_pending()
    assert pin_calls(pinner) == [(5, 3), (20, 1)] and pinner.refs[5] == 1
    map_pages(vgpu, LOW, [9])  # entry 0 leaves gfn 5; entry 4 still uses it
    await vgpu.gtt.apply_pending()
    assert 5 in pinner.pinned and 9 in pinner.pinned
    map_pages(vgpu, LOW + 4 * 4096, [None])  # the last user of gfn 5 goes away
    await vgpu.gtt.apply_pending()
    assert 5 not in pinner.pinned and ("unpin", 5 << 12, 1) in pinner.calls
    map_pages(vgpu, LOW + 4096, [6])  # rewriting the same page: no pin, no unpin
    calls = len(pinner.calls)
    await vgpu.gtt.apply_pending()
    assert len(pinner.calls) == calls and pinner.pinned == {6, 7, 9, 20}


async def test_bad_pages_go_to_scratch_and_good_neighbours_stay_pinned() -> None:
    vgpu, pinner, _ = open_vgpu()
    pinner.fail_gfns = {0x23}
    beyond_ram = (16 * MIB) >> 12
    map_pages(vgpu, LOW, [*range(0x20, 0x28), beyond_ram])
    await vgpu.gtt.apply_pending()
    assert pinner.pinned == set(range(0x20, 0x28)) - {0x23}
    stats = vgpu.gtt.statistics()
    assert (stats.entries_scratch, stats.entries_shadowed, stats.pin_failures_total) == (2, 7, 2)
    assert stats.scratch_mappings_total == 2
    with pytest.raises(GttFault) as exc:
        vgpu.gtt.translate(LOW + 3 * 4096, 16)
    assert exc.value.reason == "GTT_SCRATCH_PAGE" and exc.value.errno == 14  # EFAULT
    assert vgpu.gtt.translate(LOW + 4 * 4096, 4096) == (HostSpan(RAM_SEGMENT, 0x24 << 12, 4096),)


async def test_a_peer_failure_fails_the_whole_run_without_splitting() -> None:
    vgpu, pinner, _ = open_vgpu()
    pinner.fail_all = Unavailable("iommu_type2 restarting")
    map_pages(vgpu, LOW, list(range(64)))
    await vgpu.gtt.apply_pending()
    assert len(pin_calls(pinner)) == 1 and vgpu.gtt.statistics().entries_scratch == 64


async def test_unmap_notify_tears_down_and_unpins_before_returning() -> None:
    vgpu, pinner, _ = open_vgpu()
    map_pages(vgpu, LOW, list(range(16)))
    await vgpu.gtt.apply_pending()
    unpinned = await vgpu.gtt.unmap_notify(4 * 4096, 8 * 4096)
    assert unpinned == [g << 12 for g in range(4, 12)]
    assert pinner.pinned == set(range(4)) | set(range(12, 16))
    with pytest.raises(GttFault, match="scratch"):
        vgpu.gtt.translate(LOW + 5 * 4096, 1)
    assert vgpu.gtt.translate(LOW, 4 * 4096) == (HostSpan(RAM_SEGMENT, 0, 4 * 4096),)
    assert await vgpu.gtt.unmap_notify(1 << 30, 4096) == []
    assert vgpu.gtt.statistics().unmap_notifies_total == 2


async def test_unmap_racing_with_in_flight_pins_leaves_no_stale_pin() -> None:
    vgpu, pinner, _ = open_vgpu()
    pinner.gate = asyncio.Event()
    map_pages(vgpu, LOW, list(range(8)))
    task = asyncio.create_task(vgpu.gtt.apply_pending())
    await asyncio.sleep(0)
    assert pinner.calls == [("pin", 0, 8)]
    assert await vgpu.gtt.unmap_notify(0, 4 * 4096) == []  # nothing of ours pinned yet
    pinner.unmap(0, 4 * 4096)
    pinner.gate.set()
    await task
    assert pinner.pinned == set(range(4, 8))  # the raced pins were given back
    assert vgpu.gtt.statistics().entries_scratch == 4


def test_translate_coalesces_contiguous_host_pages() -> None:
    vgpu, _, _ = open_vgpu()
    map_pages(vgpu, LOW, [10, 11, 12, 40, 41])
    asyncio.run(vgpu.gtt.apply_pending())
    spans = vgpu.gtt.translate(LOW + 100, 5 * 4096 - 200)
    assert spans == (
        HostSpan(RAM_SEGMENT, (10 << 12) + 100, 3 * 4096 - 100),
        HostSpan(RAM_SEGMENT, 40 << 12, 2 * 4096 - 100),
    )
    assert vgpu.gtt.translate(LOW + 100, 5 * 4096 - 200) is spans  # cached
    map_pages(vgpu, LOW, [13])
    asyncio.run(vgpu.gtt.apply_pending())
    assert vgpu.gtt.translate(LOW, 4096) == (HostSpan(RAM_SEGMENT, 13 << 12, 4096),)  # cache dropped


@pytest.mark.parametrize(
    ("gm", "size", "reason"),
    [
        (LOW - 4096, 8192, "GTT_OUT_OF_PARTITION"),  # straddles the start of the partition
        (HIGH - 4096, 4096, "GTT_OUT_OF_PARTITION"),
        (0, 4096, "GTT_OUT_OF_PARTITION"),
        (LOW, 0, "GTT_OUT_OF_PARTITION"),
        (LOW + 5 * 4096, 4096, "GTT_NOT_PRESENT"),
        (LOW + 2 * 4096, 3 * 4096, "GTT_NOT_PRESENT"),  # the last page is missing
    ],
)
def test_translate_faults(gm: int, size: int, reason: str) -> None:
    vgpu, _, _ = open_vgpu()
    map_pages(vgpu, LOW, [1, 2, 3, None])
    asyncio.run(vgpu.gtt.apply_pending())
    with pytest.raises(GttFault) as exc:
        vgpu.gtt.translate(gm, size)
    assert exc.value.reason == reason and exc.value.metadata["gm_addr"] == hex(gm)
    assert vgpu.gtt.faults()[-1].reason == reason and vgpu.gtt.statistics().faults_total == 1


async def test_reset_releases_everything() -> None:
    vgpu, pinner, _ = open_vgpu()
    map_pages(vgpu, LOW, list(range(600)))
    map_pages(vgpu, HIGH, [1000])
    await vgpu.gtt.apply_pending()
    map_pages(vgpu, LOW + 600 * 4096, [700])  # pending, not applied
    await vgpu.gtt.reset()
    assert pinner.pinned == set() and vgpu.mmio_read(gtt_offset(LOW), 8) == 0
    stats = vgpu.gtt.statistics()
    assert (stats.entries_shadowed, stats.entries_pending, stats.pages_pinned) == (0, 0, 0)
    assert stats.pages_unpinned_total == 601 and stats.unpin_calls_total == 3


async def test_unpin_errors_are_counted_not_raised() -> None:
    class BrokenUnpin(FakePinner):
        async def unpin_pages(self, iova: int, npage: int) -> None:
            raise VgpusimError("container gone")

    vgpu, _, memory = open_vgpu()
    vgpu.gtt.pinner = BrokenUnpin(memory)
    map_pages(vgpu, LOW, [1, 2])
    await vgpu.gtt.apply_pending()
    await vgpu.gtt.reset()
    assert vgpu.gtt.statistics().unpin_errors_total == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.tuples(st.integers(0, 15), st.one_of(st.none(), st.integers(0, 20))), st.just("apply")),
        max_size=40,
    )
)
def test_pins_always_match_the_shadow(ops: list[tuple[int, int | None] | str]) -> None:
    vgpu, pinner, _ = open_vgpu()
    expected: dict[int, int | None] = {}
    for op in [*ops, "apply"]:
        if op == "apply":
            asyncio.run(vgpu.gtt.apply_pending())
            live = {g for g in expected.values() if g is not None}
            assert pinner.pinned == live and all(n <= 1 for n in pinner.refs.values())
            for index, gfn in expected.items():
                if gfn is not None:
                    assert vgpu.gtt.translate(LOW + index * 4096, 8)[0].offset == gfn << 12
        else:
            assert isinstance(op, tuple)
            index, gfn = op
            map_pages(vgpu, LOW + index * 4096, [gfn])
            expected[index] = gfn


async def test_reset_waits_for_pins_in_flight() -> None:
    vgpu, pinner, _ = open_vgpu()
    pinner.gate = asyncio.Event()
    map_pages(vgpu, LOW, list(range(4)))
    apply = asyncio.create_task(vgpu.gtt.apply_pending())
    await asyncio.sleep(0)
    reset = asyncio.create_task(vgpu.gtt.reset())
    await asyncio.sleep(0)
    assert not reset.done()
    pinner.gate.set()
    await apply
    await reset
    assert pinner.pinned == set() and vgpu.gtt.statistics().entries_shadowed == 0
