"""The ops Protocols: the behaviour every SegmentStore and UnmapListener implementation must have."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, add_device, mapping
from vgpusim.common.errors import NotFound
from vgpusim.common.shm.segment import Segment
from vgpusim.iommu_type2.core import (
    PROT_RW,
    Container,
    InMemorySegmentStore,
    SegmentStore,
    UnmapListener,
)
from vgpusim.iommu_type2.segments import ShmSegmentStore


@pytest.fixture(params=["in-memory", "shm"])
def any_store(request: pytest.FixtureRequest) -> Iterator[SegmentStore]:
    """Every SegmentStore implementation: the core's fake and the service's shm store."""
    if request.param == "in-memory":
        memory = InMemorySegmentStore()
        memory.create("seg", 2 * PAGE)
        yield memory
        return
    shm_dir: Path = request.getfixturevalue("shm_dir")
    Segment.create(shm_dir, "seg", 2 * PAGE).close()
    store = ShmSegmentStore(shm_dir)
    yield store
    store.close()


def test_store_behaviour(any_store: SegmentStore) -> None:
    assert isinstance(any_store, SegmentStore)
    view = any_store.view("seg")
    assert (len(view), view.readonly, view.format) == (2 * PAGE, False, "B")
    view[10:13] = b"abc"
    assert bytes(any_store.view("seg")[10:13]) == b"abc"  # views share the bytes
    with pytest.raises(NotFound) as error:
        any_store.view("missing")
    assert (error.value.reason, error.value.metadata["errno"]) == ("SEGMENT_MISSING", "ENOENT")


async def test_listener_contract(ctr: Container) -> None:
    """After ``notify_unmap`` returns the device holds no pins in the range (and only there)."""
    ctr.map_dma(mapping(0, 2 * MIB))
    listener = add_device(ctr)
    assert isinstance(listener, UnmapListener)
    ctr.pin_pages("vgpu0", 0, 4, PROT_RW)
    ctr.pin_pages("vgpu0", MIB, 4, PROT_RW)
    await listener.notify_unmap(0, MIB)
    assert ctr.pinned_runs("vgpu0", 0, MIB) == ()
    assert ctr.pinned_runs("vgpu0") == ((MIB, 4),)
