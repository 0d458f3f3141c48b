"""BusClient against a real grpc.aio server: typed results, domain errors with reasons, races, events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuid_mod

import pytest

from vgpusim.client import Stack, bus_pb
from vgpusim.common.errors import AlreadyExists, Exhausted, InvalidArgument, NotFound

from .conftest import fakes

U1 = "11111111-1111-4111-8111-111111111111"
P = "0000:00:02.0"


async def test_create_device_returns_the_device_with_ordered_attrs(stack: Stack) -> None:
    device = await stack.bus.create_device(
        U1, P, "i915-GVTg_V5_4", attrs=[("b", "2"), ("a", "1"), ("b", "3")]
    )
    assert isinstance(device, bus_pb.Device)
    assert (device.uuid, device.parent, device.type_id) == (U1, P, "i915-GVTg_V5_4")
    assert [(a.name, a.value) for a in device.attrs] == [("b", "2"), ("a", "1"), ("b", "3")]
    assert (await stack.bus.get_device(U1)).state == bus_pb.DEVICE_STATE_ACTIVE
    assert [d.uuid for d in await stack.bus.list_devices(parent=P)] == [U1]


async def test_mapping_attrs(stack: Stack) -> None:
    device = await stack.bus.create_device(U1, P, "i915-GVTg_V5_4", attrs={"x": "1"})
    assert [(a.name, a.value) for a in device.attrs] == [("x", "1")]


async def test_errors_carry_class_reason_and_metadata(stack: Stack) -> None:
    with pytest.raises(NotFound) as missing:
        await stack.bus.remove_device(U1)
    assert missing.value.reason == "UNKNOWN_DEVICE"
    with pytest.raises(InvalidArgument) as bad:
        await stack.bus.create_device("nope", P, "i915-GVTg_V5_4")
    assert bad.value.reason == "INVALID_UUID"
    assert bad.value.metadata["errno"] == "EINVAL"
    await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    with pytest.raises(AlreadyExists) as dup:
        await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    assert dup.value.reason == "UUID_IN_USE"


async def test_exhaustion_names_the_resource(stack: Stack) -> None:
    await stack.bus.create_device(U1, "0000:00:03.0", "i915-GVTg_V5_1")
    with pytest.raises(Exhausted) as err:
        await stack.bus.create_device(str(uuid_mod.uuid4()), "0000:00:03.0", "i915-GVTg_V5_1")
    assert err.value.reason == "APERTURE_EXHAUSTED"
    assert err.value.metadata == {"errno": "ENOSPC", "resource": "low_gm"}


async def test_parallel_creates_exactly_the_free_slots_win(stack: Stack) -> None:
    (parent,) = await stack.bus.list_types(P)
    free = next(t.available_instances for t in parent.types if t.type_id == "i915-GVTg_V5_8")
    attempts = [stack.bus.create_device(str(uuid_mod.uuid4()), P, "i915-GVTg_V5_8") for _ in range(free + 5)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    won = [r for r in results if isinstance(r, bus_pb.Device)]
    lost = [r for r in results if isinstance(r, Exhausted)]
    assert (len(won), len(lost)) == (free, 5)
    assert {e.reason for e in lost} == {"APERTURE_EXHAUSTED"}


async def test_definitions_round_trip(stack: Stack) -> None:
    definition = await stack.bus.define_device(
        U1, parent=P, type_id="i915-GVTg_V5_4", start=bus_pb.START_POLICY_AUTO, attrs=[("k", "v")]
    )
    assert definition.start == bus_pb.START_POLICY_AUTO
    modified = await stack.bus.modify_definition(U1, add_attr=("k2", "v2"), index=0)
    assert [a.name for a in modified.attrs] == ["k2", "k"]
    modified = await stack.bus.modify_definition(U1, delete_attr=True, start=bus_pb.START_POLICY_MANUAL)
    assert ([a.name for a in modified.attrs], modified.start) == (["k2"], bus_pb.START_POLICY_MANUAL)
    started = await stack.bus.start_device(U1)
    assert (started.parent, started.defined) == (P, True)
    assert (await stack.bus.list_definitions(uuid=U1))[0].active
    await stack.bus.stop_device(U1)
    removed = await stack.bus.undefine_device(U1)
    assert [d.uuid for d in removed] == [U1]
    with pytest.raises(NotFound) as err:
        await stack.bus.undefine_device(U1)
    assert err.value.reason == "NOT_DEFINED"


async def test_modify_refuses_two_edits(stack: Stack) -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        await stack.bus.modify_definition(U1, add_attr=("a", "b"), delete_attr=True)


async def test_watch_events_is_an_async_iterator(stack: Stack, bus_fake: fakes.FakeBus) -> None:
    await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    async with contextlib.aclosing(stack.bus.watch_events(after_sequence=1)) as events:
        await stack.bus.remove_device(U1)
        event = await asyncio.wait_for(anext(events), 5)
    assert (event.kind, event.uuid, event.sequence) == (bus_pb.EVENT_KIND_DEVICE_REMOVED, U1, 2)
    async with contextlib.aclosing(stack.bus.watch_events()) as events:
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)  # the subscription starts with the first iteration
        await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
        fresh = await asyncio.wait_for(waiting, 5)
    assert (fresh.kind, fresh.sequence) == (bus_pb.EVENT_KIND_DEVICE_CREATED, 3)
    await asyncio.sleep(0.05)
    assert not bus_fake._wakeups, "closing the iterator cancels the stream"
