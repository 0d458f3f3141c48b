"""Fixtures of the vgpu_bus tests: core fakes (vendor, owners, clock, bus), and served gRPC buses."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from tests.vgpu_bus.helpers import FAST, PARENT, TYPES, FakeClock, make_vendor
from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.errors import VgpusimError
from vgpusim.common.rpc import STATUS_DETAILS_KEY, error_info_of, grpc_status_for, rich_status
from vgpusim.common.server import ServerHandle, running_server
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as gfx_grpc
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as bus_pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as bus_grpc
from vgpusim.vgpu_bus.config import BusServiceConfig
from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.events import EventHub
from vgpusim.vgpu_bus.core.fakes import FakeOwners, FakeVendor
from vgpusim.vgpu_bus.server import BusRuntime, open_runtime


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vendor() -> FakeVendor:
    return make_vendor()


@pytest.fixture
def owners() -> FakeOwners:
    return FakeOwners()


@pytest.fixture
def hub(clock: FakeClock) -> EventHub:
    return EventHub(clock, default_queue_size=64)


@pytest.fixture
def bus(hub: EventHub, owners: FakeOwners, vendor: FakeVendor, clock: FakeClock) -> DeviceBus:
    """A bus with one parent (``PARENT``) registered on ``vendor``."""
    device_bus = DeviceBus(hub, owners, config=FAST, clock=clock)
    device_bus.register_parent(PARENT, TYPES, vendor)
    return device_bus


# -- contract tests of the gRPC service (test_servicer*.py, test_server*.py) ----------------------
#
# A real vgpu_bus server (``open_runtime`` + ``running_server`` on a UNIX socket in a short temp
# dir) and a fake gfx_host ``VendorService`` served by another real grpc.aio server, so that every
# assertion is about what a client sees on the wire.

GPU = "0000:00:02.0"
GPU_TYPES = {"i915-GVTg_V5_4": 2, "i915-GVTg_V5_8": 1}
"""Type -> cost in aperture units; the fake GPU has 8 units (4 of _4 or 8 of _8)."""


@dataclass
class Failure:
    """What a client sees of a failed call: the status code and the ErrorInfo."""

    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    message: str


async def rpc_failure(call: Awaitable[Any]) -> Failure:
    """The status of ``call``, which must fail (rebuilt from the ``grpc-status-details-bin`` trailer)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    info = None
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            info = error_info_of(status_pb2.Status.FromString(value))
    assert info is not None, f"no ErrorInfo in {error.code()} {error.details()}"
    return Failure(error.code(), info.reason, dict(info.metadata), error.details() or "")


