"""The mapper: container creation and lookup, owners, destroy_owner, mapper-wide statistics."""

from __future__ import annotations

import itertools

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, RAM, RAM_SIZE, add_device, mapping
from vgpusim.common.errors import InvalidArgument, NotFound, WrongState
from vgpusim.iommu_type2.core import (
    PROT_RW,
    InMemorySegmentStore,
    IommuMode,
    Mapper,
    parse_mode,
)


def test_create_checks_in_order(mapper: Mapper) -> None:
    cases: list[tuple[tuple[object, object, int], str]] = [
        (("", 0, -1), "BAD_NAME"),
        (("vm", 0, -1), "BAD_MODE"),
        (("vm", 2, -1), "BAD_MODE"),  # a plain int is not a mode: the servicer uses parse_mode
        (("vm", IommuMode.EMULATED, -1), "VALUE_OUT_OF_RANGE"),
    ]
    for args, reason in cases:
        with pytest.raises(InvalidArgument) as error:
            mapper.create_container(*args)  # type: ignore[arg-type]
        assert error.value.reason == reason
    assert mapper.containers() == ()


def test_parse_mode() -> None:
    assert (parse_mode(1), parse_mode(2)) == (IommuMode.EMULATED, IommuMode.HARDWARE)
    for value in (0, 3, -1):
        with pytest.raises(InvalidArgument) as error:
            parse_mode(value)
        assert error.value.reason == "BAD_MODE"


def test_lookup_and_listing(store: InMemorySegmentStore) -> None:
    ids = (f"c{i}" for i in itertools.count())
    mapper = Mapper(store, new_id=lambda: next(ids))
    a = mapper.create_container("vm-a", IommuMode.EMULATED, memlock_limit_bytes=MIB)
    b = mapper.create_container("vm-b", IommuMode.HARDWARE)
    mapper.create_container("vm-a", IommuMode.HARDWARE)
    assert (a.container_id, b.container_id) == ("c0", "c1")
    assert mapper.container("c1") is b
    with pytest.raises(NotFound) as error:
        mapper.container("nope")
    assert (error.value.reason, error.value.metadata["errno"]) == ("UNKNOWN_CONTAINER", "ENODEV")
    assert [info.container_id for info in mapper.containers("vm-a")] == ["c0", "c2"]
    assert mapper.owners() == ("vm-a", "vm-b")
    info = mapper.containers("vm-b")[0]
    assert (info.owner, info.mode, info.devices, info.segments, info.memlock_limit_bytes) == (
        "vm-b",
        IommuMode.HARDWARE,
        (),
        (),
        0,
    )


def test_duplicate_container_ids_are_a_bug(store: InMemorySegmentStore) -> None:
    mapper = Mapper(store, new_id=lambda: "same")
    mapper.create_container("vm", IommuMode.EMULATED)
    with pytest.raises(RuntimeError):
        mapper.create_container("vm", IommuMode.EMULATED)


async def test_destroy_owner_releases_everything_of_that_owner_only(mapper: Mapper) -> None:
    doomed = [mapper.create_container("vm-a", IommuMode.EMULATED) for _ in range(2)]
    survivor = mapper.create_container("vm-b", IommuMode.EMULATED)
    for container in (*doomed, survivor):
        container.register_segment(RAM, RAM_SIZE)
        container.map_dma(mapping(0, MIB))
    add_device(doomed[0], "dev-a", ignore_calls=None)  # never unpins: the owner is gone anyway
    doomed[0].pin_pages("dev-a", 0, 4, PROT_RW)
    add_device(doomed[1], "dev-b")
    doomed[1].pin_pages("dev-b", 0, 4, PROT_RW)
    assert await mapper.destroy_owner("vm-a") == 2 * MIB
    assert mapper.owners() == ("vm-b",)
    assert mapper.device_container("dev-a") is None
    stats = mapper.statistics()
    assert (stats.containers, stats.owners, stats.devices) == (1, 1, 0)
    assert (stats.containers_created_total, stats.containers_destroyed_total) == (3, 2)
    assert (stats.totals.mappings, stats.totals.pinned_pages, stats.totals.maps_total) == (1, 0, 3)
    assert stats.totals.pins_total == 8  # counters of destroyed containers are kept
    assert await mapper.destroy_owner("nobody") == 0


async def test_destroy_container(mapper: Mapper) -> None:
    container = mapper.create_container("vm", IommuMode.EMULATED)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma(mapping(0, PAGE))
    add_device(container, "dev", ignore_calls=None)
    container.pin_pages("dev", 0, 1, PROT_RW)
    with pytest.raises(WrongState):
        await mapper.destroy_container(container.container_id)
    assert mapper.container(container.container_id) is container  # kept on failure
    assert await mapper.destroy_container(container.container_id, force=True) == PAGE
    with pytest.raises(NotFound):
        await mapper.destroy_container(container.container_id)
    assert mapper.statistics().totals.unmaps_total == 1
