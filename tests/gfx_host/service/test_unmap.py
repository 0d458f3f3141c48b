"""The ``dma_unmap`` path: iommu_type2 unmaps pinned guest RAM, gfx_host unpins and acknowledges.

The unmap is issued on the fake's real mapper (``container.unmap_dma``), which sends an
``UnmapEvent`` on gfx_host's ``WatchUnmap`` stream and completes only once gfx_host has unpinned
the range and acknowledged, exactly as the kernel's type1 waits for ``dma_unmap``.
"""

from __future__ import annotations

import asyncio
import time

from tests.gfx_host.service.conftest import RAM, U1, OpenVgpu
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import CHUNK, DATA_GM_OFFSET, DATA_IOVA, GuestDriver
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.host import HostService
from vgpusim.gfx_host.servicer import vgpu_pb
from vgpusim.iommu_type2.core import PROT_RW, Container, DmaMapping

IRQ_TIMEOUT_S = 5.0


async def pin_ring_pages(guest: GuestDriver) -> None:
    """Bring the vGPU up and ring one doorbell: its GTT entries get pinned before the audit."""
    await asyncio.to_thread(guest.bring_up)
    await asyncio.to_thread(
        guest.submit, c.pack(c.store_dword(guest.gm(DATA_GM_OFFSET), 1), c.user_interrupt())
    )
    await asyncio.to_thread(guest.port.recv_irq, timeout=IRQ_TIMEOUT_S)
    await asyncio.to_thread(guest.write, r.INT_ACK, r.int_complete(r.Engine.RCS))


async def test_an_unmap_of_pinned_ram_is_unpinned_then_acknowledged(
    opened: OpenVgpu, container: Container, fake: FakeIommu
) -> None:
    await pin_ring_pages(opened.guest)
    assert container.statistics().pinned_pages == 3

    result = await container.unmap_dma(DATA_IOVA, CHUNK)

    assert result.unmapped_bytes == CHUNK
    assert container.statistics().pinned_pages == 2
    rpcs = [call.rpc for call in fake.calls]
    event, unpin, ack = rpcs.index("UnmapEvent"), rpcs.index("UnpinPages"), rpcs.index("UnmapAck")
    assert event < unpin < ack
    assert (fake.calls[unpin].iova, fake.calls[unpin].npage) == (DATA_IOVA, 1)
    assert fake.calls[ack].sequence == fake.calls[event].sequence
    assert (fake.calls[event].iova, fake.calls[event].npage) == (DATA_IOVA, CHUNK)  # npage holds the size


async def test_after_an_unmap_the_gpu_cannot_reach_the_page(
    opened: OpenVgpu, container: Container, service: HostService
) -> None:
    guest = opened.guest
    await pin_ring_pages(guest)
    await container.unmap_dma(DATA_IOVA, CHUNK)

    await asyncio.to_thread(
        guest.submit, c.pack(c.store_dword(guest.gm(DATA_GM_OFFSET), 2), c.user_interrupt())
    )
    hung = await wait_for_ring_status(guest, r.RING_STATUS_HUNG)

    assert hung
    assert guest.ram_dword(DATA_IOVA) == 1  # the first workload's store, not the second's
    shown = vgpu_pb(service, service.host.find_vgpu(U1))
    assert (shown.workloads_total, shown.hangs_total) == (2, 1)


async def test_an_unmap_elsewhere_leaves_the_vgpu_alone(
    opened: OpenVgpu, container: Container, fake: FakeIommu
) -> None:
    await pin_ring_pages(opened.guest)

    result = await container.unmap_dma(8 * CHUNK, CHUNK)

    assert result.unmapped_bytes == CHUNK
    assert fake.of("UnmapEvent") == []
    assert container.statistics().pinned_pages == 3


async def wait_for_ring_status(guest: GuestDriver, bit: int, *, timeout: float = 5.0) -> bool:
    """Poll RING_STATUS until ``bit`` is set, as a guest driver does for a hang (it raises no
    interrupt); bounded by ``timeout``."""

    def poll() -> bool:
        deadline = time.monotonic() + timeout
        while not guest.ring_reg(r.RING_STATUS) & bit:
            if time.monotonic() > deadline:
                raise AssertionError(f"RING_STATUS bit {bit:#x} not set within {timeout} s")
            time.sleep(0.002)
        return True

    return await asyncio.to_thread(poll)


async def test_a_hung_engine_recovers_after_an_engine_reset(opened: OpenVgpu, container: Container) -> None:
    guest = opened.guest
    await pin_ring_pages(guest)
    await container.unmap_dma(DATA_IOVA, CHUNK)
    await asyncio.to_thread(
        guest.submit, c.pack(c.store_dword(guest.gm(DATA_GM_OFFSET), 2), c.user_interrupt())
    )
    await wait_for_ring_status(guest, r.RING_STATUS_HUNG)

    container.map_dma(DmaMapping(DATA_IOVA, CHUNK, RAM, DATA_IOVA, PROT_RW))  # the VM maps it back
    await asyncio.to_thread(guest.write, r.GDRST, r.gdrst_bit(r.Engine.RCS))
    status = await asyncio.to_thread(guest.ring_reg, r.RING_STATUS)
    guest.tail = 0
    await asyncio.to_thread(guest.start_ring)  # rewrites the GTT entries too
    commands = c.pack(c.store_dword(guest.gm(DATA_GM_OFFSET), 3), c.store_seqno(3), c.user_interrupt())
    await asyncio.to_thread(guest.submit, commands)
    irq = await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    assert status == r.RING_STATUS_IDLE  # registers zeroed, hang cleared
    assert irq.seq == 2
    assert guest.ram_dword(DATA_IOVA) == 3