async def eventually(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Return once ``check()`` holds, polling every 10 ms; fail after ``timeout`` seconds."""
    for _ in range(max(1, round(timeout / 0.01))):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check(), f"condition still false after {timeout} s"


async def _abort(context: Any, code: grpc.StatusCode, reason: str, message: str, **meta: str) -> None:
    await context.abort_with_status(grpc_status_for(rich_status(code, message, reason, meta)))


@dataclass
class FakeGfxHost(gfx_grpc.VendorServiceServicer):
    """gfx_host's vendor ops for one parent: a pool of aperture units shared by its types.

    Its check-then-reserve yields to the loop in between (as a vendor behind an RPC effectively
    does), so only the bus's serialisation keeps parallel creates exact.
    """

    parent: str = GPU
    pool: int = 8
    costs: dict[str, int] = field(default_factory=lambda: dict(GPU_TYPES))
    instances: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    failing_reads: str = ""
    """When set, GetAvailableInstances fails with UNAVAILABLE and this reason."""

    @property
    def free(self) -> int:
        return self.pool - sum(self.costs[t] for t in self.instances.values())

    async def CreateInstance(self, request: Any, context: Any) -> gfx.CreateInstanceResponse:
        self.calls.append(("create", request.uuid))
        cost = self.costs.get(request.type_id)
        if cost is None or request.parent != self.parent:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TYPE", "no such type")
        assert cost is not None
        if request.uuid in self.instances:
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, "UUID_IN_USE", "exists")
        if self.free < cost:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "APERTURE_EXHAUSTED",
                f"low GM aperture exhausted: {self.free} of {cost} units free",
                errno="ENOSPC",
                resource="low_gm",
            )
        await asyncio.sleep(0)
        self.instances[request.uuid] = request.type_id
        return gfx.CreateInstanceResponse(
            vgpu=gfx.Vgpu(uuid=request.uuid, parent=self.parent, type_id=request.type_id)
        )

    async def RemoveInstance(self, request: Any, context: Any) -> gfx.RemoveInstanceResponse:
        self.calls.append(("remove", request.uuid))
        if request.uuid not in self.instances:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_VGPU", "no such vGPU")
        if request.uuid in self.containers:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "VGPU_OPEN", "release it first")
        del self.instances[request.uuid]
        return gfx.RemoveInstanceResponse()

    async def OpenInstance(self, request: Any, context: Any) -> gfx.OpenInstanceResponse:
        self.calls.append(("open", request.uuid))
        if request.uuid not in self.instances:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_VGPU", "no such vGPU")
        self.containers[request.uuid] = request.container_id
        return gfx.OpenInstanceResponse(broker="/fake/gfx_host.chan.sock", token=f"token-{request.uuid}")

    async def ReleaseInstance(self, request: Any, context: Any) -> gfx.ReleaseInstanceResponse:
        self.calls.append(("release", request.uuid))
        if self.containers.pop(request.uuid, None) is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "NOT_OPEN", "not open")
        return gfx.ReleaseInstanceResponse()

    async def GetAvailableInstances(self, request: Any, context: Any) -> gfx.GetAvailableInstancesResponse:
        if request.parent != self.parent:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_PARENT", "no such parent")
        if self.failing_reads:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, self.failing_reads, "the GPU is resetting")
        cost = self.costs[request.type_id]
        return gfx.GetAvailableInstancesResponse(available_instances=self.free // cost)

    def mdev_types(self) -> list[bus_pb.MdevType]:
        """The catalogue as gfx_host registers it."""
        return [
            bus_pb.MdevType(
                type_id=type_id,
                name=type_id.partition("-")[2],
                description=f"low_gm_size: {64 * cost}MB\n",
                device_api="vfio-pci",
                available_instances=self.free // cost,
            )
            for type_id, cost in self.costs.items()
        ]


@dataclass
class VendorServer:
    """A running fake gfx_host: its servicer, its target, and a way to stop it early."""

    fake: FakeGfxHost
    target: str


@asynccontextmanager
async def serve_vendor(state_dir: Path, fake: FakeGfxHost) -> AsyncIterator[VendorServer]:
    """Serve ``fake`` (with health) as ``gfx_host`` in ``state_dir`` until the block ends."""
    config = BaseServiceConfig(state_dir=state_dir, metrics_port=-1, stop_grace_s=0.2, log_format="text")

    def add(server: grpc.aio.Server) -> list[str]:
        gfx_grpc.add_VendorServiceServicer_to_server(fake, server)
        return [gfx.DESCRIPTOR.services_by_name["VendorService"].full_name]

    async with running_server("gfx_host", config, add, write_status_file=False) as handle:
        yield VendorServer(fake, handle.target)


@pytest.fixture
def short_state_dir() -> Iterator[Path]:
    """A state dir short enough for UNIX socket paths (pytest's tmp_path may not be)."""
    with tempfile.TemporaryDirectory(prefix="vgb-") as name:
        yield Path(name)


@pytest.fixture
def bus_config(short_state_dir: Path) -> BusServiceConfig:
    return BusServiceConfig(
        state_dir=short_state_dir,
        metrics_port=-1,
        log_format="text",
        stop_grace_s=0.2,
        release_timeout_s=5.0,
        release_request_interval_s=0.05,
        autostart_backoff_s=0.01,
        vendor_timeout_s=5.0,
        vendor_connect_timeout_s=1.0,
    )


@dataclass
class BusUnderTest:
    """A served bus: the runtime (core, registry...), the server handle and a stub on a channel."""

    runtime: BusRuntime
    handle: ServerHandle
    stub: bus_grpc.VgpuBusServiceStub
    state_dir: Path


@asynccontextmanager
async def serve_bus(config: BusServiceConfig) -> AsyncIterator[BusUnderTest]:
    """A bus served with ``config`` until the block ends."""
    async with (
        open_runtime(config) as runtime,
        running_server(
            "vgpu_bus", config, runtime.add_services, runtime.registry, write_status_file=False
        ) as handle,
        handle.channel() as channel,
    ):
        yield BusUnderTest(runtime, handle, bus_grpc.VgpuBusServiceStub(channel), config.state_dir)


@pytest.fixture
async def served_bus(bus_config: BusServiceConfig) -> AsyncIterator[BusUnderTest]:
    """A served bus without parents."""
    async with serve_bus(bus_config) as served:
        yield served


@pytest.fixture
async def gfx_vendor(short_state_dir: Path) -> AsyncIterator[VendorServer]:
    """The fake gfx_host, served."""
    async with serve_vendor(short_state_dir, FakeGfxHost()) as server:
        yield server


@pytest.fixture
async def grpc_bus(served_bus: BusUnderTest, gfx_vendor: VendorServer) -> AsyncIterator[BusUnderTest]:
    """A served bus with the fake GPU registered as parent ``GPU``; unregistered again at the end
    (devices closed first), while the vendor still answers."""
    await served_bus.stub.RegisterParent(
        bus_pb.RegisterParentRequest(
            name=GPU, driver="i915", types=gfx_vendor.fake.mdev_types(), vendor_endpoint=gfx_vendor.target
        ),
        timeout=10,
    )
    yield served_bus
    devices = served_bus.runtime.bus.devices
    for device in devices.list_devices():
        if device.owner is not None:
            with contextlib.suppress(VgpusimError):
                await devices.close_device(device.uuid, device.owner)
    with contextlib.suppress(VgpusimError):
        await served_bus.runtime.vendors.unregister(GPU, 1.0)
