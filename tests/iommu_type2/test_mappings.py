"""The sorted mapping table: lookup, insertion, whole-cover checks, walks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.iommu_type2.helpers import PAGE
from vgpusim.common.errors import InvalidArgument
from vgpusim.iommu_type2.core import PROT_RW
from vgpusim.iommu_type2.core.mappings import Mapping, MappingTable


def _table(*spans: tuple[int, int]) -> MappingTable:
    table = MappingTable()
    for first, count in spans:
        index, existing = table.locate(first * PAGE, (first + count) * PAGE)
        assert existing is None
        table.insert(Mapping(first * PAGE, count * PAGE, "ram", 0, PROT_RW), index)
    return table


def test_find_and_locate() -> None:
    table = _table((10, 2), (2, 3), (20, 1))  # inserted out of order
    assert [m.iova // PAGE for m in table] == [2, 10, 20]
    assert table.mapped_bytes == 6 * PAGE
    assert table.find(3 * PAGE + 5) is not None and table.find(5 * PAGE) is None
    assert table.locate(4 * PAGE, 11 * PAGE)[1] is table.find(2 * PAGE)
    assert table.locate(5 * PAGE, 11 * PAGE)[1] is table.find(10 * PAGE)
    assert table.locate(5 * PAGE, 10 * PAGE) == (1, None)


def test_whole_cover() -> None:
    table = _table((2, 3), (10, 2))
    table.check_whole_cover(0, 100 * PAGE)
    table.check_whole_cover(2 * PAGE, 5 * PAGE)
    for start, end in ((3, 5), (2, 4), (0, 11), (11, 12)):
        with pytest.raises(InvalidArgument) as error:
            table.check_whole_cover(start * PAGE, end * PAGE)
        assert error.value.reason == "BISECT"


def test_within_and_remove() -> None:
    table = _table((2, 3), (10, 2), (20, 1))
    assert [m.iova // PAGE for m in table.within(0, 12 * PAGE)] == [2, 10]
    removed = table.remove_within(0, 12 * PAGE)
    assert [m.iova // PAGE for m in removed] == [2, 10]
    assert table.mapped_bytes == PAGE
    last = table.find(20 * PAGE)
    assert last is not None
    table.remove(last)
    assert len(table) == 0
    assert repr(last) == "Mapping(0x14000+0x1000 -> ram@0x0)"


def test_walk_splits_at_edges_and_stops_at_a_hole() -> None:
    table = _table((0, 2), (2, 2), (5, 1))
    chunks = [(m.iova // PAGE if m else None, start, size) for m, start, size in table.walk(PAGE, 6 * PAGE)]
    assert chunks == [(0, PAGE, PAGE), (2, 2 * PAGE, 2 * PAGE), (None, 4 * PAGE, 3 * PAGE)]
    assert list(table.walk(100 * PAGE, 1)) == [(None, 100 * PAGE, 1)]


@given(
    spans=st.lists(st.tuples(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=5))),
    start=st.integers(min_value=0, max_value=70),
    length=st.integers(min_value=1, max_value=30),
)
def test_walk_agrees_with_find(spans: list[tuple[int, int]], start: int, length: int) -> None:
    table = MappingTable()
    for first, count in spans:
        index, existing = table.locate(first * PAGE, (first + count) * PAGE)
        if existing is None:
            table.insert(Mapping(first * PAGE, count * PAGE, "ram", 0, PROT_RW), index)
    pos = start * PAGE
    for mapping, chunk_start, size in table.walk(start * PAGE, length * PAGE):
        assert chunk_start == pos
        assert mapping is table.find(pos)
        pos += size
        if mapping is None:
            break
        assert pos <= mapping.end
    else:
        assert pos == (start + length) * PAGE
