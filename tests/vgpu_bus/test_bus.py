"""The device core: create / remove / open / close with the kernel's rules, races and parent removal."""

from __future__ import annotations

import asyncio
import errno
import itertools

import pytest

from tests.vgpu_bus.helpers import (
    BIG,
    OTHER_PARENT,
    PARENT,
    SMALL,
    TYPES,
    U1,
    U2,
    U3,
    drain,
    failure,
    make_vendor,
)
from vgpusim.common.errors import (
    AlreadyExists,
    Busy,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TimedOut,
    Unavailable,
    WrongState,
)
from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.events import EventHub
from vgpusim.vgpu_bus.core.fakes import FakeOwners, FakeVendor
from vgpusim.vgpu_bus.core.model import Attr, DeviceState, EventKind, ParentState

# -- create ----------------------------------------------------------------------------------------


async def test_create_reports_the_uuid_lower_case_and_calls_the_vendor_once(
    bus: DeviceBus, vendor: FakeVendor
) -> None:
    info = await bus.create_device(U1.upper() + "\n", PARENT, SMALL, [Attr("weight", "2")])
    assert (info.uuid, info.parent, info.type_id, info.state, info.owner) == (
        U1,
        PARENT,
        SMALL,
        DeviceState.ACTIVE,
        None,
    )
    assert info.attrs == (Attr("weight", "2"),)
    assert info.created_at > 0
    assert vendor.calls == [("create", U1, SMALL)]
    assert vendor.instances[U1].attrs == (Attr("weight", "2"),)


async def test_checks_run_in_the_kernel_order(bus: DeviceBus, vendor: FakeVendor) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    cases = [
        (bus.create_device("not-a-uuid", "nope", "nope-x", [Attr("/", "")]), InvalidArgument, "INVALID_UUID"),
        (bus.create_device(U1, "nope", "nope-x", [Attr("/", "")]), AlreadyExists, "UUID_IN_USE"),
        (bus.create_device(U2, "nope", "nope-x", [Attr("/", "")]), NotFound, "UNKNOWN_PARENT"),
        (bus.create_device(U2, PARENT, "nope-x", [Attr("/", "")]), InvalidArgument, "UNKNOWN_TYPE"),
        (bus.create_device(U2, PARENT, SMALL, [Attr("/", "")]), InvalidArgument, "INVALID_ATTRIBUTE"),
    ]
    for call, error_class, reason in cases:
        error = await failure(call)
        assert (type(error), error.reason) == (error_class, reason)
    assert vendor.count("create") == 1


@pytest.mark.parametrize(
    ("parent", "type_id", "message"),
    [
        (OTHER_PARENT, SMALL, "Device exists under different parent"),
        (PARENT, BIG, "Device exists with different type"),
        (PARENT, SMALL, "Device already exists"),
    ],
)
async def test_uuids_are_unique_across_all_parents(
    bus: DeviceBus, parent: str, type_id: str, message: str
) -> None:
    bus.register_parent(OTHER_PARENT, TYPES, make_vendor())
    await bus.create_device(U1, PARENT, SMALL)
    error = await failure(bus.create_device(U1.upper(), parent, type_id))
    assert (type(error), error.reason, error.message) == (AlreadyExists, "UUID_IN_USE", message)
    assert error.metadata["errno"] == "EEXIST"
    assert (error.metadata["parent"], error.metadata["type_id"]) == (PARENT, SMALL)


async def test_unknown_parent_messages_follow_mdevctl(bus: DeviceBus) -> None:
    error = await failure(bus.create_device(U1, "0000:00:02.1", SMALL))
    assert error.message == "Unable to find parent device '0000:00:02.1'"
    assert error.metadata["errno"] == "ENOENT"
    bus.register_parent("card0", TYPES, make_vendor())
    error = await failure(bus.create_device(U1, "CARD0", SMALL))
    assert error.message == "Unable to find parent device 'CARD0'. Did you mean 'card0'?"


async def test_vendor_errors_reach_the_caller_unchanged(bus: DeviceBus, vendor: FakeVendor) -> None:
    injected = Exhausted("no fence registers left", reason="FENCE_EXHAUSTED", metadata={"fences": "0"})
    vendor.fail_next("create", injected)
    assert await failure(bus.create_device(U1, PARENT, SMALL)) is injected
    await bus.create_device(U1, PARENT, BIG)
    await bus.create_device(U2, PARENT, BIG)
    error = await failure(bus.create_device(U3, PARENT, BIG))
    assert (type(error), error.reason, error.metadata["errno"]) == (Exhausted, "APERTURE_EXHAUSTED", "ENOSPC")
    assert [d.uuid for d in bus.list_devices()] == [U1, U2]


