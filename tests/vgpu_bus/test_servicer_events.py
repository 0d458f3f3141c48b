"""Contract tests of VgpuBusService WatchEvents (new events, after_sequence replay) and the metrics."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import generate_latest

from tests.vgpu_bus.conftest import (
    GPU,
    BusUnderTest,
    FakeGfxHost,
    eventually,
    rpc_failure,
    serve_bus,
    serve_vendor,
)
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.vgpu_bus.config import BusServiceConfig

T4 = "i915-GVTg_V5_4"
U1 = "5b6e3a4c-1f1e-4c8e-9a57-0a1b2c3d4e5f"
U2 = "6c7f4b5d-2a2f-4d9f-8b68-1b2c3d4e5f60"
U3 = "7d805c6e-3b30-4ea0-9c79-2c3d4e5f6071"


@contextlib.asynccontextmanager
async def _events(bus: BusUnderTest, after_sequence: int) -> AsyncIterator[Any]:
    call = bus.stub.WatchEvents(pb.WatchEventsRequest(after_sequence=after_sequence), timeout=30)
    try:
        yield call
    finally:
        call.cancel()


async def _take(call: Any, count: int) -> list[tuple[int, str, str]]:
    out = []
    for _ in range(count):
        event = await call.read()
        out.append((event.sequence, pb.EventKind.Name(event.kind).removeprefix("EVENT_KIND_"), event.uuid))
    return out


async def _create(bus: BusUnderTest, uuid: str) -> None:
    await bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=uuid, parent=GPU, type_id=T4), timeout=5)


async def test_new_events_only_with_after_sequence_zero(grpc_bus: BusUnderTest) -> None:
    await _create(grpc_bus, U1)  # events 1 (parent added) and 2 happen before the watch
    subscribers = grpc_bus.runtime.bus.statistics().subscribers
    async with _events(grpc_bus, 0) as call:
        await eventually(lambda: grpc_bus.runtime.bus.statistics().subscribers == subscribers + 1)
        await grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1), timeout=5)
        first = await call.read()
    assert (first.sequence, first.kind, first.uuid, first.parent, first.type_id) == (
        3,
        pb.EVENT_KIND_DEVICE_REMOVED,
        U1,
        GPU,
        T4,
    )
    assert first.time.seconds > 0


async def test_after_sequence_replays_then_follows(grpc_bus: BusUnderTest) -> None:
    await _create(grpc_bus, U1)
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    async with _events(grpc_bus, 1) as call:  # everything after "parent added"
        assert await _take(call, 2) == [(2, "DEVICE_CREATED", U1), (3, "DEVICE_OPENED", U1)]
        await grpc_bus.stub.CloseDevice(pb.CloseDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
        await grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U1), timeout=5)
        assert await _take(call, 2) == [(4, "DEVICE_CLOSED", U1), (5, "DEVICE_REMOVED", U1)]
    # A failure carries the error's reason and message.
    await grpc_bus.stub.DefineDevice(
        pb.DefineDeviceRequest(uuid=U2, parent=GPU, type_id=T4, start=pb.START_POLICY_MANUAL), timeout=5
    )
    async with _events(grpc_bus, 5) as call:
        [(sequence, kind, uuid)] = await _take(call, 1)
        assert (sequence, kind, uuid) == (6, "DEFINITION_CHANGED", U2)


async def test_a_sequence_from_a_previous_run_streams_new_events(grpc_bus: BusUnderTest) -> None:
    subscribers = grpc_bus.runtime.bus.statistics().subscribers
    async with _events(grpc_bus, 1_000) as call:  # newer than anything: only new events
        await eventually(lambda: grpc_bus.runtime.bus.statistics().subscribers == subscribers + 1)
        await _create(grpc_bus, U1)
        assert await _take(call, 1) == [(2, "DEVICE_CREATED", U1)]


async def test_events_older_than_the_window_are_one_overflow(bus_config: BusServiceConfig) -> None:
    config = dataclasses.replace(bus_config, event_history=2)
    fake = FakeGfxHost()
    async with serve_bus(config) as bus, serve_vendor(config.state_dir, fake) as vendor:
        request = pb.RegisterParentRequest(name=GPU, types=fake.mdev_types(), vendor_endpoint=vendor.target)
        await bus.stub.RegisterParent(request, timeout=5)  # 1
        for uuid in (U1, U2, U3):  # 2, 3, 4: only 3 and 4 are kept
            await _create(bus, uuid)
        async with _events(bus, 1) as call:
            overflow = await call.read()
            assert (overflow.sequence, overflow.kind) == (2, pb.EVENT_KIND_OVERFLOW)
            assert overflow.message == "1 events before the replay window are not kept"
            assert await _take(call, 2) == [(3, "DEVICE_CREATED", U2), (4, "DEVICE_CREATED", U3)]
        await bus.stub.UnregisterParent(pb.UnregisterParentRequest(name=GPU), timeout=5)


async def test_metrics_come_from_the_core(grpc_bus: BusUnderTest) -> None:
    for uuid in (U1, U2, U3):
        await _create(grpc_bus, uuid)
    await grpc_bus.stub.OpenDevice(pb.OpenDeviceRequest(uuid=U1, owner="vm-1"), timeout=5)
    await grpc_bus.stub.RemoveDevice(pb.RemoveDeviceRequest(uuid=U3), timeout=5)
    await _create(grpc_bus, U3)
    await _create(grpc_bus, "8e916d7f-4c41-4fb1-8d8a-3d4e5f607182")  # the 4th of 4 slots
    in_use = await rpc_failure(
        grpc_bus.stub.CreateDevice(pb.CreateDeviceRequest(uuid=U3, parent=GPU, type_id=T4), timeout=5)
    )
    assert in_use.reason == "UUID_IN_USE"  # checked before the vendor: not a lifecycle result
    await rpc_failure(
        grpc_bus.stub.CreateDevice(
            pb.CreateDeviceRequest(uuid="9fa27e80-5d52-40c2-9e9b-4e5f60718293", parent=GPU, type_id=T4),
            timeout=5,
        )
    )
    await grpc_bus.stub.ListParents(pb.ListParentsRequest(), timeout=5)  # caches available_instances
    text = generate_latest(grpc_bus.runtime.registry).decode()
    lines = set(text.splitlines())
    for line in (
        "vgpusim_bus_parents 1.0",
        f'vgpusim_bus_devices{{parent="{GPU}",type="{T4}"}} 4.0',
        "vgpusim_bus_open_devices 1.0",
        "vgpusim_bus_definitions 0.0",
        'vgpusim_lifecycle_operations_total{op="create",result="ok"} 5.0',
        'vgpusim_lifecycle_operations_total{op="create",result="APERTURE_EXHAUSTED"} 1.0',
        'vgpusim_lifecycle_operations_total{op="remove",result="ok"} 1.0',
        'vgpusim_bus_events_total{kind="created"} 5.0',
        'vgpusim_bus_events_total{kind="failed"} 1.0',
        'vgpusim_bus_events_total{kind="opened"} 1.0',
        'vgpusim_bus_events_total{kind="parent_added"} 1.0',
        f'vgpusim_type_available_instances{{parent="{GPU}",type="{T4}"}} 0.0',
        f'vgpusim_type_available_instances{{parent="{GPU}",type="i915-GVTg_V5_8"}} 0.0',
        f'vgpusim_vgpu_info{{owner="vm-1",parent="{GPU}",type="{T4}",vgpu="{U1}"}} 1.0',
        f'vgpusim_vgpu_info{{owner="",parent="{GPU}",type="{T4}",vgpu="{U2}"}} 1.0',
    ):
        assert line in lines, f"{line} not in\n{text}"
    assert "# TYPE vgpusim_lifecycle_operations_total counter" in lines
    assert "# TYPE vgpusim_bus_events_total counter" in lines
