"""Fixtures of the gfx_host service tests: guest RAM, a fake iommu_type2, and a real HostService.

The service is wired as ``server.amain`` wires it (``GfxHost`` of the embedded default host,
``IommuClient`` over a gRPC channel, ``SegmentCache`` and ``ChannelBroker``), except that
iommu_type2 is :class:`~tests.gfx_host.service.fake_iommu.FakeIommu` and the shared-memory dir is
a fresh directory under ``/dev/shm``.  Each test gets its own of everything; teardown runs in
reverse order even when a test fails (service, then container, then fake server, then RAM).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gfx_host.service.fake_iommu import FakeIommu, RamStore, serving_fake_iommu
from tests.gfx_host.service.guest import CHUNK, RAM_SIZE, GuestDriver, connect
from vgpusim.common.clients import open_channel
from vgpusim.common.errors import Busy, NotFound
from vgpusim.common.fastpath import GuestPort
from vgpusim.common.server import ServerHandle, running_server
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as pb_grpc
from vgpusim.gfx_host.broker import ChannelBroker
from vgpusim.gfx_host.clients import IommuClient, SegmentCache
from vgpusim.gfx_host.config import GfxHostConfig
from vgpusim.gfx_host.core.gpu import GfxHost
from vgpusim.gfx_host.core.host_config import default_host_config
from vgpusim.gfx_host.host import HostService
from vgpusim.gfx_host.servicer import add_services
from vgpusim.iommu_type2.core import PROT_RW, Container, DmaMapping, IommuMode

GVT = "0000:00:02.0"
NV = "0000:65:00.0"
T4 = "i915-GVTg_V5_4"
T8 = "i915-GVTg_V5_8"
U1 = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e01"
U2 = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e02"
RAM = "ram"


@dataclass
class Dirs:
    run: Path  # sockets: short enough for sun_path
    shm: Path  # segments: under /dev/shm


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    with tempfile.TemporaryDirectory(prefix="vgs-") as run:
        shm = Path(tempfile.mkdtemp(prefix="vgs-test-", dir="/dev/shm"))
        try:
            yield Dirs(Path(run), shm)
        finally:
            shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture
def ram(dirs: Dirs) -> Iterator[Segment]:
    """16 MiB of guest RAM: a real segment in the shm dir."""
    segment = Segment.create(dirs.shm, RAM, RAM_SIZE)
    try:
        yield segment
    finally:
        segment.unlink(missing_ok=True)
        with contextlib.suppress(Busy):  # a view still held by a failed test: the file is gone anyway
            segment.close()


@pytest.fixture
async def iommu(dirs: Dirs, ram: Segment) -> AsyncIterator[tuple[FakeIommu, str]]:
    store = RamStore()
    store.segments[RAM] = ram
    async with serving_fake_iommu(str(dirs.run / "iommu.sock"), store) as served:
        yield served


@pytest.fixture
def fake(iommu: tuple[FakeIommu, str]) -> FakeIommu:
    return iommu[0]


@pytest.fixture
async def container(fake: FakeIommu) -> AsyncIterator[Container]:
    """The VM's container: all of RAM mapped at IOVA = offset, one mapping per MiB (as QEMU would)."""
    ctr = fake.mapper.create_container("vm0", IommuMode.EMULATED)
    try:
        ctr.register_segment(RAM, RAM_SIZE)
        ctr.map_dma_batch([DmaMapping(i, CHUNK, RAM, i, PROT_RW) for i in range(0, RAM_SIZE, CHUNK)])
        yield ctr
    finally:
        with contextlib.suppress(NotFound):  # a test may have destroyed it
            await fake.mapper.destroy_container(ctr.container_id, force=True)


@pytest.fixture
async def service(
    dirs: Dirs, iommu: tuple[FakeIommu, str], container: Container
) -> AsyncIterator[HostService]:
    """A started HostService (GPU threads, broker) over the fake iommu_type2."""
    channel = open_channel(iommu[1])
    broker = ChannelBroker(dirs.run / "chan.sock")
    host = HostService(
        GfxHost(default_host_config()), IommuClient(channel), SegmentCache(dirs.shm), broker, dirs.shm
    )
    try:
        async with asyncio.timeout(30):  # a loaded machine may be slow to answer the first connect
            await channel.channel_ready()
        await broker.start()
        host.start()
        yield host
    finally:
        await host.stop()
        await broker.stop()
        await channel.close()


@dataclass
class OpenVgpu:
    """A vGPU opened in ``container`` and attached by a frontend: its port and a guest driver."""

    uuid: str
    token: str
    port: GuestPort
    guest: GuestDriver


@pytest.fixture
async def opened(
    service: HostService, container: Container, dirs: Dirs, ram: Segment
) -> AsyncIterator[OpenVgpu]:
    """vGPU ``U1`` (``T4`` on the GVT-g GPU), opened, its channel attached by a frontend."""
    service.create(U1, GVT, T4)
    token = await service.open_device(U1, container.container_id)
    port = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    view = ram.buf[:]
    try:
        yield OpenVgpu(U1, token, port, GuestDriver(port, view))
    finally:
        view.release()
        port.close()


# ---- the servicers on a real server ----------------------------------------------------------


@pytest.fixture
async def server(service: HostService, dirs: Dirs) -> AsyncIterator[ServerHandle]:
    """Both servicers of ``service`` on a real grpc.aio server (UNIX socket), as ``amain`` serves them."""
    config = GfxHostConfig(state_dir=dirs.run / "state", log_format="text", metrics_port=-1, stop_grace_s=0.5)
    async with running_server("gfx_host", config, add_services(service)) as handle:
        yield handle


@dataclass
class Stubs:
    vendor: pb_grpc.VendorServiceStub
    host: pb_grpc.GfxHostServiceStub


@pytest.fixture
async def stubs(server: ServerHandle) -> AsyncIterator[Stubs]:
    async with server.channel() as channel:
        yield Stubs(pb_grpc.VendorServiceStub(channel), pb_grpc.GfxHostServiceStub(channel))
