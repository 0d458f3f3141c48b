"""mdevctl semantics: define / undefine / modify / list / start / stop / autostart (mdevctl.md §2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vgpu_bus.helpers import (
    BIG,
    FAST,
    OTHER_PARENT,
    PARENT,
    SMALL,
    TYPES,
    U1,
    U2,
    U3,
    FakeClock,
    drain,
    failure,
    make_vendor,
)
from vgpusim.common.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.definitions import Definitions
from vgpusim.vgpu_bus.core.events import EventHub
from vgpusim.vgpu_bus.core.fakes import FakeVendor
from vgpusim.vgpu_bus.core.model import (
    Attr,
    AutostartResult,
    DefinedDevice,
    Definition,
    DeviceState,
    EventKind,
    StartPolicy,
)
from vgpusim.vgpu_bus.core.store import DefinitionStore

AUTO, MANUAL = StartPolicy.AUTO, StartPolicy.MANUAL


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DefinitionStore]:
    with DefinitionStore(tmp_path / "bus.sqlite3") as definition_store:
        yield definition_store


@pytest.fixture
def defs(bus: DeviceBus, store: DefinitionStore, hub: EventHub, clock: FakeClock) -> Definitions:
    return Definitions(bus, store, hub, config=FAST, clock=clock)


# -- define / undefine / modify --------------------------------------------------------------------


def test_define_stores_a_definition_and_announces_it(
    defs: Definitions, store: DefinitionStore, hub: EventHub
) -> None:
    events = hub.subscribe()
    definition = defs.define(
        U1.upper(), "no-such-parent", "nosuch-type", start=AUTO, attrs=[Attr("weight", "2")]
    )
    assert definition == Definition(U1, "no-such-parent", "nosuch-type", AUTO, (Attr("weight", "2"),))
    assert store.find() == (definition,)
    (event,) = drain(events)
    assert (event.kind, event.detail, event.uuid, event.parent) == (
        EventKind.DEFINITION_CHANGED,
        "define",
        U1,
        "no-such-parent",
    )


def test_define_without_a_uuid_generates_one(defs: Definitions) -> None:
    definition = defs.define(parent=PARENT, type_id=SMALL)
    assert len(definition.uuid) == 36 and definition.start is MANUAL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uuid": U1}, "No parent specified"),
        ({"uuid": U1, "type_id": SMALL}, "No parent specified"),
        ({"uuid": U1, "parent": PARENT}, "No type specified"),
    ],
)
def test_define_needs_a_parent_and_a_type_unless_the_device_is_active(
    defs: Definitions, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        defs.define(**kwargs)
    assert (info.value.reason, info.value.message) == ("INSUFFICIENTLY_SPECIFIED", message)


def test_defining_twice_on_one_parent_is_refused_with_mdevctls_message(defs: Definitions) -> None:
    defs.define(U1, PARENT, SMALL)
    with pytest.raises(AlreadyExists) as info:
        defs.define(U1, PARENT, BIG)
    assert (info.value.reason, info.value.message) == (
        "DEFINITION_EXISTS",
        f"Device {U1} on {PARENT} already defined",
    )
    defs.define(U1, OTHER_PARENT, BIG)  # another parent is fine


async def test_defining_an_active_device_copies_its_parent_type_and_attrs(
    defs: Definitions, bus: DeviceBus
) -> None:
    await bus.create_device(U1, PARENT, BIG, [Attr("weight", "4")])
    assert defs.define(U1) == Definition(U1, PARENT, BIG, MANUAL, (Attr("weight", "4"),))
    assert defs.define(U1, OTHER_PARENT, start=AUTO) == Definition(
        U1, OTHER_PARENT, BIG, AUTO, (Attr("weight", "4"),)
    )
    with pytest.raises(InvalidArgument, match="No parent specified"):
        defs.define(U1, type_id=SMALL)


def test_define_checks_names(defs: Definitions) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"uuid": "nope", "parent": PARENT, "type_id": SMALL}, "INVALID_UUID"),
        ({"uuid": U1, "parent": "a/b", "type_id": SMALL}, "INVALID_PARENT_NAME"),
        ({"uuid": U1, "parent": PARENT, "type_id": "small"}, "INVALID_TYPE_ID"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(InvalidArgument) as info:
            defs.define(**kwargs)
        assert info.value.reason == reason


async def test_undefine_forgets_every_parent_or_one_and_leaves_running_devices(
    defs: Definitions, bus: DeviceBus, store: DefinitionStore
) -> None:
    for parent in (PARENT, OTHER_PARENT):
        defs.define(U1, parent, SMALL)
    await defs.start(U1, PARENT)
    assert [d.parent for d in defs.undefine(U1, OTHER_PARENT)] == [OTHER_PARENT]
    assert [d.parent for d in defs.undefine(U1)] == [PARENT]
    assert store.count() == 0 and bus.device_info(U1).state is DeviceState.ACTIVE
    with pytest.raises(NotFound) as info:
        defs.undefine(U1)
    assert (info.value.reason, info.value.message) == (
        "UNKNOWN_DEFINITION",
        "No devices match the specified uuid",
    )


def test_modify_changes_type_start_and_attributes_by_index(defs: Definitions) -> None:
    defs.define(U1, PARENT, SMALL, attrs=[Attr("a", "1")])
    assert defs.modify(U1, type_id=BIG, start=AUTO).attrs == (Attr("a", "1"),)
    assert defs.modify(U1, add_attr=Attr("c", "3")).attrs == (Attr("a", "1"), Attr("c", "3"))
    assert defs.modify(U1, add_attr=Attr("b", "2"), index=1).attrs == (
        Attr("a", "1"),
        Attr("b", "2"),
        Attr("c", "3"),
    )
    assert defs.modify(U1, delete_attr=True, index=0).attrs == (Attr("b", "2"), Attr("c", "3"))
    modified = defs.modify(U1, PARENT, delete_attr=True)  # no index: the last one
    assert modified == Definition(U1, PARENT, BIG, AUTO, (Attr("b", "2"),))
    assert defs.get(U1) == modified


def test_modify_reports_bad_indexes_like_mdevctl(defs: Definitions) -> None:
    defs.define(U1, PARENT, SMALL, attrs=[Attr("a", "1")])
    with pytest.raises(InvalidArgument) as info:
        defs.modify(U1, delete_attr=True, index=1)
    assert info.value.reason == "INVALID_ATTRIBUTE_INDEX"
    assert info.value.message == 'Attribute index 1 is invalid\n  Attrs:\n    @{0}: {"a":"1"}\n'
    with pytest.raises(InvalidArgument, match="index 2 is invalid"):
        defs.modify(U1, add_attr=Attr("b", "2"), index=2)
    defs.modify(U1, delete_attr=True)
    assert defs.modify(U1, delete_attr=True).attrs == ()  # deleting the last of none does nothing
    with pytest.raises(InvalidArgument) as info:
        defs.modify(U1, delete_attr=True, index=0)
    assert info.value.message == f"Attribute index 0 is invalid\nDevice {U1} has no attributes"
    options: list[dict[str, Any]] = [{"add_attr": Attr("x", "1"), "delete_attr": True}, {"index": 0}]
    for kwargs in options:
        with pytest.raises(InvalidArgument) as info:
            defs.modify(U1, **kwargs)
        assert info.value.reason == "INVALID_OPTIONS"


def test_modify_needs_exactly_one_definition(defs: Definitions) -> None:
    with pytest.raises(NotFound) as missing:
        defs.modify(U1, start=AUTO)
    assert (missing.value.reason, missing.value.message) == (
        "UNKNOWN_DEFINITION",
        f"Mediated device {U1} is not defined",
    )
    with pytest.raises(NotFound, match=f"Mediated device {PARENT}/{U1} is not defined"):
        defs.modify(U1, PARENT, start=AUTO)
    defs.define(U1, PARENT, SMALL)
    defs.define(U1, OTHER_PARENT, SMALL)
    with pytest.raises(InvalidArgument) as info:
        defs.modify(U1, start=AUTO)
    assert (info.value.reason, info.value.message) == (
        "MULTIPLE_DEFINITIONS",
        f"Multiple definitions found for {U1}, specify a parent",
    )
    assert defs.modify(U1, OTHER_PARENT, start=AUTO).start is AUTO


async def test_list_defined_marks_a_definition_active_only_when_its_device_matches(
    defs: Definitions, bus: DeviceBus
) -> None:
    defs.define(U1, PARENT, SMALL)
    defs.define(U1, OTHER_PARENT, SMALL)
    defs.define(U2, PARENT, BIG)
    await bus.create_device(U1, PARENT, SMALL)
    await bus.create_device(U2, PARENT, SMALL)  # running with another type than defined
    assert [(d.definition.uuid, d.definition.parent, d.active) for d in defs.list_defined()] == [
        (U1, PARENT, True),
        (U2, PARENT, False),
        (U1, OTHER_PARENT, False),
    ]
    assert defs.list_defined(uuid=U2) == (DefinedDevice(Definition(U2, PARENT, BIG), False),)


# -- start / stop ----------------------------------------------------------------------------------


async def test_start_of_a_defined_uuid_starts_that_definition(defs: Definitions, vendor: FakeVendor) -> None:
    defs.define(U1, PARENT, BIG, attrs=[Attr("weight", "4")])
    info = await defs.start(U1)
    assert (info.uuid, info.parent, info.type_id, info.attrs) == (U1, PARENT, BIG, (Attr("weight", "4"),))
    assert vendor.instances[U1].attrs == (Attr("weight", "4"),)
    error = await failure(defs.start(U1))
    assert (type(error), error.reason, error.message) == (
        AlreadyExists,
        "UUID_IN_USE",
        "Device already exists",
    )
    await defs.stop(U1)
    assert defs.list_defined()[0].active is False


async def test_only_one_of_several_definitions_of_a_uuid_can_run(defs: Definitions, bus: DeviceBus) -> None:
    bus.register_parent(OTHER_PARENT, TYPES, make_vendor())
    defs.define(U1, PARENT, SMALL)
    defs.define(U1, OTHER_PARENT, SMALL)
    error = await failure(defs.start(U1))
    assert error.message == f"Multiple definitions found for device {U1}. Please specify a parent."
    await defs.start(U1, PARENT)
    error = await failure(defs.start(U1, OTHER_PARENT))
    assert (error.reason, error.message) == ("UUID_IN_USE", "Device exists under different parent")
    defs.modify(U1, OTHER_PARENT, start=AUTO)
    (outcome,) = await defs.autostart(OTHER_PARENT)
    assert (outcome.result, outcome.reason, outcome.attempts) == (AutostartResult.FAILED, "UUID_IN_USE", 1)


async def test_start_refuses_a_type_that_contradicts_the_definition(defs: Definitions) -> None:
    defs.define(U1, PARENT, SMALL)
    error = await failure(defs.start(U1, type_id=BIG))
    assert (error.reason, error.message) == (
        "TYPE_MISMATCH",
        f"Device {U1} already exists on parent {PARENT} with type {SMALL}",
    )


async def test_transient_starts(defs: Definitions, bus: DeviceBus) -> None:
    generated = await defs.start(parent=PARENT, type_id=SMALL)
    assert bus.device_info(generated.uuid).state is DeviceState.ACTIVE
    named = await defs.start(U2, PARENT, BIG, attrs=[Attr("weight", "4")])
    assert named.attrs == (Attr("weight", "4"),)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"uuid": U3}, "Device is insufficiently specified"),
        ({"uuid": U3, "parent": PARENT}, "Device is insufficiently specified"),
        ({"uuid": U3, "type_id": SMALL}, "can't provide type without parent"),
        ({"uuid": U3, "type_id": SMALL, "attrs": []}, "can't provide type without parent"),
    ]
    for kwargs, message in cases:
        error = await failure(defs.start(**kwargs))
        assert (type(error), error.reason, error.message) == (
            InvalidArgument,
            "INSUFFICIENTLY_SPECIFIED",
            message,
        )
    error = await failure(defs.start(U3, "nope", SMALL))
    assert (error.reason, error.message) == ("UNKNOWN_PARENT", "Unable to find parent device 'nope'")


# -- autostart -------------------------------------------------------------------------------------


async def test_autostart_starts_the_auto_definitions_of_the_parent(
    defs: Definitions, bus: DeviceBus, hub: EventHub
) -> None:
    defs.define(U2, PARENT, BIG, start=AUTO, attrs=[Attr("weight", "4")])
    defs.define(U1, PARENT, SMALL, start=AUTO)
    defs.define(U3, PARENT, SMALL, start=MANUAL)
    defs.define(U3, OTHER_PARENT, SMALL, start=AUTO)
    events = hub.subscribe()
    outcomes = await defs.autostart(PARENT)
    assert [(o.uuid, o.result, o.attempts) for o in outcomes] == [
        (U1, AutostartResult.STARTED, 1),
        (U2, AutostartResult.STARTED, 1),
    ]
    assert [d.uuid for d in bus.list_devices()] == [U1, U2]
    assert bus.device_info(U2).attrs == (Attr("weight", "4"),)
    assert [e.kind for e in drain(events)] == [EventKind.CREATED, EventKind.CREATED]
    again = await defs.autostart(PARENT)
    assert [o.result for o in again] == [AutostartResult.ALREADY_ACTIVE] * 2
    assert defs.statistics() == (4, {"started": 2, "already_active": 2})


async def test_autostart_records_and_announces_each_failure_and_goes_on(
    defs: Definitions, vendor: FakeVendor, hub: EventHub
) -> None:
    vendor.pool = 4
    for uuid in (U1, U2, U3):
        defs.define(uuid, PARENT, BIG, start=AUTO)
    events = hub.subscribe()
    outcomes = await defs.autostart(PARENT)
    assert [(o.result, o.reason, o.attempts) for o in outcomes] == [
        (AutostartResult.STARTED, "", 1),
        (AutostartResult.FAILED, "APERTURE_EXHAUSTED", 1),  # definitive: not retried
        (AutostartResult.FAILED, "APERTURE_EXHAUSTED", 1),
    ]
    failed = [e for e in drain(events) if e.kind is EventKind.FAILED and e.detail == "autostart"]
    assert [(e.uuid, e.reason) for e in failed] == [(U2, "APERTURE_EXHAUSTED"), (U3, "APERTURE_EXHAUSTED")]
    assert [o.uuid for o in defs.autostart_outcomes(PARENT)] == [U1, U2, U3]
    assert defs.autostart_outcomes(OTHER_PARENT) == ()


async def test_autostart_retries_transient_errors_a_bounded_number_of_times(
    defs: Definitions, vendor: FakeVendor
) -> None:
    defs.define(U1, PARENT, SMALL, start=AUTO)
    defs.define(U2, PARENT, SMALL, start=AUTO)
    vendor.fail_next("create", Busy("parent resetting", reason="PARENT_RESETTING"))
    outcome_u1, _ = await defs.autostart(PARENT)
    assert (outcome_u1.result, outcome_u1.attempts) == (AutostartResult.STARTED, 2)
    await defs.stop(U1)
    for _ in range(FAST.autostart_attempts):
        vendor.fail_next("create", Busy("parent resetting", reason="PARENT_RESETTING"))
    outcome_u1, outcome_u2 = await defs.autostart(PARENT)
    assert (outcome_u1.result, outcome_u1.reason, outcome_u1.attempts) == (
        AutostartResult.FAILED,
        "PARENT_RESETTING",
        FAST.autostart_attempts,
    )
    assert outcome_u2.result is AutostartResult.ALREADY_ACTIVE
