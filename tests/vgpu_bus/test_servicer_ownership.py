"""Contract tests of VgpuBusService ownership: open/close, WatchOwnership and release requests.

The owner's side is a real ``WatchOwnership`` stream; "the frontend died" is that stream cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from tests.vgpu_bus.conftest import GPU, BusUnderTest, VendorServer, eventually, rpc_failure
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb

T4 = "i915-GVTg_V5_4"
U1 = "5b6e3a4c-1f1e-4c8e-9a57-0a1b2c3d4e5f"
U2 = "6c7f4b5d-2a2f-4d9f-8b68-1b2c3d4e5f60"


async def _create(bus: BusUnderTest, *uuids: str) -> None:
    for uuid in uuids:
        await bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=uuid, parent=GPU, type_id=T4), timeout=5)


async def _watch(bus: BusUnderTest, owner: str) -> Any:
    """An owner's WatchOwnership stream, once the bus has confirmed it watches."""
    stream = bus.stub.WatchOwnership(pb.WatchOwnershipRequest(owner=owner), timeout=30)
    first = await stream.read()
    assert first.WhichOneof("kind") == "watching" and first.watching.owner == owner
    return stream


def _state(bus: BusUnderTest, uuid: str) -> str:
    device = bus.runtime.bus.devices.find_device(uuid)
    return "gone" if device is None else device.state.value


async def test_open_and_close_with_one_owner_at_a_time(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    await _create(grpc_bus, U1)
    opened = await grpc_bus.stub.OpenDevice(
        pb.OpenDeviceRequest(uuid=U1, owner="vm-1", container_id="container-7"), timeout=5
    )
    assert (opened.channel.broker, opened.channel.token) == ("/fake/gfx_host.chan.sock", f"token-{U1}")
    assert (opened.device.state, opened.device.owner) == (pb.DEVICE_STATE_OPEN, "vm-1")
    assert gfx_vendor.fake.containers == {U1: "container-7"}  # the vendor attached the container

    second = await rpc_failure(
        grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-2"), timeout=5)
    )
    assert (second.code, second.reason, second.metadata["owner"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEVICE_IN_USE",
        "vm-1",
    )
    other = await rpc_failure(
        grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-2"), timeout=5)
    )
    assert (other.code, other.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")

    await grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    device = (await grpc_bus.stub.GetDevice(pb.GetDeviceRequest(uuid=U1), timeout=5)).device
    assert (device.state, device.owner) == (pb.DEVICE_STATE_ACTIVE, "")
    again = await rpc_failure(
        grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    )
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEVICE_NOT_OPEN")
    assert [op for op, uuid in gfx_vendor.fake.calls if uuid == U1] == ["create", "open", "release"]

    # Without a container id the owner id is the container.
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-2"), timeout=5)
    assert gfx_vendor.fake.containers == {U1: "vm-2"}
    missing = await rpc_failure(
        grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U2, owner="vm-2"), timeout=5)
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEVICE")


async def test_remove_of_an_open_device_asks_the_owner_and_waits(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    await _create(grpc_bus, U1)
    owner = await _watch(grpc_bus, "vm-1")
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    remove = asyncio.ensure_future(
        grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1, timeout_ms=10_000), timeout=15)
    )
    try:
        request = await owner.read()
        assert request.WhichOneof("kind") == "release_requested"
        assert (request.release_requested.uuid, request.release_requested.count) == (U1, 1)
        busy = await rpc_failure(grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1), timeout=5))
        assert (busy.code, busy.reason) == (grpc.StatusCode.UNAVAILABLE, "DEVICE_BUSY")
        await grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
        await remove
    finally:
        remove.cancel()
        owner.cancel()
    assert gfx_vendor.fake.instances == {}
    assert [op for op, _ in gfx_vendor.fake.calls] == ["create", "open", "release", "remove"]


async def test_an_owner_that_ignores_the_request_makes_the_remove_time_out(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    await _create(grpc_bus, U1)
    owner = await _watch(grpc_bus, "vm-1")
    try:
        await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
        failure = await rpc_failure(
            grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1, timeout_ms=300), timeout=10)
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "OWNER_DID_NOT_RELEASE")
        assert failure.metadata["owner"] == "vm-1"
        counts = []
        while len(counts) < 2:  # the request was repeated (every 50 ms here) while the remove waited
            message = await owner.read()
            counts.append(message.release_requested.count)
        assert counts == [1, 2]
        assert _state(grpc_bus, U1) == "open"
        stopped = await rpc_failure(
            grpc_bus.stub.StopDevice(pb.StopDeviceRequest(uuid=U1, timeout_ms=100), timeout=10)
        )
        assert (stopped.code, stopped.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "OWNER_DID_NOT_RELEASE")
    finally:
        owner.cancel()


async def test_without_an_ownership_stream_the_request_is_not_delivered(grpc_bus: BusUnderTest) -> None:
    await _create(grpc_bus, U1)
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    failure = await rpc_failure(
        grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1, timeout_ms=100), timeout=10)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "OWNER_DID_NOT_RELEASE")
    assert _state(grpc_bus, U1) == "open"


async def test_the_end_of_the_owners_last_stream_closes_its_devices(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    await _create(grpc_bus, U1, U2)
    first = await _watch(grpc_bus, "vm-1")
    second = await _watch(grpc_bus, "vm-1")
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U2, owner="vm-2"), timeout=5)

    first.cancel()  # one of two streams: the owner is still there
    await eventually(lambda: grpc_bus.runtime.owners.streams("vm-1") == 1)
    assert _state(grpc_bus, U1) == "open"

    second.cancel()  # the frontend died
    await eventually(lambda: _state(grpc_bus, U1) == "active")
    assert _state(grpc_bus, U2) == "open"  # another owner's device is left alone
    assert gfx_vendor.fake.containers == {U2: "vm-2"}


async def test_unregistering_the_parent_asks_owners_to_release(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    await _create(grpc_bus, U1)
    owner = await _watch(grpc_bus, "vm-1")
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    unregister = asyncio.ensure_future(
        grpc_bus.stub.UnregisterParent(pb.UnregisterParentRequest(name=GPU, timeout_ms=10_000), timeout=15)
    )
    try:
        request = await owner.read()
        assert request.release_requested.uuid == U1
        await grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
        answer = await unregister
    finally:
        unregister.cancel()
        owner.cancel()
    assert list(answer.revoked_devices) == [U1]
    assert gfx_vendor.fake.instances == {}


async def test_watch_ownership_needs_an_owner(grpc_bus: BusUnderTest) -> None:
    stream = grpc_bus.stub.WatchOwnership(pb.WatchOwnershipRequest(owner=""), timeout=5)
    failure = await rpc_failure(stream.read())
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OWNER")
