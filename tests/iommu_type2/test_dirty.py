"""Page bitmaps, and dirty page tracking (§2.6): what is dirty, layout, rounds, whole-mapping ranges."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.iommu_type2.helpers import MIB, PAGE, add_device, mapping
from vgpusim.common.errors import InvalidArgument
from vgpusim.iommu_type2.core import PROT_RW, Container
from vgpusim.iommu_type2.core.dirty import (
    bitmap_bytes,
    clear,
    compose,
    new_bitmap,
    runs,
    set_bits,
    set_pages,
)


def _bits(bitmap: bytes | bytearray) -> set[int]:
    value = int.from_bytes(bitmap, "little")
    return {i for i in range(len(bitmap) * 8) if value >> i & 1}


@pytest.fixture
def tracked(ctr: Container) -> Container:
    """Mappings of 3 pages at 0 and of 2 pages at page 67 (not byte aligned), tracking on."""
    ctr.map_dma_batch([mapping(0, 3 * PAGE), mapping(67 * PAGE, 2 * PAGE)])
    add_device(ctr)
    ctr.set_dirty_tracking(True)
    return ctr


def test_tracking_must_be_on(ctr: Container) -> None:
    ctr.map_dma(mapping(0, PAGE))
    ctr.set_dirty_tracking(False)  # STOP while off: a no-op
    with pytest.raises(InvalidArgument) as error:
        ctr.get_dirty_bitmap(0, PAGE, PAGE)
    assert error.value.reason == "DIRTY_TRACKING_OFF"
    ctr.set_dirty_tracking(True)
    ctr.set_dirty_tracking(True)  # START while on: a no-op
    assert ctr.info().dirty_tracking
    assert ctr.get_dirty_bitmap(0, PAGE, PAGE) == bytes(8)


def test_layout_bit_i_is_page_iova_plus_i(tracked: Container) -> None:
    tracked.pin_pages("vgpu0", PAGE, 1, PROT_RW)
    tracked.dma_write("vgpu0", 68 * PAGE - 1, b"ab")  # touches pages 67 and 68
    bitmap = tracked.get_dirty_bitmap(0, 80 * PAGE, PAGE)
    assert len(bitmap) == 16  # 80 bits in whole u64 words
    assert _bits(bitmap) == {1, 67, 68}
    # a range starting at the second mapping: bits are relative to the range
    tracked.dma_write("vgpu0", 67 * PAGE, b"x")
    assert _bits(tracked.get_dirty_bitmap(67 * PAGE, 2 * PAGE, PAGE)) == {0}


def test_pinned_pages_stay_dirty_every_round(tracked: Container) -> None:
    tracked.pin_pages("vgpu0", 0, 2, PROT_RW)
    tracked.dma_write("vgpu0", 2 * PAGE, b"x")
    assert _bits(tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)) == {0, 1, 2}
    assert _bits(tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)) == {0, 1}  # the write is reported once
    tracked.unpin_pages("vgpu0", 0, 1)
    assert _bits(tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)) == {0, 1}  # re-populated last round
    assert _bits(tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)) == {1}
    tracked.unpin_pages("vgpu0", PAGE, 1)
    tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)
    assert _bits(tracked.get_dirty_bitmap(0, 3 * PAGE, PAGE)) == set()
    assert tracked.statistics().dirty_pages_reported_total == 3 + 2 + 2 + 1 + 1


def test_start_populates_with_the_pinned_pages(ctr: Container) -> None:
    ctr.map_dma(mapping(0, 4 * PAGE))
    add_device(ctr)
    ctr.pin_pages("vgpu0", 2 * PAGE, 1, PROT_RW)
    ctr.dma_write("vgpu0", 0, b"x")  # tracking off: not recorded
    ctr.set_dirty_tracking(True)
    assert _bits(ctr.get_dirty_bitmap(0, 4 * PAGE, PAGE)) == {2}
    ctr.dma_write("vgpu0", 0, b"x")
    ctr.set_dirty_tracking(False)  # STOP frees the bitmaps
    ctr.set_dirty_tracking(True)
    assert _bits(ctr.get_dirty_bitmap(0, 4 * PAGE, PAGE)) == {2}


def test_reads_do_not_dirty_and_write_translations_do(tracked: Container) -> None:
    tracked.dma_read("vgpu0", 0, 3 * PAGE)
    tracked.translate("vgpu0", 0, PAGE, False)
    tracked.translate("vgpu0", 67 * PAGE + 10, PAGE, True)
    assert _bits(tracked.get_dirty_bitmap(0, 69 * PAGE, PAGE)) == {67, 68}


def test_new_mappings_are_tracked(tracked: Container) -> None:
    tracked.map_dma(mapping(MIB, PAGE))
    tracked.dma_write("vgpu0", MIB, b"x")
    assert _bits(tracked.get_dirty_bitmap(MIB, PAGE, PAGE)) == {0}


def test_range_must_cover_whole_mappings(tracked: Container) -> None:
    for iova, size in ((0, 2 * PAGE), (PAGE, 2 * PAGE), (0, 68 * PAGE)):
        with pytest.raises(InvalidArgument) as error:
            tracked.get_dirty_bitmap(iova, size, PAGE)
        assert error.value.reason == "BISECT"
    assert tracked.get_dirty_bitmap(3 * PAGE, 64 * PAGE, PAGE) == bytes(8)  # only a hole: fine


async def test_unmap_returns_the_bitmap_of_the_range(tracked: Container) -> None:
    tracked.pin_pages("vgpu0", 67 * PAGE, 1, PROT_RW)  # unpinned by the notification
    tracked.dma_write("vgpu0", PAGE, b"x")
    result = await tracked.unmap_dma(0, 69 * PAGE, dirty_pgsize=PAGE)
    assert result.unmapped_bytes == 5 * PAGE
    assert result.dirty_bitmap is not None
    assert len(result.dirty_bitmap) == 16
    assert _bits(result.dirty_bitmap) == {1, 67}


# -- page bitmaps --------------------------------------------------------------------------------


def test_sizes() -> None:
    assert [bitmap_bytes(n) for n in (0, 1, 64, 65, 128)] == [0, 8, 8, 16, 16]
    assert [len(new_bitmap(n)) for n in (1, 8, 9)] == [1, 1, 2]


@given(
    npages=st.integers(min_value=1, max_value=300),
    ranges=st.lists(
        st.tuples(st.integers(min_value=0, max_value=299), st.integers(min_value=0, max_value=80))
    ),
)
def test_set_bits_matches_a_set_model(npages: int, ranges: list[tuple[int, int]]) -> None:
    buf = new_bitmap(npages)
    model: set[int] = set()
    for first, count in ranges:
        count = min(count, npages - first) if first < npages else 0
        set_bits(buf, first, count)
        model.update(range(first, first + count))
        assert _bits(buf) == model


def test_set_pages_and_clear() -> None:
    buf = new_bitmap(20)
    set_pages(buf, [0, 7, 8, 19])
    assert _bits(buf) == {0, 7, 8, 19}
    clear(buf)
    assert _bits(buf) == set()


def test_compose_shifts_parts_into_place() -> None:
    a, b = new_bitmap(3), new_bitmap(2)
    set_bits(a, 0, 3)
    set_bits(b, 1, 1)
    data, count = compose(80, [(0, a), (67, b)])
    assert len(data) == 16
    assert _bits(data) == {0, 1, 2, 68}
    assert count == 4
    assert compose(1, []) == (bytes(8), 0)


@given(st.sets(st.integers(min_value=0, max_value=200)))
def test_runs_cover_exactly_the_pages(pages: set[int]) -> None:
    found = list(runs(sorted(pages)))
    covered = [p for first, count in found for p in range(first, first + count)]
    assert covered == sorted(pages)
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(found))