async def test_parallel_creates_for_fewer_slots_give_exactly_that_many_devices(
    hub: EventHub, owners: FakeOwners
) -> None:
    vendor = make_vendor(pool=3, racy=True)  # yields between its capacity check and its reservation
    bus = DeviceBus(hub, owners)
    bus.register_parent(PARENT, TYPES, vendor)
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(10)]
    results = await asyncio.gather(
        *(bus.create_device(u, PARENT, SMALL) for u in uuids), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(created) == 3
    assert len(refused) == 7
    assert all(isinstance(r, Exhausted) and r.reason == "APERTURE_EXHAUSTED" for r in refused)
    assert vendor.used == 3 and len(vendor.instances) == 3
    assert len(bus.list_devices()) == 3
    assert bus.statistics().creates_by_result == {"ok": 3, "APERTURE_EXHAUSTED": 7}


async def test_parallel_creates_of_one_uuid_reach_the_vendor_once(bus: DeviceBus, vendor: FakeVendor) -> None:
    vendor.racy = True
    results = await asyncio.gather(
        *(bus.create_device(U1, PARENT, SMALL) for _ in range(5)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(r.reason == "UUID_IN_USE" for r in results if isinstance(r, AlreadyExists))
    assert vendor.count("create") == 1


async def test_creating_one_type_lowers_the_live_count_of_the_others(bus: DeviceBus) -> None:
    assert [(t.type_id, t.available_instances) for t in await bus.list_types()] == [(BIG, 2), (SMALL, 8)]
    await bus.create_device(U1, PARENT, SMALL)
    assert [(t.type_id, t.available_instances) for t in await bus.list_types()] == [(BIG, 1), (SMALL, 7)]


async def test_a_rejected_attribute_leaves_nothing_behind(bus: DeviceBus, vendor: FakeVendor) -> None:
    error = await failure(bus.create_device(U1, PARENT, BIG, [Attr("weight", "4"), Attr("bogus", "1")]))
    assert (type(error), error.reason) == (InvalidArgument, "ATTRIBUTE_REJECTED")
    assert bus.list_devices() == () and vendor.instances == {} and vendor.used == 0
    assert (await bus.list_types(type_id=BIG))[0].available_instances == 2
    await bus.create_device(U1, PARENT, BIG, [Attr("weight", "4")])  # the UUID is free again


async def test_a_cancelled_create_is_rolled_back(bus: DeviceBus, vendor: FakeVendor) -> None:
    gate = vendor.pause("create")
    async with asyncio.TaskGroup() as group:
        task = group.create_task(bus.create_device(U1, PARENT, SMALL))
        await gate.entered.wait()
        assert bus.device_info(U1).state is DeviceState.CREATING
        task.cancel()
    assert task.cancelled()
    assert vendor.calls[-1] == ("remove", U1)
    assert bus.find_device(U1) is None and vendor.instances == {}


async def test_a_device_being_created_cannot_be_removed_or_opened(bus: DeviceBus, vendor: FakeVendor) -> None:
    gate = vendor.pause("create")
    async with asyncio.TaskGroup() as group:
        group.create_task(bus.create_device(U1, PARENT, SMALL))
        await gate.entered.wait()
        for call in (bus.remove_device(U1), bus.open_device(U1, "vm-1")):
            error = await failure(call)
            assert (type(error), error.reason, error.errno) == (Busy, "DEVICE_BUSY", errno.EAGAIN)
        gate.resume()
    assert bus.device_info(U1).state is DeviceState.ACTIVE


# -- remove ----------------------------------------------------------------------------------------


async def test_remove_returns_the_resources(bus: DeviceBus, vendor: FakeVendor) -> None:
    await bus.create_device(U1, PARENT, BIG)
    await bus.remove_device(U1.upper())
    assert bus.list_devices() == () and vendor.used == 0
    assert vendor.count("remove") == 1


async def test_remove_of_an_unknown_or_malformed_uuid(bus: DeviceBus) -> None:
    error = await failure(bus.remove_device(U1))
    assert (type(error), error.reason, error.errno) == (NotFound, "UNKNOWN_DEVICE", errno.ENODEV)
    assert (await failure(bus.remove_device("1"))).reason == "INVALID_UUID"


async def test_remove_while_a_remove_is_in_flight_is_eagain(bus: DeviceBus, vendor: FakeVendor) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    gate = vendor.pause("remove")
    async with asyncio.TaskGroup() as group:
        group.create_task(bus.remove_device(U1))
        await gate.entered.wait()
        error = await failure(bus.remove_device(U1))
        assert (type(error), error.reason, error.metadata["errno"]) == (Busy, "DEVICE_BUSY", "EAGAIN")
        gate.resume()
    assert bus.find_device(U1) is None


async def test_a_failed_vendor_remove_keeps_the_device(bus: DeviceBus, vendor: FakeVendor) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    vendor.fail_next("remove", Unavailable("gfx_host restarting"))
    assert (await failure(bus.remove_device(U1))).reason == "PEER_UNAVAILABLE"
    assert bus.device_info(U1).state is DeviceState.ACTIVE


async def test_remove_of_an_open_device_asks_the_owner_and_waits(
    bus: DeviceBus, vendor: FakeVendor, owners: FakeOwners, hub: EventHub
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    await bus.open_device(U1, "vm-1")
    events = hub.subscribe()

    async def release(uuid: str, count: int) -> None:
        info = bus.device_info(uuid)
        assert info.release_requested
        for call in (bus.open_device(uuid, "vm-2"), bus.remove_device(uuid)):
            assert (await failure(call)).reason == "DEVICE_BUSY"
        await bus.close_device(uuid, "vm-1")

    owners.on_request("vm-1", release)
    await bus.remove_device(U1)
    assert owners.requests == [(U1, "vm-1", 1)]
    assert [vendor.count(op) for op in ("open", "release", "remove")] == [1, 1, 1]
    assert [(e.kind, e.owner) for e in drain(events)] == [(EventKind.CLOSED, "vm-1"), (EventKind.REMOVED, "")]


async def test_remove_of_a_device_whose_owner_never_lets_go_times_out(
    bus: DeviceBus, vendor: FakeVendor, owners: FakeOwners, hub: EventHub
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    await bus.open_device(U1, "vm-stubborn")
    events = hub.subscribe()
    error = await failure(bus.remove_device(U1))
    assert (type(error), error.reason, error.metadata["owner"]) == (
        TimedOut,
        "OWNER_DID_NOT_RELEASE",
        "vm-stubborn",
    )
    assert len(owners.requests) >= 2  # repeated every release_request_interval
    info = bus.device_info(U1)
    assert (info.state, info.owner, info.release_requested) == (DeviceState.OPEN, "vm-stubborn", False)
    assert vendor.count("remove") == 0
    (failed,) = drain(events)
    assert (failed.kind, failed.detail, failed.reason) == (
        EventKind.FAILED,
        "remove",
        "OWNER_DID_NOT_RELEASE",
    )
    await bus.close_device(U1, "vm-stubborn")
    await bus.remove_device(U1)


# -- open / close ----------------------------------------------------------------------------------


async def test_one_owner_at_a_time_and_the_vendor_called_once_per_open_and_close(
    bus: DeviceBus, vendor: FakeVendor
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    for _ in range(2):
        opened = await bus.open_device(U1, "vm-1")
        assert opened.channel == {"broker": "fake-broker.sock", "token": f"{U1}/vm-1"}
        assert (opened.device.state, opened.device.owner) == (DeviceState.OPEN, "vm-1")
        for owner in ("vm-2", "vm-1"):
            error = await failure(bus.open_device(U1, owner))
            assert (type(error), error.reason, error.metadata["owner"]) == (Busy, "DEVICE_IN_USE", "vm-1")
        error = await failure(bus.close_device(U1, "vm-2"))
        assert (type(error), error.reason, error.metadata["owner"]) == (PermissionDenied, "NOT_OWNER", "vm-1")
        closed = await bus.close_device(U1, "vm-1")
        assert (closed.state, closed.owner) == (DeviceState.ACTIVE, None)
    assert (vendor.count("open"), vendor.count("release")) == (2, 2)
    error = await failure(bus.close_device(U1, "vm-1"))
    assert (type(error), error.reason) == (WrongState, "DEVICE_NOT_OPEN")


async def test_open_checks_its_arguments(bus: DeviceBus) -> None:
    assert (await failure(bus.open_device("x", ""))).reason == "INVALID_UUID"
    assert (await failure(bus.open_device(U1, ""))).reason == "INVALID_OWNER"
    assert (await failure(bus.open_device(U1, "vm-1"))).reason == "UNKNOWN_DEVICE"


async def test_vendor_open_and_release_failures_leave_the_state_unchanged(
    bus: DeviceBus, vendor: FakeVendor
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    vendor.fail_next("open", Exhausted("no channel slots", reason="CHANNELS_EXHAUSTED"))
    assert (await failure(bus.open_device(U1, "vm-1"))).reason == "CHANNELS_EXHAUSTED"
    assert (bus.device_info(U1).state, bus.device_info(U1).owner) == (DeviceState.ACTIVE, None)
    await bus.open_device(U1, "vm-1")
    vendor.fail_next("release", Unavailable("gfx_host restarting"))
    assert (await failure(bus.close_device(U1, "vm-1"))).reason == "PEER_UNAVAILABLE"
    assert (bus.device_info(U1).state, bus.device_info(U1).owner) == (DeviceState.OPEN, "vm-1")


# -- parents ---------------------------------------------------------------------------------------


async def test_a_parent_name_can_be_registered_once(bus: DeviceBus) -> None:
    with pytest.raises(AlreadyExists) as info:
        bus.register_parent(PARENT, TYPES, make_vendor())
    assert info.value.reason == "PARENT_EXISTS"


async def test_unregistering_a_parent_revokes_all_its_devices(
    bus: DeviceBus, vendor: FakeVendor, owners: FakeOwners, hub: EventHub
) -> None:
    other = make_vendor()
    bus.register_parent(OTHER_PARENT, TYPES, other)
    await bus.create_device(U1, PARENT, SMALL)
    await bus.create_device(U2, PARENT, BIG)
    await bus.create_device(U3, OTHER_PARENT, SMALL)
    await bus.open_device(U2, "vm-1")
    owners.on_request("vm-1", lambda uuid, count: bus.close_device(uuid, "vm-1"))
    events = hub.subscribe()
    await bus.unregister_parent(PARENT)
    assert [d.uuid for d in bus.list_devices()] == [U3]
    assert vendor.instances == {} and vendor.count("release") == 1
    kinds = [(e.kind, e.uuid) for e in drain(events)]
    assert kinds[-1] == (EventKind.PARENT_REMOVED, "")
    assert sorted(kinds[:-1], key=str) == sorted(
        [(EventKind.REMOVED, U1), (EventKind.CLOSED, U2), (EventKind.REMOVED, U2)], key=str
    )
    assert (await failure(bus.create_device(U1, PARENT, SMALL))).reason == "UNKNOWN_PARENT"
    assert (await failure(bus.unregister_parent(PARENT))).reason == "UNKNOWN_PARENT"


async def test_an_owner_that_never_lets_go_keeps_the_parent_going_away(
    bus: DeviceBus, vendor: FakeVendor, owners: FakeOwners
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    await bus.create_device(U2, PARENT, SMALL)
    await bus.open_device(U1, "vm-stubborn")
    error = await failure(bus.unregister_parent(PARENT, release_timeout=0.05))
    assert (type(error), error.reason, error.metadata["owner"]) == (
        TimedOut,
        "OWNER_DID_NOT_RELEASE",
        "vm-stubborn",
    )
    assert [d.uuid for d in bus.list_devices()] == [U1]  # the closed one was revoked
    assert (await bus.parent_info(PARENT)).state is ParentState.GOING_AWAY
    for call in (bus.create_device(U3, PARENT, SMALL), bus.remove_device(U1), bus.open_device(U1, "vm-2")):
        error = await failure(call)
        assert (type(error), error.reason, error.errno) == (NotFound, "PARENT_REMOVED", errno.ENODEV)
    await bus.close_device(U1, "vm-stubborn")  # the owner may still close
    await bus.unregister_parent(PARENT)  # and the unregistration can be repeated
    assert bus.list_devices() == () and vendor.instances == {}


async def test_a_forced_unregistration_releases_for_the_owner_and_ignores_the_vendor(
    bus: DeviceBus, vendor: FakeVendor, hub: EventHub
) -> None:
    await bus.create_device(U1, PARENT, SMALL)
    await bus.open_device(U1, "vm-stubborn")
    events = hub.subscribe()
    vendor.fail_next("remove", Unavailable("gfx_host is gone"))
    await bus.unregister_parent(PARENT, force=True, release_timeout=0.05)
    assert bus.list_devices() == ()
    assert vendor.count("release") == 1
    closed = next(e for e in drain(events) if e.kind is EventKind.CLOSED)
    assert (closed.owner, closed.detail) == ("vm-stubborn", "revoked")
    assert bus.statistics().removes_by_result == {"PEER_UNAVAILABLE": 1}


async def test_creates_racing_with_unregistration_get_enodev(bus: DeviceBus, vendor: FakeVendor) -> None:
    gate = vendor.pause("create")
    async with asyncio.TaskGroup() as group:
        first = group.create_task(bus.create_device(U1, PARENT, SMALL))  # inside the vendor
        await gate.entered.wait()
        queued = group.create_task(failure(bus.create_device(U2, PARENT, SMALL)))  # waits for the parent lock
        await asyncio.sleep(0)
        unregister = group.create_task(bus.unregister_parent(PARENT))
        await asyncio.sleep(0)
        late = await failure(bus.create_device(U3, PARENT, SMALL))
        assert (late.reason, late.errno) == ("PARENT_REMOVED", errno.ENODEV)
        second = await failure(bus.unregister_parent(PARENT))
        assert (type(second), second.reason) == (Busy, "PARENT_BUSY")
        gate.resume()
    assert (type(queued.result()), queued.result().reason) == (NotFound, "PARENT_REMOVED")
    assert first.result().uuid == U1  # finished, then revoked by the unregistration
    assert unregister.done() and bus.list_devices() == () and vendor.instances == {}


# -- reading ---------------------------------------------------------------------------------------


async def test_listing_filters_and_sorts(bus: DeviceBus) -> None:
    bus.register_parent(OTHER_PARENT, TYPES, make_vendor())
    await bus.create_device(U3, PARENT, SMALL)
    await bus.create_device(U1, OTHER_PARENT, BIG)
    await bus.create_device(U2, PARENT, BIG)
    assert [d.uuid for d in bus.list_devices()] == [U2, U3, U1]
    assert [d.uuid for d in bus.list_devices(parent=PARENT)] == [U2, U3]
    assert [d.uuid for d in bus.list_devices(type_id=BIG)] == [U2, U1]
    assert [d.uuid for d in bus.list_devices(uuid=U1.upper())] == [U1]
    assert bus.device_info(U2).parent == PARENT
    assert [p.name for p in await bus.list_parents()] == [PARENT, OTHER_PARENT]
    assert [p.device_count for p in await bus.list_parents()] == [2, 1]
    assert await bus.list_parents("nope") == ()
    assert (await failure(bus.parent_info("nope"))).reason == "UNKNOWN_PARENT"


async def test_statistics_count_devices_results_and_events(bus: DeviceBus, vendor: FakeVendor) -> None:
    vendor.pool = 9
    await bus.create_device(U1, PARENT, BIG)
    await bus.create_device(U2, PARENT, BIG)
    await failure(bus.create_device(U3, PARENT, BIG))
    await bus.create_device(U3, PARENT, SMALL)
    await bus.open_device(U1, "vm-1")
    await bus.remove_device(U2)
    stats = bus.statistics()
    assert (stats.parents, stats.open_devices) == (1, 1)
    assert stats.devices_by_parent == {PARENT: 2}
    assert stats.devices_by_type == {BIG: 1, SMALL: 1}
    assert stats.creates_by_result == {"ok": 3, "APERTURE_EXHAUSTED": 1}
    assert stats.removes_by_result == {"ok": 1}
    # parent added, 3 created, 1 failed, 1 opened, 1 removed
    assert (stats.events_emitted, stats.events_dropped, stats.subscribers) == (7, 0, 0)


async def test_events_follow_the_lifecycle_in_order(bus: DeviceBus, hub: EventHub) -> None:
    events = hub.subscribe()
    bus.register_parent(OTHER_PARENT, TYPES, make_vendor())
    await bus.create_device(U1, OTHER_PARENT, SMALL)
    await bus.open_device(U1, "vm-1")
    await bus.close_device(U1, "vm-1")
    await bus.remove_device(U1)
    await bus.unregister_parent(OTHER_PARENT)
    received = drain(events)
    assert [e.kind for e in received] == [
        EventKind.PARENT_ADDED,
        EventKind.CREATED,
        EventKind.OPENED,
        EventKind.CLOSED,
        EventKind.REMOVED,
        EventKind.PARENT_REMOVED,
    ]
    assert [e.seq for e in received] == list(range(received[0].seq, received[0].seq + 6))
    assert all(e.parent == OTHER_PARENT for e in received)
    assert [e.owner for e in received[2:4]] == ["vm-1", "vm-1"]
    assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(received))
