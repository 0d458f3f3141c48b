"""Contract tests of VgpuBusService: parents, types and device creation, as a client sees them.

A real bus server and a real fake gfx_host VendorService (see ``conftest.py``); every assertion is
on the status code and ErrorInfo reason a client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuid_mod
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import generate_latest

from tests.vgpu_bus.conftest import (
    GPU,
    BusUnderTest,
    FakeGfxHost,
    VendorServer,
    rpc_failure,
    serve_vendor,
)
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb

T4 = "i915-GVTg_V5_4"
T8 = "i915-GVTg_V5_8"
U1 = "5b6e3a4c-1f1e-4c8e-9a57-0a1b2c3d4e5f"
U2 = "6c7f4b5d-2a2f-4d9f-8b68-1b2c3d4e5f60"


def _available(parents: list[pb.Parent]) -> dict[tuple[str, str], int]:
    return {(p.name, t.type_id): t.available_instances for p in parents for t in p.types}


async def test_registered_parent_is_listed_with_live_available_instances(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    listed = await grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5)
    [parent] = listed.parents
    assert (parent.name, parent.driver, parent.vendor_endpoint) == (GPU, "i915", gfx_vendor.target)
    assert [(t.type_id, t.name, t.device_api) for t in parent.types] == [
        (T4, "GVTg_V5_4", "vfio-pci"),
        (T8, "GVTg_V5_8", "vfio-pci"),
    ]
    assert parent.types[0].description == "low_gm_size: 128MB\n"  # as the vendor registered it
    assert _available(list(listed.parents)) == {(GPU, T4): 4, (GPU, T8): 8}

    await grpc_bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T4), timeout=5)
    types = await grpc_bus.stub.ListTypes(pb.ListTypesRequest(parent=GPU), timeout=5)
    assert _available(list(types.parents)) == {(GPU, T4): 3, (GPU, T8): 6}  # shared pool, read live
    every = await grpc_bus.stub.ListTypes(pb.ListTypesRequest(), timeout=5)
    assert [p.name for p in every.parents] == [GPU]


async def test_list_types_of_an_unknown_parent_is_not_found(grpc_bus: BusUnderTest) -> None:
    failure = await rpc_failure(
        grpc_bus.stub.ListTypes(pb.ListTypesRequest(parent="0000:00:09.0"), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_PARENT")


async def test_a_vendor_error_while_listing_reaches_the_client_unchanged(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    gfx_vendor.fake.failing_reads = "GPU_RESETTING"
    for call in (
        grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5),
        grpc_bus.stub.ListTypes(pb.ListTypesRequest(parent=GPU), timeout=5),
    ):
        failure = await rpc_failure(call)
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "GPU_RESETTING")
    assert "vgpusim_bus_parents 1.0" in generate_latest(grpc_bus.runtime.registry).decode().splitlines()
    gfx_vendor.fake.failing_reads = ""
    listed = await grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5)  # the service lives on
    assert [p.name for p in listed.parents] == [GPU]


async def test_register_parent_errors(grpc_bus: BusUnderTest, gfx_vendor: VendorServer) -> None:
    request = pb.RegisterParentRequest(
        name=GPU, driver="i915", types=gfx_vendor.fake.mdev_types(), vendor_endpoint=gfx_vendor.target
    )
    again = await rpc_failure(grpc_bus.stub.RegisterParent(request, timeout=5))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PARENT_EXISTS")

    empty = pb.RegisterParentRequest(name="0000:00:03.0", driver="i915", vendor_endpoint=gfx_vendor.target)
    failure = await rpc_failure(grpc_bus.stub.RegisterParent(empty, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_TYPE_CATALOGUE")

    bad_type = pb.RegisterParentRequest(
        name="0000:00:03.0",
        types=[pb.MdevType(type_id="no_driver_part")],
        vendor_endpoint=gfx_vendor.target,
    )
    failure = await rpc_failure(grpc_bus.stub.RegisterParent(bad_type, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TYPE_ID")

    nowhere = pb.RegisterParentRequest(
        name="0000:00:03.0",
        types=gfx_vendor.fake.mdev_types(),
        vendor_endpoint=f"unix:{grpc_bus.state_dir}/run/nobody.sock",
    )
    failure = await rpc_failure(grpc_bus.stub.RegisterParent(nowhere, timeout=10))
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "VENDOR_UNREACHABLE")
    no_endpoint = pb.RegisterParentRequest(name="0000:00:03.0", types=gfx_vendor.fake.mdev_types())
    failure = await rpc_failure(grpc_bus.stub.RegisterParent(no_endpoint, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VENDOR_ENDPOINT")
    listed = await grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5)
    assert [p.name for p in listed.parents] == [GPU]


async def test_create_device_returns_the_device_lower_case(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    request = pb.CreateDeviceRequest(
        uuid=U1.upper(), parent=GPU, type_id=T8, attrs=[pb.Attribute(name="weight", value="4")]
    )
    device = (await grpc_bus.stub.CreateDevice(request, timeout=5)).device
    assert (device.uuid, device.parent, device.type_id) == (U1, GPU, T8)
    assert device.state == pb.DEVICE_STATE_ACTIVE and device.owner == "" and not device.defined
    assert [(a.name, a.value) for a in device.attrs] == [("weight", "4")]
    assert device.created.seconds > 0
    assert gfx_vendor.fake.instances == {U1: T8}
    got = await grpc_bus.stub.GetDevice(pb.GetDeviceRequest(uuid=U1), timeout=5)
    assert got.device == device
    listed = await grpc_bus.stub.ListDevices(pb.ListDevicesRequest(parent=GPU, type_id=T8), timeout=5)
    assert [d.uuid for d in listed.devices] == [U1]
    none = await grpc_bus.stub.ListDevices(pb.ListDevicesRequest(type_id=T4), timeout=5)
    assert list(none.devices) == []


async def test_create_device_errors_in_the_kernels_order(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    stub = grpc_bus.stub
    await stub.CreateDevice(pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T4), timeout=5)
    cases = [
        (
            pb.CreateDeviceRequest(uuid="not-a-uuid", parent="nope", type_id=T4),
            "INVALID_ARGUMENT",
            "INVALID_UUID",
        ),
        (pb.CreateDeviceRequest(uuid=U1, parent="0000:00:09.0", type_id=T4), "ALREADY_EXISTS", "UUID_IN_USE"),
        (pb.CreateDeviceRequest(uuid=U2, parent="0000:00:09.0", type_id=T4), "NOT_FOUND", "UNKNOWN_PARENT"),
        (
            pb.CreateDeviceRequest(uuid=U2, parent=GPU, type_id="i915-nope"),
            "INVALID_ARGUMENT",
            "UNKNOWN_TYPE",
        ),
    ]
    for request, code, reason in cases:
        failure = await rpc_failure(stub.CreateDevice(request, timeout=5))
        assert (failure.code.name, failure.reason) == (code, reason), request
    twice = [pb.Attribute(name="weight", value="2"), pb.Attribute(name="weight", value="4")]
    failure = await rpc_failure(
        stub.CreateDevice(pb.CreateDeviceRequest(uuid=U2, parent=GPU, type_id=T4, attrs=twice), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_ATTRIBUTE")
    in_use = await rpc_failure(stub.CreateDevice(pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T4)))
    assert in_use.metadata["parent"] == GPU
    assert gfx_vendor.fake.calls == [("create", U1)]  # nothing reached the vendor after the first


async def test_vendor_exhaustion_reaches_the_client_unchanged(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    for _ in range(4):
        await grpc_bus.stub.CreateDevice(
            pb.CreateDeviceRequest(uuid=str(uuid_mod.uuid4()), parent=GPU, type_id=T4), timeout=5
        )
    failure = await rpc_failure(
        grpc_bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=U2, parent=GPU, type_id=T8), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "APERTURE_EXHAUSTED")
    assert failure.metadata == {"errno": "ENOSPC", "resource": "low_gm"}
    assert failure.message == "low GM aperture exhausted: 0 of 1 units free"
    missing = await rpc_failure(grpc_bus.stub.GetDevice(pb.GetDeviceRequest(uuid=U2), timeout=5))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEVICE")


async def test_parallel_creates_for_fewer_slots_give_exactly_that_many(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    uuids = [str(uuid_mod.uuid4()) for _ in range(10)]  # 10 creates of _4 for 4 slots

    async def create(uuid: str) -> str:
        try:
            await grpc_bus.stub.CreateDevice(
                pb.CreateDeviceRequest(uuid=uuid, parent=GPU, type_id=T4), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK"

    results = await asyncio.gather(*(create(uuid) for uuid in uuids))
    assert sorted(results) == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"] * 6
    assert len(gfx_vendor.fake.instances) == 4
    listed = await grpc_bus.stub.ListDevices(pb.ListDevicesRequest(), timeout=5)
    assert sorted(d.uuid for d in listed.devices) == sorted(gfx_vendor.fake.instances)


async def test_remove_device(grpc_bus: BusUnderTest, gfx_vendor: VendorServer) -> None:
    await grpc_bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T4), timeout=5)
    await grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1), timeout=5)
    assert gfx_vendor.fake.instances == {}
    failure = await rpc_failure(grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEVICE")
    failure = await rpc_failure(grpc_bus.stub.GetDevice(pb.GetDeviceRequest(uuid="xyz"), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UUID")


async def test_unregister_parent_revokes_its_devices(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    for uuid in (U1, U2):
        await grpc_bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=uuid, parent=GPU, type_id=T4), timeout=5)
    answer = await grpc_bus.stub.UnregisterParent(pb.UnregisterParentRequest(name=GPU), timeout=10)
    assert sorted(answer.revoked_devices) == sorted([U1, U2])
    assert gfx_vendor.fake.instances == {}
    assert list((await grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5)).parents) == []
    failure = await rpc_failure(
        grpc_bus.stub.UnregisterParent(pb.UnregisterParentRequest(name=GPU), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_PARENT")
    # The vendor is alive and may register the GPU again.
    request = pb.RegisterParentRequest(
        name=GPU, types=gfx_vendor.fake.mdev_types(), vendor_endpoint=gfx_vendor.target
    )
    registered = await grpc_bus.stub.RegisterParent(request, timeout=5)
    assert registered.parent.name == GPU and registered.parent.vendor_endpoint == gfx_vendor.target
    assert list(registered.parent.types) == gfx_vendor.fake.mdev_types()  # as registered


async def test_a_stopped_vendor_loses_its_parents_and_can_register_again(served_bus: BusUnderTest) -> None:
    stub = served_bus.stub
    fake = FakeGfxHost()
    async with serve_vendor(served_bus.state_dir, fake) as vendor:
        request = pb.RegisterParentRequest(name=GPU, types=fake.mdev_types(), vendor_endpoint=vendor.target)
        await stub.RegisterParent(request, timeout=5)  # event 1
        await stub.CreateDevice(pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T4), timeout=5)
        await stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    # The vendor process is gone: the bus notices by itself (its health stream ended).
    seen = []
    async with contextlib.aclosing(_events(stub, after_sequence=1)) as events:
        async for event in events:
            seen.append((pb.EventKind.Name(event.kind), event.message))
            if event.kind == pb.EVENT_KIND_PARENT_REMOVED:
                break
    assert seen == [
        ("EVENT_KIND_DEVICE_CREATED", ""),
        ("EVENT_KIND_DEVICE_OPENED", ""),
        ("EVENT_KIND_DEVICE_CLOSED", "revoked"),
        ("EVENT_KIND_DEVICE_REMOVED", ""),
        ("EVENT_KIND_PARENT_REMOVED", ""),
    ]
    assert list((await stub.ListParents(pb.ListParentsRequest(), timeout=5)).parents) == []
    assert list((await stub.ListDevices(pb.ListDevicesRequest(), timeout=5)).devices) == []
    # A restarted gfx_host (same socket) registers the GPU again.
    async with serve_vendor(served_bus.state_dir, FakeGfxHost()) as vendor:
        request = pb.RegisterParentRequest(name=GPU, types=fake.mdev_types(), vendor_endpoint=vendor.target)
        await stub.RegisterParent(request, timeout=5)
        listed = await stub.ListParents(pb.ListParentsRequest(), timeout=5)
        assert _available(list(listed.parents)) == {(GPU, T4): 4, (GPU, T8): 8}


async def _events(stub: Any, *, after_sequence: int) -> AsyncIterator[pb.WatchEventsResponse]:
    call = stub.WatchEvents(pb.WatchEventsRequest(after_sequence=after_sequence), timeout=10)
    try:
        async for event in call:
            yield event
    finally:
        call.cancel()
