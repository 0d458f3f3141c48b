"""The in-memory fakes: the segment store and the unpinning listener."""

from __future__ import annotations

import asyncio

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, add_device, mapping
from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound
from vgpusim.iommu_type2.core import (
    PROT_RW,
    Container,
    InMemorySegmentStore,
    UnmapListener,
    UnpinningListener,
)


def test_in_memory_store_create_and_remove() -> None:
    store = InMemorySegmentStore()
    store.create("a", PAGE)
    with pytest.raises(AlreadyExists):
        store.create("a", PAGE)
    with pytest.raises(InvalidArgument):
        store.create("b", 0)
    store.remove("a")
    store.remove("a")
    with pytest.raises(NotFound):
        store.view("a")


async def test_unpinning_listener_drops_every_reference(ctr: Container) -> None:
    ctr.map_dma(mapping(0, 4 * MIB))
    listener = add_device(ctr)
    assert isinstance(listener, UnmapListener)
    ctr.pin_pages("vgpu0", 0, 512, PROT_RW)
    ctr.pin_pages("vgpu0", 2 * MIB, 512, PROT_RW)
    ctr.pin_pages("vgpu0", 0, 3, PROT_RW)
    await listener.notify_unmap(0, 4 * MIB)
    assert ctr.pinned_runs("vgpu0") == ()
    assert listener.unpinned_pages == 1024
    assert listener.calls == [(0, 4 * MIB)]


async def test_unpinning_listener_modes(ctr: Container) -> None:
    ctr.map_dma(mapping(0, MIB))
    late = add_device(ctr, "late", ignore_calls=1)
    ctr.pin_pages("late", 0, 1, PROT_RW)
    await late.notify_unmap(0, MIB)
    assert ctr.pinned_runs("late") == ((0, 1),)
    await late.notify_unmap(0, MIB)
    assert ctr.pinned_runs("late") == ()
    hung = UnpinningListener(ctr, "late", hang=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await hung.notify_unmap(0, MIB)
