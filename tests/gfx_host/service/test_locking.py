"""The event loop never blocks on a GPU's lock: the service stays live while GTT pins are in flight.

A parent's lock is held by the loop's GTT work across the PinPages/UnpinPages RPCs it awaits
(``ParentRuntime.hold``).  The fake iommu_type2 holds a PinPages call at a gate.  Meanwhile a
scheduler RPC, or the open of another vGPU of the same GPU, needs that lock: it must wait for it
without blocking the loop (which would never resume the task holding the lock: a deadlock of the
whole service), so other RPCs are still served, and it completes once the pins come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.gfx_host.service.conftest import GVT, T8, U2, OpenVgpu, Stubs
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import HWS_IOVA
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as pb
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.host import HostService
from vgpusim.iommu_type2.core import Container

CALL_TIMEOUT_S = 5.0


@pytest.fixture
async def pins_in_flight(opened: OpenVgpu, fake: FakeIommu) -> AsyncIterator[asyncio.Event]:
    """A doorbell whose GTT pins are stuck in iommu_type2 until the yielded gate is set."""
    gate = fake.pin_gate = asyncio.Event()
    guest = opened.guest

    def drive() -> None:
        guest.bring_up()
        guest.submit(c.pack(c.store_seqno(9), c.user_interrupt()))
        opened.port.recv_irq(timeout=CALL_TIMEOUT_S * 2)

    driver = asyncio.create_task(asyncio.to_thread(drive))
    try:
        await fake.wait_for(lambda: bool(fake.of("PinPagesWaiting")))
        yield gate
        gate.set()
        await driver
        assert guest.ram_dword(HWS_IOVA) == 9  # the held workload ran once the pins came back
    finally:
        gate.set()
        fake.pin_gate = None
        if not driver.done():
            await asyncio.wait({driver}, timeout=CALL_TIMEOUT_S * 3)


async def test_scheduler_rpcs_wait_for_pins_without_blocking_the_loop(
    pins_in_flight: asyncio.Event, stubs: Stubs, opened: OpenVgpu
) -> None:
    got = asyncio.ensure_future(stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT)))
    changed = asyncio.ensure_future(
        stubs.host.SetScheduler(pb.SetSchedulerRequest(parent=GVT, policy=pb.SCHEDULER_POLICY_EQUAL_SHARE))
    )

    async with asyncio.timeout(CALL_TIMEOUT_S):
        shown = await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=opened.uuid))
    waiting = not got.done() and not changed.done()
    pins_in_flight.set()
    async with asyncio.timeout(CALL_TIMEOUT_S):
        answers = await asyncio.gather(got, changed)

    assert shown.vgpu.open and waiting
    assert answers[0].policy in (pb.SCHEDULER_POLICY_WEIGHTED, pb.SCHEDULER_POLICY_EQUAL_SHARE)  # either won
    assert answers[1].scheduler.policy == pb.SCHEDULER_POLICY_EQUAL_SHARE


async def test_another_vgpu_opens_once_the_pins_are_back(
    pins_in_flight: asyncio.Event, service: HostService, container: Container, fake: FakeIommu, stubs: Stubs
) -> None:
    service.create(U2, GVT, T8)
    other = fake.mapper.create_container("vm1", container.mode)

    opening = asyncio.ensure_future(service.open_device(U2, other.container_id))
    await fake.wait_for(lambda: bool(fake.of("WatchUnmap", U2)))
    async with asyncio.timeout(CALL_TIMEOUT_S):
        await stubs.host.ListGpus(pb.ListGpusRequest())
    pins_in_flight.set()
    async with asyncio.timeout(CALL_TIMEOUT_S):
        token = await opening

    assert token
