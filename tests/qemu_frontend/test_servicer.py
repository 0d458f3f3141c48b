"""Contract of QemuFrontendService: the real frontend server against gRPC fakes of its three peers.

iommu_type2, vgpu_bus and gfx_host are served by real grpc.aio servers on the state dir's UNIX
sockets (``vgpusim.qemu_frontend.fakes_grpc``: health and reflection included), backed by the
in-memory fakes of ``vgpusim.qemu_frontend.fakes`` (whose gfx_host hands over real shared-memory
channels).  The
frontend is the real one (``server.wire`` + ``running_server``), with the scripted test guest.
Every assertion is on what a client of the typed client library sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vgpusim.client import FrontendClient, frontend_pb
from vgpusim.common.clients import open_channel
from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound, WrongState
from vgpusim.common.server import running_server
from vgpusim.qemu_frontend.clients import Plane
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.fakes import FakePeers, scripted_launcher
from vgpusim.qemu_frontend.fakes_grpc import serve_fake_peers
from vgpusim.qemu_frontend.png import DRM_FORMAT_XRGB8888
from vgpusim.qemu_frontend.server import SERVICE, wire
from vgpusim.qemu_frontend.servicer import add_services

UUID = "6c1c3a5e-8f0e-4d2b-b7a4-3e9d5c2f1a01"
MIB = 1 << 20


@dataclass
class Setup:
    client: FrontendClient
    fakes: FakePeers
    state_dir: Path


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    state = tmp_path / "s"
    config = FrontendConfig(state_dir=state, metrics_port=-1, peer_timeout_s=5.0, dependency_timeout_s=10.0)
    fakes = FakePeers(config.paths.run_dir, config.paths.ensure_shm_dir())
    try:
        async with serve_fake_peers(state, fakes), contextlib.AsyncExitStack() as stack:
            w = wire(config, launcher=scripted_launcher)
            handle = await stack.enter_async_context(
                running_server(
                    SERVICE, config, add_services(w.frontend), w.registry, ready=w.ready, on_stop=(w.close,)
                )
            )
            channel = await stack.enter_async_context(open_channel(handle.target))
            fakes.bus.add(UUID)
            yield Setup(FrontendClient(channel, target=handle.target, timeout=10.0), fakes, state)
    finally:
        config.paths.remove_shm_dir()


async def _attached(s: Setup) -> str:
    vm = await s.client.create_vm(memory_bytes=32 * MIB, name="guest")
    await s.client.attach_device(vm.vm_id, UUID)
    return vm.vm_id


async def test_vm_life_cycle(setup: Setup) -> None:
    c = setup.client
    vm = await c.create_vm(memory_bytes=64 * MIB, name="one", hardware_iommu=True)
    assert (
        vm.name == "one" and vm.memory_bytes == 64 * MIB and vm.guest_state == frontend_pb.GUEST_STATE_STOPPED
    )
    assert [(r.gpa, r.size, r.offset) for r in vm.regions] == [(0, 0xA0000, 0), (MIB, 63 * MIB, MIB)]
    assert setup.fakes.iommu.containers[vm.container_id].hardware
    assert [v.vm_id for v in await c.list_vms()] == [vm.vm_id]
    attached = await c.attach_device(vm.vm_id, UUID)
    assert list(attached.devices) == [UUID]
    assert list((await c.get_vm(vm.vm_id)).devices) == [UUID]
    await c.detach_device(vm.vm_id, UUID)
    await c.destroy_vm(vm.vm_id)
    assert await c.list_vms() == []
    assert setup.fakes.iommu.containers == {}


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_vm("vm-missing"),
        lambda c: c.destroy_vm("vm-missing"),
        lambda c: c.attach_device("vm-missing", UUID),
        lambda c: c.get_guest_status("vm-missing"),
        lambda c: c.start_guest("vm-missing"),
        lambda c: c.get_device_info("vm-missing", UUID),
        lambda c: c.read_region("vm-missing", UUID, offset=0, size=4),
        lambda c: c.get_screenshot("vm-missing"),
    ],
)
async def test_unknown_vm_is_not_found(setup: Setup, call: Any) -> None:
    with pytest.raises(NotFound) as info:
        await call(setup.client)
    assert info.value.reason == "UNKNOWN_VM" and info.value.metadata["errno"] == "ENODEV"


async def test_not_attached_and_creation_errors(setup: Setup) -> None:
    c = setup.client
    vm = await c.create_vm(memory_bytes=32 * MIB, name="a")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: c.get_device_info(vm.vm_id, UUID),
        lambda: c.detach_device(vm.vm_id, UUID),
        lambda: c.get_screenshot(vm.vm_id),
        lambda: c.set_irqs(vm.vm_id, UUID, flags=0x21, index=1, count=0),
    ]
    for call in calls:
        with pytest.raises(NotFound) as info:
            await call()
        assert info.value.reason == "NOT_ATTACHED"
    with pytest.raises(InvalidArgument) as size:
        await c.create_vm(memory_bytes=3 * MIB)
    assert size.value.reason == "BAD_MEMORY_SIZE"
    with pytest.raises(AlreadyExists) as exists:
        await c.create_vm(memory_bytes=32 * MIB, name="a")
    assert exists.value.reason == "VM_EXISTS"
    with pytest.raises(NotFound) as unknown:
        await c.attach_device(vm.vm_id, "6c1c3a5e-8f0e-4d2b-b7a4-3e9d5c2f1aff")
    assert unknown.value.reason == "UNKNOWN_DEVICE"


async def test_regions(setup: Setup) -> None:
    c = setup.client
    vm_id = await _attached(setup)
    info = await c.get_device_info(vm_id, UUID)
    assert (info.flags, info.num_regions, info.num_irqs) == (3, 9, 5)
    bar2 = await c.get_region_info(vm_id, UUID, 2)
    assert (bar2.offset, bar2.size, bar2.flags) == (2 << 40, 256 * MIB, 15)
    assert [(a.offset, a.size) for a in bar2.sparse_areas] == [(0, 64 * MIB)]
    rom = await c.get_region_info(vm_id, UUID, 6)
    assert (rom.size, rom.flags) == (0, 0)
    with pytest.raises(InvalidArgument) as bad:
        await c.get_region_info(vm_id, UUID, 9)
    assert bad.value.reason == "BAD_REGION_INDEX"
    await c.write_region(vm_id, UUID, offset=0x100, data=(0x1122334455667788).to_bytes(8, "little"))
    assert await c.read_region(vm_id, UUID, offset=0x104, size=4) == bytes.fromhex("44332211")
    assert await c.read_region(vm_id, UUID, offset=0x100, size=2) == bytes.fromhex("8877")
    for offset, size, reason in ((9 << 40, 4, "BAD_REGION_INDEX"), ((7 << 40) + 4094, 4, "OUT_OF_REGION")):
        with pytest.raises(InvalidArgument) as err:
            await c.read_region(vm_id, UUID, offset=offset, size=size)
        assert err.value.reason == reason
    with pytest.raises(InvalidArgument) as zero:
        await c.read_region(vm_id, UUID, offset=0, size=0)
    assert zero.value.reason == "BAD_ACCESS_SIZE"


@pytest.mark.parametrize(
    ("flags", "index", "start", "count", "data", "reason"),
    [
        (0x21, 5, 0, 1, b"", "BAD_IRQ_INDEX"),
        (0x21, 1, 1, 1, b"", "BAD_IRQ_RANGE"),
        (0x21, 1, 0, 2, b"", "BAD_IRQ_RANGE"),
        (0x03 | 0x20, 1, 0, 1, b"\x01", "BAD_IRQ_FLAGS"),  # two data types
        (0x01 | 0x08 | 0x10, 0, 0, 1, b"", "BAD_IRQ_FLAGS"),  # two actions
        (0x40 | 0x01, 0, 0, 1, b"", "BAD_IRQ_FLAGS"),  # unknown bit
        (0x02 | 0x20, 1, 0, 1, b"", "BAD_IRQ_DATA"),  # BOOL without its byte
        (0x01 | 0x08, 4, 0, 1, b"", "BAD_IRQ_FLAGS"),  # REQ can only be triggered
    ],
)
async def test_set_irqs_validation(
    setup: Setup, flags: int, index: int, start: int, count: int, data: bytes, reason: str
) -> None:
    vm_id = await _attached(setup)
    with pytest.raises(InvalidArgument) as info:
        await setup.client.set_irqs(
            vm_id, UUID, flags=flags, index=index, start=start, count=count, data=data
        )
    assert info.value.reason == reason


async def test_irq_info_and_loopback_interrupts(setup: Setup) -> None:
    c = setup.client
    vm_id = await _attached(setup)
    intx = await c.get_irq_info(vm_id, UUID, 0)
    assert (intx.flags, intx.count) == (1 | 2 | 4, 1)
    with pytest.raises(InvalidArgument):
        await c.get_irq_info(vm_id, UUID, 7)
    watch = c.watch_interrupts(vm_id, UUID)
    first = asyncio.ensure_future(anext(watch))
    got = None
    for _ in range(100):  # the stream subscribes on the server some time after the call: loop back until seen
        await c.set_irqs(vm_id, UUID, flags=0x01 | 0x20, index=1, start=0, count=1)  # NONE|TRIGGER on MSI
        done, _ = await asyncio.wait({first}, timeout=0.05)
        if done:
            got = first.result()
            break
    assert got is not None and got.index == 1 and got.sequence >= 1
    setup.fakes.gfx.raise_irq(UUID, 1, vector=7)  # a device interrupt through the channel
    nxt = await asyncio.wait_for(anext(watch), 5.0)
    while nxt.vector != 7:  # loopbacks sent before the stream saw the first one
        nxt = await asyncio.wait_for(anext(watch), 5.0)
    assert nxt.raised_ns > 0
    await c.detach_device(vm_id, UUID)  # ends the stream
    rest = [irq async for irq in watch]  # loopbacks still queued, then the end of the stream
    assert all(irq.index == 1 for irq in rest)


async def test_display(setup: Setup) -> None:
    c = setup.client
    vm_id = await _attached(setup)
    with pytest.raises(WrongState) as off:
        await c.get_screenshot(vm_id)
    assert off.value.reason == "DISPLAY_DISABLED"
    disabled = await c.query_gfx_plane(vm_id, UUID)
    assert (disabled.width, disabled.dmabuf_id) == (0, 0)
    assert (await c.query_gfx_plane(vm_id, UUID, flags=1 | 2)).dmabuf_id == 0  # PROBE|DMABUF: supported
    for flags in (4, 1 | 4, 1, 0, 2 | 4):
        with pytest.raises(InvalidArgument) as bad:
            await c.query_gfx_plane(vm_id, UUID, flags=flags)
        assert bad.value.reason == "BAD_PLANE_FLAGS"
    with pytest.raises(InvalidArgument) as plane_type:
        await c.query_gfx_plane(vm_id, UUID, drm_plane_type=3)
    assert plane_type.value.reason == "BAD_PLANE_TYPE"
    vgpu = setup.fakes.gfx.vgpus[UUID]
    vgpu.plane = Plane(drm_format=DRM_FORMAT_XRGB8888, width=4, height=2, stride=16, size=4096, dmabuf_id=1)
    vgpu.framebuffer = bytes([0x10, 0x20, 0x30, 0]) * 8
    plane = await c.query_gfx_plane(vm_id, UUID)
    assert (plane.width, plane.height, plane.dmabuf_id) == (4, 2, 1)
    buf = await c.get_gfx_dmabuf(vm_id, UUID, 1)
    assert (buf.width, buf.stride, buf.data) == (4, 16, vgpu.framebuffer)
    with pytest.raises(NotFound) as gone:
        await c.get_gfx_dmabuf(vm_id, UUID, 9)
    assert gone.value.reason == "UNKNOWN_DMABUF"
    shot = await c.get_screenshot(vm_id)
    assert (shot.width, shot.height) == (4, 2)
    (length,) = struct.unpack(">I", shot.png[33:37])  # IDAT follows the signature and IHDR (8 + 25)
    assert shot.png[37:41] == b"IDAT"
    raw = zlib.decompress(shot.png[41 : 41 + length])
    assert raw == (b"\x00" + bytes([0x30, 0x20, 0x10]) * 4) * 2  # filter 0, then R, G, B per pixel


async def test_reset_and_guest(setup: Setup) -> None:
    c = setup.client
    vm_id = await _attached(setup)
    await c.reset_device(vm_id, UUID)
    assert setup.fakes.gfx.vgpus[UUID].resets == 1
    with pytest.raises(InvalidArgument) as bad:
        await c.start_guest(vm_id, workload=frontend_pb.WORKLOAD_UNSPECIFIED)
    assert bad.value.reason == "BAD_WORKLOAD"
    started = await c.start_guest(vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
    assert started.state == frontend_pb.GUEST_STATE_RUNNING and started.workload == frontend_pb.WORKLOAD_SMOKE
    done = await c.wait_guest(vm_id, timeout=10.0, poll_interval=0.01)
    assert done.state == frontend_pb.GUEST_STATE_FINISHED
    assert (done.commands_submitted, done.interrupts_received) == (1, 1)
    await c.start_guest(vm_id, workload=frontend_pb.WORKLOAD_IDLE)
    with pytest.raises(WrongState) as running:
        await c.start_guest(vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
    assert running.value.reason == "GUEST_RUNNING"
    stopped = await c.stop_guest(vm_id)
    assert stopped.state == frontend_pb.GUEST_STATE_STOPPED
    assert (await c.get_vm(vm_id)).guest_state == frontend_pb.GUEST_STATE_STOPPED


async def test_release_request_detaches_through_the_bus_stream(setup: Setup) -> None:
    vm_id = await _attached(setup)
    setup.fakes.bus.request_release(UUID)
    await asyncio.wait_for(setup.fakes.bus.wait_close_calls(1), 10.0)
    assert setup.fakes.bus.owners[UUID] is None
    assert list((await setup.client.get_vm(vm_id)).devices) == []
