"""Contract tests of VgpuBusService definitions (mdevctl define/modify/start/stop/undefine, autostart)."""

from __future__ import annotations

import uuid as uuid_mod

import grpc

from tests.vgpu_bus.conftest import GPU, BusUnderTest, FakeGfxHost, VendorServer, rpc_failure, serve_vendor
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb

T4 = "i915-GVTg_V5_4"
T8 = "i915-GVTg_V5_8"
U1 = "5b6e3a4c-1f1e-4c8e-9a57-0a1b2c3d4e5f"
U2 = "6c7f4b5d-2a2f-4d9f-8b68-1b2c3d4e5f60"


async def _definitions(bus: BusUnderTest, **filters: str) -> list[tuple[str, str, str, bool]]:
    listed = await bus.stub.ListDefinitions(pb.ListDefinitionsRequest(**filters), timeout=5)
    return [(d.uuid, d.parent, d.type_id, d.active) for d in listed.definitions]


async def test_define_start_stop_undefine(grpc_bus: BusUnderTest, gfx_vendor: VendorServer) -> None:
    stub = grpc_bus.stub
    defined = await stub.DefineDevice(
        pb.DefineDeviceRequest(
            uuid=U1.upper(),
            parent=GPU,
            type_id=T4,
            start=pb.START_POLICY_MANUAL,
            attrs=[pb.Attribute(name="weight", value="4")],
        ),
        timeout=5,
    )
    assert (defined.definition.uuid, defined.definition.start, defined.definition.active) == (
        U1,
        pb.START_POLICY_MANUAL,
        False,
    )
    assert await _definitions(grpc_bus) == [(U1, GPU, T4, False)]

    device = (await stub.StartDevice(pb.StartDeviceRequest(uuid=U1), timeout=5)).device
    assert (device.uuid, device.type_id, device.defined) == (U1, T4, True)
    assert [(a.name, a.value) for a in device.attrs] == [("weight", "4")]
    assert await _definitions(grpc_bus, parent=GPU) == [(U1, GPU, T4, True)]
    assert gfx_vendor.fake.instances == {U1: T4}

    await stub.StopDevice(pb.StopDeviceRequest(uuid=U1), timeout=5)
    assert gfx_vendor.fake.instances == {}
    assert await _definitions(grpc_bus, uuid=U1) == [(U1, GPU, T4, False)]  # the definition stays

    removed = await stub.UndefineDevice(pb.UndefineDeviceRequest(uuid=U1), timeout=5)
    assert [d.uuid for d in removed.removed] == [U1]
    assert await _definitions(grpc_bus) == []
    failure = await rpc_failure(stub.UndefineDevice(pb.UndefineDeviceRequest(uuid=U1), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEFINITION")


async def test_define_errors(grpc_bus: BusUnderTest) -> None:
    stub = grpc_bus.stub
    request = pb.DefineDeviceRequest(uuid=U1, parent=GPU, type_id=T4, start=pb.START_POLICY_AUTO)
    await stub.DefineDevice(request, timeout=5)
    again = await rpc_failure(stub.DefineDevice(request, timeout=5))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DEFINITION_EXISTS")
    assert again.message == f"Device {U1} on {GPU} already defined"
    unspecified = pb.DefineDeviceRequest(uuid=U2, parent=GPU, type_id=T4)
    failure = await rpc_failure(stub.DefineDevice(unspecified, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_START_POLICY")
    vague = pb.DefineDeviceRequest(uuid=U2, type_id=T4, start=pb.START_POLICY_MANUAL)
    failure = await rpc_failure(stub.DefineDevice(vague, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INSUFFICIENTLY_SPECIFIED")
    bad_uuid = pb.DefineDeviceRequest(uuid="nope", parent=GPU, type_id=T4, start=pb.START_POLICY_MANUAL)
    failure = await rpc_failure(stub.DefineDevice(bad_uuid, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UUID")


async def test_define_takes_parent_type_and_attrs_from_an_active_device(grpc_bus: BusUnderTest) -> None:
    await grpc_bus.stub.CreateDevice(
        pb.CreateDeviceRequest(uuid=U1, parent=GPU, type_id=T8, attrs=[pb.Attribute(name="a", value="1")]),
        timeout=5,
    )
    defined = await grpc_bus.stub.DefineDevice(
        pb.DefineDeviceRequest(uuid=U1, start=pb.START_POLICY_AUTO), timeout=5
    )
    definition = defined.definition
    assert (definition.parent, definition.type_id, definition.start, definition.active) == (
        GPU,
        T8,
        pb.START_POLICY_AUTO,
        True,
    )
    assert [(a.name, a.value) for a in definition.attrs] == [("a", "1")]
    device = (await grpc_bus.stub.GetDevice(pb.GetDeviceRequest(uuid=U1), timeout=5)).device
    assert device.defined


async def test_modify_definition(grpc_bus: BusUnderTest) -> None:
    stub = grpc_bus.stub
    await stub.DefineDevice(
        pb.DefineDeviceRequest(uuid=U1, parent=GPU, type_id=T4, start=pb.START_POLICY_MANUAL), timeout=5
    )

    async def modify(**fields: object) -> pb.Definition:
        answer = await stub.ModifyDefinition(pb.ModifyDefinitionRequest(uuid=U1, **fields), timeout=5)  # type: ignore[arg-type]
        return answer.definition

    appended = await modify(add_attribute=pb.AddAttribute(name="b", value="2", index=-1))
    first = await modify(add_attribute=pb.AddAttribute(name="a", value="1", index=0))
    assert [(a.name, a.value) for a in first.attrs] == [("a", "1"), ("b", "2")]
    assert [a.name for a in appended.attrs] == ["b"]
    changed = await modify(type_id=T8, start=pb.START_POLICY_AUTO)
    assert (changed.type_id, changed.start, len(changed.attrs)) == (T8, pb.START_POLICY_AUTO, 2)
    unchanged = await modify(delete_attribute=pb.DeleteAttribute(index=-1))  # the last one
    assert (unchanged.type_id, unchanged.start, [a.name for a in unchanged.attrs]) == (
        T8,
        pb.START_POLICY_AUTO,
        ["a"],
    )
    failure = await rpc_failure(
        stub.ModifyDefinition(
            pb.ModifyDefinitionRequest(uuid=U1, delete_attribute=pb.DeleteAttribute(index=5)), timeout=5
        )
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ATTRIBUTE_INDEX")
    failure = await rpc_failure(stub.ModifyDefinition(pb.ModifyDefinitionRequest(uuid=U2), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEFINITION")


async def test_start_without_uuid_creates_a_transient_device(
    grpc_bus: BusUnderTest, gfx_vendor: VendorServer
) -> None:
    device = (
        await grpc_bus.stub.StartDevice(pb.StartDeviceRequest(parent=GPU, type_id=T4), timeout=5)
    ).device
    assert str(uuid_mod.UUID(device.uuid)) == device.uuid and not device.defined
    assert gfx_vendor.fake.instances == {device.uuid: T4}
    failure = await rpc_failure(grpc_bus.stub.StartDevice(pb.StartDeviceRequest(parent=GPU), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INSUFFICIENTLY_SPECIFIED")
    again = await rpc_failure(
        grpc_bus.stub.StartDevice(pb.StartDeviceRequest(uuid=device.uuid, parent=GPU, type_id=T4), timeout=5)
    )
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "UUID_IN_USE")


async def test_register_parent_autostarts_auto_definitions(served_bus: BusUnderTest) -> None:
    stub = served_bus.stub
    for uuid, start in ((U1, pb.START_POLICY_AUTO), (U2, pb.START_POLICY_MANUAL)):
        await stub.DefineDevice(
            pb.DefineDeviceRequest(uuid=uuid, parent=GPU, type_id=T4, start=start), timeout=5
        )
    fake = FakeGfxHost()
    async with serve_vendor(served_bus.state_dir, fake) as vendor:
        request = pb.RegisterParentRequest(name=GPU, types=fake.mdev_types(), vendor_endpoint=vendor.target)
        await stub.RegisterParent(request, timeout=10)
        listed = await stub.ListDevices(pb.ListDevicesRequest(), timeout=5)
        assert [(d.uuid, d.defined) for d in listed.devices] == [(U1, True)]
        assert fake.instances == {U1: T4}
        assert await _definitions(served_bus) == [(U1, GPU, T4, True), (U2, GPU, T4, False)]
        await stub.UnregisterParent(pb.UnregisterParentRequest(name=GPU), timeout=10)
