"""Behaviour suite of the ``Pinner`` ops table (iommu_type2 PinPages/UnpinPages semantics),
run against every implementation (today the in-memory fake; the gRPC client joins later)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vgpusim.common.errors import InvalidArgument, TooBig
from vgpusim.gfx_host.core.fakes import RAM_SEGMENT, FakeHostMemory, FakePinner
from vgpusim.gfx_host.core.gtt import HostPage, Pinner

IMPLEMENTATIONS: list[Callable[[], FakePinner]] = [lambda: FakePinner(ram_size=1 << 20)]


@pytest.fixture(params=IMPLEMENTATIONS)
def pinner(request: pytest.FixtureRequest) -> FakePinner:
    factory: Callable[[], FakePinner] = request.param
    return factory()


async def test_pin_returns_one_host_page_per_page(pinner: Pinner) -> None:
    pages = await pinner.pin_pages(0x3000, 3)
    assert list(pages) == [HostPage(RAM_SEGMENT, 0x3000 + i * 4096) for i in range(3)]


async def test_limits(pinner: Pinner) -> None:
    with pytest.raises(TooBig):
        await pinner.pin_pages(0, 513)
    with pytest.raises(TooBig):
        await pinner.pin_pages(0, 0)
    with pytest.raises(InvalidArgument):
        await pinner.pin_pages(0x800, 1)


async def test_unmapped_pages_fail_the_whole_call(pinner: FakePinner) -> None:
    with pytest.raises(InvalidArgument):
        await pinner.pin_pages((1 << 20) - 4096, 2)
    assert pinner.pinned == set()


async def test_refcounts(pinner: FakePinner) -> None:
    await pinner.pin_pages(0, 2)
    await pinner.pin_pages(4096, 1)
    await pinner.unpin_pages(0, 2)
    assert pinner.pinned == {1}
    await pinner.unpin_pages(4096, 1)
    await pinner.unpin_pages(8192, 1)  # never pinned: no-op
    assert pinner.pinned == set()


def test_host_memory_views_are_writable() -> None:
    memory = FakeHostMemory({"seg": 8192})
    memory.view("seg")[10:12] = b"hi"
    assert memory.segments["seg"][10:12] == b"hi" and memory.view("seg") is memory.view("seg")
