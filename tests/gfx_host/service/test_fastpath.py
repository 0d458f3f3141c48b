"""The guest's view of an open vGPU through the shared-memory channel: registers, GTT, rings, MSIs.

A frontend attached with the broker token drives the vGPU as a guest driver would (blocking
calls, run in a thread); assertions are on what the guest sees (register values, interrupts,
guest RAM) and on what the operator sees (``GetVgpu`` fields through the servicer's converter).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.gfx_host.service.conftest import GVT, U2, Dirs, OpenVgpu
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import (
    DATA_GM_OFFSET,
    DATA_IOVA,
    HWS_IOVA,
    MIB,
    RING_IOVA,
    GuestDriver,
    connect,
    pte,
)
from vgpusim.common.errors import InvalidArgument
from vgpusim.common.shm.errors import RingEmpty
from vgpusim.common.shm.segment import Segment
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.models import load_model
from vgpusim.gfx_host.core.vgpu import REGION_CONFIG
from vgpusim.gfx_host.host import HostService
from vgpusim.gfx_host.runtime import IRQ_INTX, IRQ_MSI
from vgpusim.gfx_host.servicer import vgpu_pb
from vgpusim.iommu_type2.core import Container

IRQ_TIMEOUT_S = 5.0
GVT_MODEL = load_model("gvtg-skl")
STORED = 0xDEADBEEF


def workload(guest: GuestDriver, seqno: int, value: int = STORED) -> bytes:
    """STORE_DWORD into the data page, STORE_SEQNO, USER_INTERRUPT."""
    return c.pack(
        c.store_dword(guest.gm(DATA_GM_OFFSET) + 0x10, value), c.store_seqno(seqno), c.user_interrupt()
    )


def assert_no_irq(guest: GuestDriver) -> None:
    """No interrupt is waiting (call after a read, which orders after the trap handling)."""
    with pytest.raises(RingEmpty):
        guest.port.irqs.recv_nowait()


async def test_config_space_shows_the_model_identity(opened: OpenVgpu) -> None:
    port = opened.port

    vendor = await asyncio.to_thread(port.read, REGION_CONFIG, 0x00, 2)
    device = await asyncio.to_thread(port.read, REGION_CONFIG, 0x02, 2)

    assert (vendor, device) == (GVT_MODEL.vendor_id, GVT_MODEL.device_id)


async def test_pvinfo_describes_the_partition(opened: OpenVgpu, service: HostService) -> None:
    guest = opened.guest
    vgpu = service.host.find_vgpu(opened.uuid)

    magic = await asyncio.to_thread(guest.probe)
    vgpu_id = await asyncio.to_thread(guest.read, r.PV_VGPU_ID)
    low_size = await asyncio.to_thread(guest.read, r.PV_LOW_GM_SIZE, 8)

    assert magic == r.PVINFO_MAGIC_VALUE
    assert (vgpu_id, guest.gm_base, low_size) == (
        vgpu.partition.vgpu_id,
        vgpu.partition.low_gm.start,
        vgpu.partition.low_gm.size,
    )


async def test_a_bad_access_fails_that_read_only(opened: OpenVgpu) -> None:
    guest = opened.guest

    with pytest.raises(InvalidArgument) as exc:
        await asyncio.to_thread(guest.read, r.SCRATCH + 2, 4)  # misaligned
    await asyncio.to_thread(guest.write, r.SCRATCH, 0x1234_5678)

    assert exc.value.reason == "MMIO_BAD_ACCESS"
    assert await asyncio.to_thread(guest.read, r.SCRATCH) == 0x1234_5678


async def test_gtt_entries_read_back(opened: OpenVgpu) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.probe)
    entry = r.GTT_OFFSET + (guest.gm(0x5000) >> 12) * 8

    await asyncio.to_thread(guest.map_gtt, guest.gm(0x5000), DATA_IOVA)
    whole = await asyncio.to_thread(guest.read, entry, 8)
    low = await asyncio.to_thread(guest.read, entry, 4)

    assert whole == pte(DATA_IOVA)
    assert low == pte(DATA_IOVA) & 0xFFFF_FFFF


async def test_a_workload_runs_and_raises_an_msi(
    opened: OpenVgpu, service: HostService, fake: FakeIommu
) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)

    tail = await asyncio.to_thread(guest.submit, workload(guest, seqno=7))
    irq = await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    assert (irq.index, irq.vector, irq.seq) == (IRQ_MSI, 0, 1)
    assert guest.ram_dword(DATA_IOVA + 0x10) == STORED
    assert guest.ram_dword(HWS_IOVA) == 7
    assert await asyncio.to_thread(guest.ring_reg, r.RING_HEAD) == tail
    assert await asyncio.to_thread(guest.ring_reg, r.RING_SEQNO) == 7
    status = await asyncio.to_thread(guest.ring_reg, r.RING_STATUS)
    assert status == r.RING_STATUS_IDLE
    assert await asyncio.to_thread(guest.read, r.INT_STATUS) == r.int_complete(r.Engine.RCS)
    pinned = sorted(call.iova for call in fake.of("PinPages", opened.uuid))
    assert pinned == [RING_IOVA, HWS_IOVA, DATA_IOVA]
    shown = vgpu_pb(service, service.host.find_vgpu(opened.uuid))
    assert (shown.workloads_total, shown.hangs_total, shown.audit_rejections_total) == (1, 0, 0)


async def test_the_next_msi_needs_the_previous_one_acked(opened: OpenVgpu) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)
    await asyncio.to_thread(guest.submit, workload(guest, seqno=1))
    await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    await asyncio.to_thread(guest.write, r.INT_ACK, r.int_complete(r.Engine.RCS))
    await asyncio.to_thread(guest.submit, workload(guest, seqno=2, value=0x2222))
    irq = await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    assert irq.seq == 2
    assert guest.ram_dword(DATA_IOVA + 0x10) == 0x2222
    assert guest.ram_dword(HWS_IOVA) == 2


async def test_without_msi_the_interrupt_is_intx(opened: OpenVgpu) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.probe)
    await asyncio.to_thread(guest.enable_completion_irq)
    await asyncio.to_thread(guest.start_ring)

    await asyncio.to_thread(guest.submit, workload(guest, seqno=1))
    irq = await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    assert irq.index == IRQ_INTX


async def test_an_audit_violation_puts_the_vgpu_in_failsafe(opened: OpenVgpu, service: HostService) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)
    assert guest.gm_base > 0  # GM 0 is the host's, outside every vGPU partition

    await asyncio.to_thread(guest.submit, c.pack(c.store_dword(0, 1), c.user_interrupt()))
    head = await asyncio.to_thread(guest.ring_reg, r.RING_HEAD)  # ordered after the doorbell

    assert head == 0
    assert_no_irq(guest)
    shown = vgpu_pb(service, service.host.find_vgpu(opened.uuid))
    assert shown.failsafe_reason == "GUEST_ERROR"
    assert (shown.audit_rejections_total, shown.workloads_total) == (1, 0)


async def test_later_doorbells_of_a_failsafe_vgpu_do_nothing(opened: OpenVgpu, service: HostService) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)
    unknown_opcode = (0xFF << 24,)
    await asyncio.to_thread(guest.submit, c.pack(unknown_opcode, c.user_interrupt()))

    await asyncio.to_thread(guest.submit, workload(guest, seqno=3))
    head = await asyncio.to_thread(guest.ring_reg, r.RING_HEAD)

    assert head == 0
    assert guest.ram_dword(DATA_IOVA + 0x10) == 0
    assert_no_irq(guest)
    assert vgpu_pb(service, service.host.find_vgpu(opened.uuid)).failsafe_reason == "GUEST_ERROR"


async def test_enabling_a_ring_before_reading_pvinfo_is_refused(
    opened: OpenVgpu, service: HostService
) -> None:
    guest = opened.guest

    await asyncio.to_thread(guest.write, r.ring_reg(r.Engine.RCS, r.RING_CTL), r.RING_CTL_ENABLE)
    ctl = await asyncio.to_thread(guest.ring_reg, r.RING_CTL)

    assert ctl == 0
    assert vgpu_pb(service, service.host.find_vgpu(opened.uuid)).failsafe_reason == "UNSUPPORTED_GUEST"


async def test_a_device_reset_leaves_failsafe(opened: OpenVgpu, service: HostService) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.write, r.ring_reg(r.Engine.RCS, r.RING_CTL), r.RING_CTL_ENABLE)
    await asyncio.to_thread(guest.read, r.SCRATCH)

    await service.reset(opened.uuid)
    guest.tail = 0
    await asyncio.to_thread(guest.bring_up)
    await asyncio.to_thread(guest.submit, workload(guest, seqno=5))
    irq = await asyncio.to_thread(opened.port.recv_irq, timeout=IRQ_TIMEOUT_S)

    assert irq.index == IRQ_MSI
    assert guest.ram_dword(HWS_IOVA) == 5
    assert vgpu_pb(service, service.host.find_vgpu(opened.uuid)).failsafe_reason == ""


async def test_two_vgpus_of_one_gpu_each_get_their_own_completions(
    opened: OpenVgpu, service: HostService, container: Container, dirs: Dirs, ram: Segment
) -> None:
    service.create(U2, GVT, "i915-GVTg_V5_8")
    token = await service.open_device(U2, container.container_id)  # a VM with two vGPUs
    port2 = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    view = ram.buf[:]
    try:
        first, second = opened.guest, GuestDriver(port2, view, base=4 * MIB)
        await asyncio.gather(asyncio.to_thread(first.bring_up), asyncio.to_thread(second.bring_up))

        def run(guest: GuestDriver, value: int, seqno: int) -> int:
            for n in range(1, 4):  # three workloads each, interleaved with the other vGPU's
                guest.submit(workload(guest, seqno=seqno + n, value=value + n))
                guest.port.recv_irq(timeout=IRQ_TIMEOUT_S)
                guest.write(r.INT_ACK, r.int_complete(guest.engine))
            return guest.ring_reg(r.RING_SEQNO)

        seqnos = await asyncio.gather(
            asyncio.to_thread(run, first, 0x1000, 100), asyncio.to_thread(run, second, 0x2000, 200)
        )

        assert list(seqnos) == [103, 203]
        assert first.ram_dword(first.data_iova + 0x10) == 0x1003
        assert second.ram_dword(second.data_iova + 0x10) == 0x2003
        assert second.ram_dword(second.hws_iova) == 203
    finally:
        view.release()
        port2.close()
