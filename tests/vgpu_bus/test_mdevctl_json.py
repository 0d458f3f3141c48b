"""mdevctl's ``types --dumpjson`` and ``list --dumpjson`` shapes, byte for byte (mdevctl.md §2)."""

from __future__ import annotations

import pytest

from tests.vgpu_bus.helpers import BIG, OTHER_PARENT, PARENT, SMALL, U1, U2, U3
from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core.mdevctl_json import (
    active_entries,
    config_json,
    definition_from_json,
    dumps,
    list_json,
    type_json,
    types_json,
)
from vgpusim.vgpu_bus.core.model import Attr, Definition, DeviceInfo, DeviceState, StartPolicy, TypeInfo

GVT_DESCRIPTION = "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4\n"


def _type(parent: str, type_id: str, available: int, name: str = "", description: str = "") -> TypeInfo:
    return TypeInfo(parent, type_id, name, "vfio-pci", description, available)


def _device(uuid: str, parent: str, type_id: str, state: DeviceState = DeviceState.ACTIVE) -> DeviceInfo:
    return DeviceInfo(uuid, parent, type_id, state, None, (Attr("weight", "4"),), created_at=1.0)


def test_a_type_leaves_out_empty_name_and_description_and_joins_description_lines() -> None:
    assert type_json(_type(PARENT, SMALL, 3)) == {SMALL: {"available_instances": 3, "device_api": "vfio-pci"}}
    assert type_json(_type(PARENT, BIG, 1, "GVTg_V5_4", GVT_DESCRIPTION)) == {
        BIG: {
            "available_instances": 1,
            "device_api": "vfio-pci",
            "name": "GVTg_V5_4",
            "description": "low_gm_size: 128MB, high_gm_size: 512MB, fence: 4, resolution: 1920x1200, "
            "weight: 4",
        }
    }


def test_types_are_grouped_by_sorted_parent_and_sorted_type() -> None:
    types = [_type(OTHER_PARENT, SMALL, 8), _type(PARENT, SMALL, 7, "small"), _type(PARENT, BIG, 1)]
    assert types_json(types) == [
        {
            PARENT: [
                {BIG: {"available_instances": 1, "device_api": "vfio-pci"}},
                {SMALL: {"available_instances": 7, "device_api": "vfio-pci", "name": "small"}},
            ],
            OTHER_PARENT: [{SMALL: {"available_instances": 8, "device_api": "vfio-pci"}}],
        }
    ]
    assert types_json([]) == []


def test_types_text_is_formatted_like_serde_pretty() -> None:
    assert dumps(types_json([_type(PARENT, SMALL, 2, "Fake small")])) == (
        "[\n"
        "  {\n"
        '    "0000:00:02.0": [\n'
        "      {\n"
        '        "fake-small": {\n'
        '          "available_instances": 2,\n'
        '          "device_api": "vfio-pci",\n'
        '          "name": "Fake small"\n'
        "        }\n"
        "      }\n"
        "    ]\n"
        "  }\n"
        "]"
    )


D1 = Definition(U1, PARENT, SMALL, StartPolicy.AUTO, (Attr("weight", "2"), Attr("resolution", "1024x768")))
D2 = Definition(U2, PARENT, BIG)
D3 = Definition(U3, OTHER_PARENT, SMALL)


def test_a_config_object_has_the_definition_file_shape() -> None:
    assert config_json(D1) == {
        "mdev_type": SMALL,
        "start": "auto",
        "attrs": [{"weight": "2"}, {"resolution": "1024x768"}],
    }
    assert config_json(D2) == {"mdev_type": BIG, "start": "manual", "attrs": []}


def test_list_groups_devices_by_sorted_parent_and_sorted_uuid() -> None:
    assert list_json([D3, D2, D1]) == [
        {
            PARENT: [{U1: config_json(D1)}, {U2: config_json(D2)}],
            OTHER_PARENT: [{U3: config_json(D3)}],
        }
    ]
    assert list_json([]) == []


def test_list_of_one_uuid_prints_just_its_config_object() -> None:
    assert list_json([D1], uuid=U1) == config_json(D1)
    assert list_json([], uuid=U1) == []
    defined_twice = Definition(U1, OTHER_PARENT, BIG)
    assert list_json([D1, defined_twice], uuid=U1) == [
        {PARENT: [{U1: config_json(D1)}], OTHER_PARENT: [{U1: config_json(defined_twice)}]}
    ]


def test_list_text_is_formatted_like_serde_pretty() -> None:
    assert dumps(list_json([D2])) == (
        "[\n"
        "  {\n"
        '    "0000:00:02.0": [\n'
        "      {\n"
        '        "22222222-2222-2222-2222-222222222222": {\n'
        '          "mdev_type": "fake-big",\n'
        '          "start": "manual",\n'
        '          "attrs": []\n'
        "        }\n"
        "      }\n"
        "    ]\n"
        "  }\n"
        "]"
    )


def test_active_devices_take_start_from_a_definition_on_the_same_parent_and_attrs_from_the_device() -> None:
    devices = [
        _device(U1, PARENT, SMALL),
        _device(U2, PARENT, BIG),
        _device(U3, OTHER_PARENT, SMALL, DeviceState.CREATING),
    ]
    definitions = [D1, Definition(U2, OTHER_PARENT, BIG, StartPolicy.AUTO)]
    assert active_entries(devices, definitions) == (
        Definition(U1, PARENT, SMALL, StartPolicy.AUTO, (Attr("weight", "4"),)),
        Definition(U2, PARENT, BIG, StartPolicy.MANUAL, (Attr("weight", "4"),)),
    )


def test_definition_files_read_back_into_definitions() -> None:
    assert definition_from_json(U1, PARENT, config_json(D1)) == D1
    assert definition_from_json(U2, PARENT, {"mdev_type": BIG, "start": "weird"}) == D2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "invalid json"),
        ({"start": "auto"}, "invalid json"),
        ({"mdev_type": SMALL}, "invalid json"),
        ({"mdev_type": 3, "start": "auto"}, "invalid json"),
        ({"mdev_type": SMALL, "start": "auto", "attrs": {"a": "1"}}, "attributes field is not an array"),
        (
            {"mdev_type": SMALL, "start": "auto", "attrs": ["a"]},
            "invalid JSON format for attribute: not an object",
        ),
        (
            {"mdev_type": SMALL, "start": "auto", "attrs": [{"a": "1", "b": "2"}]},
            "invalid JSON format for attribute: too many fields",
        ),
    ],
)
def test_malformed_definition_files_give_mdevctls_errors(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        definition_from_json(U1, PARENT, value)
    assert (info.value.reason, info.value.message) == ("INVALID_JSON", message)
