"""Parent registration checks and live type information (kernel-mdev §1.1)."""

from __future__ import annotations

import pytest

from tests.vgpu_bus.helpers import BIG, PARENT, SMALL, TYPES, make_vendor
from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core.fakes import FakeVendor
from vgpusim.vgpu_bus.core.model import ParentState, TypeInfo, TypeSpec
from vgpusim.vgpu_bus.core.parents import Parent, check_catalogue, live_parent_info, live_type_info


def test_a_valid_catalogue_gives_the_driver_and_defaults_the_name_to_the_sysfs_name() -> None:
    driver, catalogue = check_catalogue(PARENT, TYPES, make_vendor())
    assert driver == "fake"
    assert list(catalogue) == [SMALL, BIG]
    assert catalogue[SMALL].name == "Fake small"
    assert catalogue[BIG].name == "big"
    assert catalogue[BIG].device_api == "vfio-pci"


@pytest.mark.parametrize(
    ("types", "reason"),
    [
        ([], "EMPTY_TYPE_CATALOGUE"),
        ([TypeSpec("nodriver")], "INVALID_TYPE_ID"),
        ([TypeSpec("fake-a"), TypeSpec("other-b")], "MIXED_DRIVERS"),
        ([TypeSpec("fake-a"), TypeSpec("fake-a")], "DUPLICATE_TYPE_ID"),
        ([TypeSpec("fake-a", device_api="pci")], "INVALID_DEVICE_API"),
    ],
)
def test_bad_catalogues_are_refused_at_registration(types: list[TypeSpec], reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_catalogue(PARENT, types, make_vendor())
    assert info.value.reason == reason


def test_the_vendor_ops_table_is_checked_at_registration() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_catalogue(PARENT, TYPES, object())
    assert info.value.reason == "INVALID_VENDOR_OPS"


def test_the_parent_name_is_checked_first() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_catalogue("bad/name", [], object())
    assert info.value.reason == "INVALID_PARENT_NAME"


def _parent(vendor: FakeVendor) -> Parent:
    driver, catalogue = check_catalogue(PARENT, TYPES, vendor)
    return Parent(PARENT, driver, catalogue, vendor, registered_at=5.0)


async def test_available_instances_and_description_are_asked_live(vendor: FakeVendor) -> None:
    parent = _parent(vendor)
    before = await live_type_info(parent, parent.types[BIG])
    assert before == TypeInfo(PARENT, BIG, "big", "vfio-pci", "low_gm_size: 128MB\nweight: 4\n", 2)
    vendor.used = 5  # another type took resources from the shared pool
    after = await live_type_info(parent, parent.types[BIG])
    assert after.available_instances == 0
    assert vendor.count("available_instances") == 2


async def test_parent_info_lists_every_type_sorted_by_type_id(vendor: FakeVendor) -> None:
    parent = _parent(vendor)
    info = await live_parent_info(parent, device_count=3)
    assert (info.name, info.driver, info.state, info.registered_at, info.device_count) == (
        PARENT,
        "fake",
        ParentState.REGISTERED,
        5.0,
        3,
    )
    assert [(t.type_id, t.available_instances) for t in info.types] == [(BIG, 2), (SMALL, 8)]
    only_big = await live_parent_info(parent, device_count=3, type_id=BIG)
    assert [t.type_id for t in only_big.types] == [BIG]


async def test_a_parent_going_away_says_so(vendor: FakeVendor) -> None:
    parent = _parent(vendor)
    parent.going_away = True
    assert (await live_parent_info(parent, 0)).state is ParentState.GOING_AWAY


async def test_a_vendor_answering_a_negative_count_is_a_broken_invariant(vendor: FakeVendor) -> None:
    parent = _parent(vendor)
    vendor.used = vendor.pool + 4
    with pytest.raises(RuntimeError, match="available_instances=-1"):
        await live_type_info(parent, parent.types[BIG])
