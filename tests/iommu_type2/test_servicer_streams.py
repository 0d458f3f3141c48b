"""Contract tests of the long-lived calls: KeepAlive (owners) and WatchUnmap (the unmap handshake).

A real server and real clients; waiting for the server to notice a cancelled call is a bounded
loop of ListContainers calls (each one a round trip through the server's event loop), never a
sleep.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from vgpusim.common import clients
from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound, TimedOut, VgpusimError, WrongState
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.iommu_type2.config import IommuServiceConfig

if TYPE_CHECKING:
    from tests.iommu_type2.conftest import ServiceHarness

PAGE = 4096
MIB = 1 << 20
ROUND_TRIPS = 2000


async def _eventually(iommu: ServiceHarness, condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``condition`` with at most ``ROUND_TRIPS`` calls to the server in between."""
    for _ in range(ROUND_TRIPS):
        if await condition():
            return
        await iommu.call("ListContainers", pb.ListContainersRequest())
    raise AssertionError("condition not reached")


async def _owned(iommu: ServiceHarness, owner: str) -> list[str]:
    reply = await iommu.call("ListContainers", pb.ListContainersRequest(owner=owner))
    return [c.container_id for c in reply.containers]


async def _watched(iommu: ServiceHarness, *, pages: int = 8) -> str:
    """A container with 1 MiB at IOVA 0 and device ``vgpu0`` attached."""
    cid = await iommu.container()
    await iommu.map(cid, 0, MIB)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    return cid


async def test_keepalive_end_destroys_the_owners_containers(iommu: ServiceHarness) -> None:
    call = iommu.stub.KeepAlive(pb.KeepAliveRequest(owner="vm-k"))
    assert (await call.read()).owner == "vm-k"  # sent at once
    cid = await iommu.container("vm-k")
    await iommu.map(cid, 0, MIB)
    other = await iommu.container("vm-other", ram=None)
    call.cancel()

    async def gone() -> bool:
        return not await _owned(iommu, "vm-k")

    await _eventually(iommu, gone)
    assert await _owned(iommu, "vm-other") == [other]
    await _eventually(iommu, _no_segments(iommu))  # nothing registers "ram" any more


def _no_segments(iommu: ServiceHarness) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return iommu.service.store.names() == ()

    return check


async def test_keepalive_end_notifies_and_releases_the_owners_devices(iommu: ServiceHarness) -> None:
    call = iommu.stub.KeepAlive(pb.KeepAliveRequest(owner="vm0"))
    await call.read()
    cid = await _watched(iommu)
    async with iommu.watch(cid, "vgpu0") as watcher:
        await iommu.pin(cid, "vgpu0", 0, 4)
        call.cancel()
        await watcher.wait_ended()  # after the device was asked to unpin, and did
        assert watcher.events == [(1, 0, MIB)]
    assert await _owned(iommu, "vm0") == []
    assert iommu.service.mapper.statistics().totals.unpins_total == 4


async def test_keepalive_counts_the_calls_of_an_owner(iommu: ServiceHarness) -> None:
    first = iommu.stub.KeepAlive(pb.KeepAliveRequest(owner="vm-k"))
    second = iommu.stub.KeepAlive(pb.KeepAliveRequest(owner="vm-k"))
    await first.read()
    await second.read()
    cid = await iommu.container("vm-k", ram=None)
    keepalives = iommu.service.servicer.keepalives
    assert keepalives.count("vm-k") == 2
    first.cancel()

    async def one_left() -> bool:
        return keepalives.count("vm-k") == 1

    await _eventually(iommu, one_left)
    assert await _owned(iommu, "vm-k") == [cid]  # a reconnecting owner keeps its containers
    second.cancel()

    async def gone() -> bool:
        return not await _owned(iommu, "vm-k")

    await _eventually(iommu, gone)
    assert keepalives.count("vm-k") == 0


async def test_keepalive_needs_an_owner(iommu: ServiceHarness) -> None:
    with pytest.raises(InvalidArgument) as caught:
        async for _ in clients.stream(iommu.stub.KeepAlive, pb.KeepAliveRequest(), timeout=10):
            pass
    assert caught.value.reason == "BAD_NAME"


