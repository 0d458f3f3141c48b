"""vGPU lifecycle (transition table), access rules, DMLR reset, failsafe and the aperture."""

from __future__ import annotations

import pytest

from tests.gfx_host.helpers import GVT, MIB, NV, gtt_offset, make_vgpu, open_vgpu, pte
from vgpusim.common.errors import Busy, InvalidArgument, WrongState
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.fakes import FakeHostMemory, FakePinner
from vgpusim.gfx_host.core.gtt import GttFault
from vgpusim.gfx_host.core.pci import PCI_COMMAND
from vgpusim.gfx_host.core.registers import NO_EFFECT, Engine, FailsafeReason
from vgpusim.gfx_host.core.vgpu import (
    TRANSITIONS,
    VgpuEvent,
    VgpuState,
    aperture_bar_size,
    next_state,
)

LOW = 128 * MIB


@pytest.mark.parametrize("state", list(VgpuState))
@pytest.mark.parametrize("event", list(VgpuEvent))
def test_transition_table(state: VgpuState, event: VgpuEvent) -> None:
    expected = TRANSITIONS.get((state, event))
    if expected is not None:
        assert next_state(state, event) is expected
    elif state is VgpuState.OPEN:
        with pytest.raises(Busy):
            next_state(state, event)
    else:
        with pytest.raises(WrongState):
            next_state(state, event)


def test_access_needs_an_open_vgpu() -> None:
    vgpu = make_vgpu()
    with pytest.raises(WrongState) as exc:
        vgpu.mmio_read(r.SCRATCH, 4)
    assert exc.value.reason == "DEVICE_NOT_OPEN"
    with pytest.raises(WrongState):
        vgpu.config_write(PCI_COMMAND, 2, 2)


async def test_open_release_reopen() -> None:
    vgpu, pinner, memory = open_vgpu()
    assert (vgpu.state, vgpu.container) == (VgpuState.OPEN, "container-1")
    with pytest.raises(Busy) as exc:
        vgpu.open("container-2", pinner, memory)
    assert exc.value.reason == "DEVICE_ALREADY_OPEN"
    vgpu.config_write(PCI_COMMAND, 2, 6)
    vgpu.mmio_write(r.SCRATCH, 4, 1)
    vgpu.mmio_write(gtt_offset(LOW), 8, pte(3))
    await vgpu.gtt.apply_pending()
    await vgpu.release()
    assert (vgpu.state, vgpu.container, pinner.pinned) == (VgpuState.CREATED, None, set())
    with pytest.raises(WrongState):
        await vgpu.release()
    vgpu.open("container-2", FakePinner(), None)  # open resets the device model
    assert vgpu.mmio_read(r.SCRATCH, 4) == 0 and vgpu.config_read(PCI_COMMAND, 2) == 0


async def test_destroy_only_when_closed() -> None:
    vgpu, _, _ = open_vgpu()
    with pytest.raises(Busy) as exc:
        vgpu.destroy()
    assert exc.value.reason == "DEVICE_OPEN"
    await vgpu.release()
    vgpu.destroy()
    assert vgpu.state is VgpuState.DESTROYED
    with pytest.raises(WrongState):
        await vgpu.reset()


async def test_dmlr_keeps_the_allocation_and_clears_the_rest() -> None:
    vgpu, pinner, _ = open_vgpu()
    partition = vgpu.partition
    vgpu.mmio_write(r.ring_reg(Engine.RCS, r.RING_CTL), 4, r.RING_CTL_ENABLE)
    vgpu.mmio_write(gtt_offset(LOW), 8, pte(3))
    await vgpu.gtt.apply_pending()
    vgpu.config_write(PCI_COMMAND, 2, 6)
    vgpu.enter_failsafe(FailsafeReason.GUEST_ERROR)
    await vgpu.reset()
    assert vgpu.partition == partition and vgpu.state is VgpuState.OPEN and vgpu.failsafe is None
    assert pinner.pinned == set() and vgpu.mmio_read(gtt_offset(LOW), 8) == 0
    assert not vgpu.regs.ring(Engine.RCS).enabled and vgpu.config_read(PCI_COMMAND, 2) == 0
    assert vgpu.mmio_read(r.PV_VGPU_ID, 4) == partition.vgpu_id  # PVINFO rewritten
    assert vgpu.statistics().resets_total == 1


def test_failsafe_drops_effects_and_gtt_writes_until_dmlr() -> None:
    vgpu, _, _ = open_vgpu()
    vgpu.mmio_write(r.ring_reg(Engine.RCS, r.RING_CTL), 4, r.RING_CTL_ENABLE)
    vgpu.enter_failsafe(FailsafeReason.GUEST_ERROR)
    vgpu.enter_failsafe(FailsafeReason.INSUFFICIENT_RESOURCE)  # the first reason is kept
    assert vgpu.failsafe is FailsafeReason.GUEST_ERROR
    assert vgpu.mmio_write(r.ring_reg(Engine.RCS, r.RING_TAIL), 4, 0x40) == NO_EFFECT
    assert vgpu.mmio_write(gtt_offset(LOW), 8, pte(3)) == NO_EFFECT
    assert vgpu.mmio_read(gtt_offset(LOW), 8) == 0
    assert vgpu.statistics().failsafe_drops_total == 2


async def test_aperture_reads_and_writes_through_the_gtt() -> None:
    vgpu, _, memory = open_vgpu()
    vgpu.mmio_write(gtt_offset(LOW), 8, pte(7))
    vgpu.mmio_write(gtt_offset(LOW + 4096), 8, pte(8))
    await vgpu.gtt.apply_pending()
    vgpu.aperture_write(4090, b"hello world!")
    assert memory.segments["ram"][7 * 4096 + 4090 : 8 * 4096 + 6] == b"hello world!"
    assert vgpu.aperture_read(4090, 12) == b"hello world!"
    with pytest.raises(GttFault):
        vgpu.aperture_read(2 * 4096, 1)  # not present
    with pytest.raises(InvalidArgument):
        vgpu.aperture_read(128 * MIB - 1, 2)


def test_aperture_needs_guest_memory() -> None:
    vgpu = make_vgpu()
    vgpu.open("c", FakePinner(FakeHostMemory()), None)
    with pytest.raises(WrongState):
        vgpu.aperture_read(0, 1)


def test_bar_sizes() -> None:
    assert (make_vgpu(GVT, "GVTg_V5_8").bar2_size, make_vgpu(GVT, "GVTg_V5_1").bar2_size) == (
        64 * MIB,
        512 * MIB,
    )
    nv = make_vgpu(NV, "A10-3Q")
    assert (nv.bar0_size, nv.bar2_size) == (64 * MIB, 4096 * MIB)
    assert aperture_bar_size(1) == 4096


def test_mmio_bounds() -> None:
    vgpu, _, _ = open_vgpu()
    with pytest.raises(InvalidArgument):
        vgpu.mmio_read(vgpu.bar0_size, 4)
    assert vgpu.mmio_read(vgpu.bar0_size - 8, 8) == 0  # the last GTT entry (outside the partition)
