"""GraphicsMemory: the fake's page table, run coalescing and DMA faults."""

from __future__ import annotations

import errno

import pytest

from vgpusim.common.errors import PermissionDenied
from vgpusim.gfx_host.core.engine.memory import (
    PAGE_SIZE,
    Access,
    DmaFault,
    FakeGraphicsMemory,
    GmPartition,
    GmRange,
    GraphicsMemory,
    PartitionLike,
)

LOW, HIGH = GmRange(0x10_0000, 16 * PAGE_SIZE), GmRange(0x80_0000, 16 * PAGE_SIZE)
PART = GmPartition(LOW, HIGH)


def fresh(**kw: bool) -> FakeGraphicsMemory:
    return FakeGraphicsMemory(PART, 64 * PAGE_SIZE, **kw)


def test_fake_satisfies_the_protocols() -> None:
    mem = fresh()
    assert isinstance(mem, GraphicsMemory)
    assert isinstance(mem.partition, PartitionLike)


def test_partition_ranges() -> None:
    assert PART.contains(LOW.base, LOW.size)
    assert not PART.contains(LOW.base, LOW.size + 1)
    assert not PART.contains(LOW.end - 4, 8)
    assert PART.contains(HIGH.base + 8, 0)
    assert not PART.contains(HIGH.end, 0)
    assert not PART.contains(LOW.base - 1, 1)
    assert PART.span_end(LOW.base + 5) == LOW.end
    assert PART.span_end(HIGH.end - 1) == HIGH.end
    assert PART.span_end(HIGH.end) is None


def test_contiguous_mapping_translates_to_one_run() -> None:
    mem = fresh()
    mem.map_partition()
    runs = mem.translate(LOW.base + 100, 10 * PAGE_SIZE, write=True)
    assert [len(r) for r in runs] == [10 * PAGE_SIZE]
    runs[0][:4] = b"abcd"
    assert mem.host[100:104] == b"abcd"
    assert mem.read(LOW.base + 100, 4) == b"abcd"


def test_scattered_pages_translate_to_one_run_each() -> None:
    mem = fresh()
    mem.map(LOW.base, 10 * PAGE_SIZE, PAGE_SIZE)
    mem.map(LOW.base + PAGE_SIZE, 3 * PAGE_SIZE, 2 * PAGE_SIZE)
    mem.map(LOW.base + 3 * PAGE_SIZE, 5 * PAGE_SIZE, PAGE_SIZE)  # continues the previous host run
    runs = mem.translate(LOW.base + 8, 4 * PAGE_SIZE - 16, write=False)
    assert [len(r) for r in runs] == [PAGE_SIZE - 8, 3 * PAGE_SIZE - 8]
    mem.write(LOW.base + PAGE_SIZE - 2, b"wxyz")
    assert mem.host[11 * PAGE_SIZE - 2 : 11 * PAGE_SIZE] == b"wx"
    assert mem.host[3 * PAGE_SIZE : 3 * PAGE_SIZE + 2] == b"yz"


def test_zero_size_translation() -> None:
    mem = fresh()
    assert mem.translate(LOW.base, 0, write=True) == []
    with pytest.raises(DmaFault):
        mem.translate(LOW.end, 0, write=False)


@pytest.mark.parametrize(
    ("addr", "size", "write", "what"),
    [
        (LOW.base - PAGE_SIZE, 16, False, "outside"),
        (LOW.end - 8, 16, False, "outside"),
        (HIGH.end, 4, True, "outside"),
        (0, 4, False, "outside"),
        (LOW.base, -1, False, "outside"),
        (HIGH.base, 4, False, "unmapped"),
        (LOW.base + 2 * PAGE_SIZE - 4, 8, False, "unmapped"),
        (LOW.base + 4 * PAGE_SIZE, 4, True, "read-only"),
    ],
)
def test_dma_faults(addr: int, size: int, write: bool, what: str) -> None:
    mem = fresh()
    mem.map(LOW.base, 0, 2 * PAGE_SIZE)
    mem.unmap(LOW.base + PAGE_SIZE, PAGE_SIZE)
    mem.map(LOW.base + PAGE_SIZE, PAGE_SIZE, PAGE_SIZE)
    mem.unmap(LOW.base + 2 * PAGE_SIZE, PAGE_SIZE)
    mem.map(LOW.base + 4 * PAGE_SIZE, 8 * PAGE_SIZE, PAGE_SIZE, writable=False)
    with pytest.raises(DmaFault) as err:
        mem.translate(addr, size, write=write)
    fault = err.value
    assert isinstance(fault, PermissionDenied)
    assert fault.reason == "DMA_FAULT"
    assert fault.errno == errno.EFAULT
    assert fault.metadata["errno"] == "EFAULT"
    assert what.split("-")[0] in fault.message


def test_read_only_pages_are_readable() -> None:
    mem = fresh()
    mem.map(HIGH.base, 0, PAGE_SIZE, writable=False)
    assert len(mem.translate(HIGH.base, PAGE_SIZE, write=False)) == 1


def test_unmap_splits_a_run() -> None:
    mem = fresh()
    mem.map_partition()
    mem.unmap(LOW.base + 2 * PAGE_SIZE, PAGE_SIZE)
    assert len(mem.translate(LOW.base, 2 * PAGE_SIZE, write=False)) == 1
    with pytest.raises(DmaFault):
        mem.translate(LOW.base, 3 * PAGE_SIZE, write=False)
    assert mem.host_offset(LOW.base + 3 * PAGE_SIZE + 5) == 3 * PAGE_SIZE + 5
    with pytest.raises(DmaFault):
        mem.host_offset(LOW.base + 2 * PAGE_SIZE)


def test_records_successful_translations_only() -> None:
    mem = fresh(record=True)
    mem.map_partition()
    mem.translate(LOW.base, 8, write=True)
    with pytest.raises(DmaFault):
        mem.translate(0, 8, write=False)
    mem.read(LOW.base, 4)  # conveniences are not recorded
    assert mem.accesses == [Access(LOW.base, 8, True)]


@pytest.mark.parametrize(
    ("gm", "host", "size"), [(1, 0, PAGE_SIZE), (0, 0, 0), (0, 64 * PAGE_SIZE, PAGE_SIZE)]
)
def test_map_validates(gm: int, host: int, size: int) -> None:
    with pytest.raises(ValueError, match=r"page aligned|beyond"):
        fresh().map(gm, host, size)
