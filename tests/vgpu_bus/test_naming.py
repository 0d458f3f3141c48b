"""Validation of UUIDs, parent names, type-ids, owners and attributes (kernel-mdev §1.1, §1.2)."""

from __future__ import annotations

import uuid as uuid_mod

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core.model import Attr
from vgpusim.vgpu_bus.core.naming import (
    check_attrs,
    check_device_api,
    check_owner,
    check_parent_name,
    check_type_id,
    parse_uuid,
    split_type_id,
)

CANONICAL = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"


def test_uuid_is_reported_lower_case_whatever_the_input_case() -> None:
    assert parse_uuid(CANONICAL.upper()) == CANONICAL
    assert parse_uuid("83B8f4F2-509F-382f-3C1E-E6BFE0FA1001") == CANONICAL


def test_uuid_may_carry_one_trailing_newline_like_a_sysfs_write() -> None:
    assert parse_uuid(CANONICAL + "\n") == CANONICAL


@pytest.mark.parametrize(
    "text",
    [
        "",
        CANONICAL[:-1],  # 35 bytes
        CANONICAL + "0",  # 37 bytes, not a newline
        CANONICAL + "\n\n",  # 38 bytes
        " " + CANONICAL,
        CANONICAL.replace("-", ""),  # 32 hex digits, no dashes
        "{" + CANONICAL[1:-1] + "}",
        "83b8f4f2_509f_382f_3c1e_e6bfe0fa1001",
        "83b8f4f2-509f-382f-3c1e-e6bfe0fa100g",  # not hex
        "83b8f4f2-509f-382f-3c1e0e6bfe0fa1001",  # dash moved
        "83b8f4f2-509f-382f-3c1e-e6bfe0fa100\u00e9",  # 37 bytes in UTF-8
        "\uff18" * 36,  # full-width digits: 36 characters, 108 bytes
    ],
)
def test_malformed_uuids_are_rejected_with_invalid_uuid(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_uuid(text)
    assert info.value.reason == "INVALID_UUID"
    assert info.value.metadata["errno"] == "EINVAL"


@given(st.uuids())
def test_every_uuid_round_trips_in_any_case(value: uuid_mod.UUID) -> None:
    text = str(value)
    assert parse_uuid(text.upper()) == text
    assert parse_uuid(text + "\n") == text


def _canonical(text: str) -> str | None:
    """The oracle: Python's own UUID parser, accepting only what prints back identically."""
    candidate = text.removesuffix("\n")
    try:
        printed = str(uuid_mod.UUID(candidate))
    except ValueError:
        return None
    return printed if printed == candidate.lower() else None


@given(st.text(max_size=40) | st.uuids().map(str).map(str.upper))
def test_arbitrary_text_is_either_a_canonical_uuid_or_invalid_uuid(text: str) -> None:
    expected = _canonical(text)
    if expected is not None:
        assert parse_uuid(text) == expected
    else:
        with pytest.raises(InvalidArgument) as info:
            parse_uuid(text)
        assert info.value.reason == "INVALID_UUID"


@pytest.mark.parametrize(
    ("type_id", "driver", "name"),
    [
        ("i915-GVTg_V5_4", "i915", "GVTg_V5_4"),
        ("mtty-1", "mtty", "1"),
        ("nvidia-63", "nvidia", "63"),
        ("vfio_ap-passthrough", "vfio_ap", "passthrough"),
        ("mbochs-small-2", "mbochs", "small-2"),
    ],
)
def test_type_ids_split_into_driver_and_type(type_id: str, driver: str, name: str) -> None:
    assert split_type_id(type_id) == (driver, name)
    assert check_type_id(type_id) == type_id


@pytest.mark.parametrize(
    "type_id", ["", "i915", "-GVTg", "i915-", "i915-GVT g", "i915/x-y", "i915-a/b", "a" * 70 + "-x"]
)
def test_malformed_type_ids_are_rejected(type_id: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_type_id(type_id)
    assert info.value.reason == "INVALID_TYPE_ID"


@pytest.mark.parametrize("parent", ["0000:00:02.0", "mtty", "card0", "vgpu-parent_1"])
def test_parent_names_that_can_name_a_device_are_accepted(parent: str) -> None:
    assert check_parent_name(parent) == parent


@pytest.mark.parametrize("parent", ["", ".", "..", "a/b", "has space", "-dash-first", "x" * 129])
def test_parent_names_that_cannot_name_a_directory_are_rejected(parent: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_parent_name(parent)
    assert info.value.reason == "INVALID_PARENT_NAME"


def test_device_api_must_be_a_vfio_api_string() -> None:
    assert check_device_api("vfio-pci") == "vfio-pci"
    with pytest.raises(InvalidArgument) as info:
        check_device_api("pci")
    assert info.value.reason == "INVALID_DEVICE_API"


@pytest.mark.parametrize("owner", ["", "x" * 257, "tab\there"])
def test_bad_owner_ids_are_rejected(owner: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_owner(owner)
    assert info.value.reason == "INVALID_OWNER"


def test_attrs_keep_their_order_and_may_repeat() -> None:
    attrs = [Attr("weight", "4"), Attr("resolution", "1024x768"), Attr("weight", "8")]
    assert check_attrs(iter(attrs)) == tuple(attrs)


@pytest.mark.parametrize(
    ("attr", "index"),
    [
        (Attr("", "1"), "1"),
        (Attr("a/b", "1"), "1"),
        (Attr("ok", "nul\x00"), "1"),
        (Attr("ok", "x" * 4097), "1"),
    ],
)
def test_bad_attrs_are_rejected_naming_their_index(attr: Attr, index: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_attrs([Attr("fine", "1"), attr])
    assert info.value.reason == "INVALID_ATTRIBUTE"
    assert info.value.metadata["index"] == index