async def test_unmap_over_pins_waits_for_the_device_to_unpin(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    async with iommu.watch(cid, "vgpu0") as watcher:
        await iommu.pin(cid, "vgpu0", 4 * PAGE, 4)
        await iommu.pin(cid, "vgpu0", 4 * PAGE, 1)  # two references on one page: two rounds
        reply = await iommu.call(
            "UnmapDma", pb.UnmapDmaRequest(container_id=cid, range=pb.UnmapRange(iova=0, size=MIB))
        )
        assert reply.unmapped_bytes == MIB
        assert watcher.events == [(1, 0, MIB), (2, 0, MIB)]
    stats = (await iommu.info(cid)).statistics
    assert (stats.mappings, stats.pinned_pages, stats.notifications_total) == (0, 0, 2)


async def test_unmap_fails_when_the_device_never_acks(
    iommu_config: IommuServiceConfig, start_iommu: Callable[..., Any]
) -> None:
    config = dataclasses.replace(iommu_config, notify_timeout_s=0.2)
    async with start_iommu(config) as iommu:
        cid = await _watched(iommu)
        async with iommu.watch(cid, "vgpu0", unpin=False, ack=False) as watcher:
            await iommu.pin(cid, "vgpu0", 0, 2)
            request = pb.UnmapDmaRequest(container_id=cid, all=pb.UnmapAll())
            error = await iommu.fails("UnmapDma", request, TimedOut, "UNMAP_NOTIFY_TIMEOUT")
            assert (error.metadata["devices"], error.metadata["errno"]) == ("vgpu0", "ETIMEDOUT")
            assert watcher.events == [(1, 0, MIB)]
            stats = (await iommu.info(cid)).statistics
            assert (stats.mappings, stats.pinned_pages) == (1, 2)  # nothing unmapped
            destroy = pb.DestroyContainerRequest(container_id=cid)
            await iommu.fails("DestroyContainer", destroy, TimedOut, "UNMAP_NOTIFY_TIMEOUT")
        # the stream ended: the device's pins went with its registration, the unmap succeeds
        assert (await iommu.call("UnmapDma", request)).unmapped_bytes == MIB


async def test_unmap_gives_up_when_the_device_keeps_its_pins(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    async with iommu.watch(cid, "vgpu0", unpin=False) as watcher:
        await iommu.pin(cid, "vgpu0", PAGE, 3)
        request = pb.UnmapDmaRequest(container_id=cid, range=pb.UnmapRange(iova=0, size=MIB))
        error = await iommu.fails("UnmapDma", request, WrongState, "UNMAP_PINS_OUTSTANDING")
        assert (error.metadata["errno"], error.metadata["devices"]) == (
            errno.errorcode[errno.EDEADLK],
            "vgpu0",
        )
        assert error.metadata["pages"] == "vgpu0:0x1000/3"
        assert [sequence for sequence, _, _ in watcher.events] == [1, 2, 3]  # first + 2 retries
    assert (await iommu.info(cid)).statistics.notifications_total == 3


async def test_end_of_watch_drops_the_device_pins(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    async with iommu.watch(cid, "vgpu0"):
        await iommu.pin(cid, "vgpu0", 0, 8)

    async def unpinned() -> bool:
        return (await iommu.info(cid)).statistics.pinned_pages == 0

    await _eventually(iommu, unpinned)
    pin = pb.PinPagesRequest(container_id=cid, device="vgpu0", iova=0, npage=1, prot=pb.Prot(read=True))
    await iommu.fails("PinPages", pin, InvalidArgument, "NO_UNMAP_LISTENER")
    async with iommu.watch(cid, "vgpu0"):  # the device may register again
        await iommu.pin(cid, "vgpu0", 0, 1)


async def test_destroy_container_notifies_the_watching_device(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    async with iommu.watch(cid, "vgpu0") as watcher:
        await iommu.pin(cid, "vgpu0", 0, 16)
        reply = await iommu.call("DestroyContainer", pb.DestroyContainerRequest(container_id=cid))
        assert reply.unmapped_bytes == MIB
        assert watcher.events == [(1, 0, MIB)]
        await watcher.wait_ended()
    assert await _owned(iommu, "vm0") == []


async def _watch_error(iommu: ServiceHarness, *messages: pb.WatchUnmapRequest) -> VgpusimError:
    """Send ``messages`` on a new WatchUnmap call and return the error that ends it."""
    call = iommu.stub.WatchUnmap()

    async def drive() -> None:
        with clients.translate_errors("iommu_type2"):
            for message in messages:
                await call.write(message)
            while await call.read() is not grpc.aio.EOF:
                pass

    try:
        with pytest.raises(VgpusimError) as caught:
            await drive()
        return caught.value
    finally:
        call.cancel()


def _register(cid: str, device: str) -> pb.WatchUnmapRequest:
    return pb.WatchUnmapRequest(register=pb.UnmapRegistration(container_id=cid, device=device))


async def test_watch_unmap_registration_errors(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    cases: list[tuple[tuple[pb.WatchUnmapRequest, ...], type[VgpusimError], str]] = [
        ((_register("nope", "vgpu0"),), NotFound, "UNKNOWN_CONTAINER"),
        ((_register(cid, "vgpu9"),), NotFound, "DEVICE_NOT_ATTACHED"),
        ((pb.WatchUnmapRequest(ack=pb.UnmapAck(sequence=1)),), InvalidArgument, "REGISTER_FIRST"),
        ((_register(cid, "vgpu0"), _register(cid, "vgpu0")), InvalidArgument, "ALREADY_REGISTERED"),
        ((_register(cid, "vgpu0"), pb.WatchUnmapRequest()), InvalidArgument, "EMPTY_MESSAGE"),
    ]
    for messages, cls, reason in cases:
        error = await _watch_error(iommu, *messages)
        assert (type(error), error.reason) == (cls, reason)
    async with iommu.watch(cid, "vgpu0"):
        error = await _watch_error(iommu, _register(cid, "vgpu0"))
        assert (type(error), error.reason) == (AlreadyExists, "ALREADY_WATCHING")


async def test_watch_unmap_ends_when_the_client_half_closes(iommu: ServiceHarness) -> None:
    cid = await _watched(iommu)
    call = iommu.stub.WatchUnmap()
    await call.write(_register(cid, "vgpu0"))
    assert (await call.read()).WhichOneof("kind") == "registered"
    await iommu.pin(cid, "vgpu0", 0, 2)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    assert (await iommu.info(cid)).statistics.pinned_pages == 0  # unregistered: pins dropped
