"""Register file behaviour through the vGPU's BAR0: PVINFO, rings and doorbells, GDRST,
interrupts, display plane, and the UNSUPPORTED_GUEST failsafe."""

from __future__ import annotations

from tests.gfx_host.helpers import GVT, MIB, NV, open_vgpu
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import DRM_FORMAT_XRGB8888
from vgpusim.gfx_host.core.registers import NO_EFFECT, Engine, FailsafeReason, WriteEffect
from vgpusim.gfx_host.core.vgpu import Vgpu

RCS_TAIL = r.ring_reg(Engine.RCS, r.RING_TAIL)
RCS_HEAD = r.ring_reg(Engine.RCS, r.RING_HEAD)
RCS_CTL = r.ring_reg(Engine.RCS, r.RING_CTL)


def read64(vgpu: Vgpu, off: int) -> int:
    return vgpu.mmio_read(off, 8)


def start_ring(vgpu: Vgpu, engine: Engine = Engine.RCS, start: int = 0x0800_0000) -> None:
    vgpu.mmio_write(r.ring_reg(engine, r.RING_START_LO), 8, start)
    vgpu.mmio_write(r.ring_reg(engine, r.RING_SIZE), 4, 16 * 4096)
    vgpu.mmio_write(r.ring_reg(engine, r.RING_CTL), 4, r.RING_CTL_ENABLE)


def test_scratch_and_sub_dword_access() -> None:
    vgpu, _, _ = open_vgpu()
    assert vgpu.mmio_write(r.SCRATCH, 4, 0xDEADBEEF) == NO_EFFECT
    assert vgpu.mmio_read(r.SCRATCH, 4) == 0xDEADBEEF
    assert vgpu.mmio_read(r.SCRATCH + 2, 2) == 0xDEAD and vgpu.mmio_read(r.SCRATCH + 1, 1) == 0xBE
    vgpu.mmio_write(r.SCRATCH + 1, 1, 0x00)
    assert vgpu.mmio_read(r.SCRATCH, 4) == 0xDEAD00EF


def test_pvinfo_describes_the_partition() -> None:
    vgpu, _, _ = open_vgpu(GVT, "GVTg_V5_4", notify=False)
    notified_before = vgpu.regs.pv_notified
    assert read64(vgpu, r.PV_MAGIC_LO) == r.PVINFO_MAGIC_VALUE
    assert (notified_before, vgpu.regs.pv_notified) == (False, True)
    p = vgpu.partition
    assert vgpu.mmio_read(r.PV_VERSION, 2) == 1 and vgpu.mmio_read(r.PV_VGPU_ID, 4) == p.vgpu_id == 1
    assert (read64(vgpu, r.PV_LOW_GM_BASE), read64(vgpu, r.PV_LOW_GM_SIZE)) == (128 * MIB, 128 * MIB)
    assert (read64(vgpu, r.PV_HIGH_GM_BASE), read64(vgpu, r.PV_HIGH_GM_SIZE)) == (p.high_gm.start, 512 * MIB)
    assert (vgpu.mmio_read(r.PV_FENCE_BASE, 4), vgpu.mmio_read(r.PV_FENCE_COUNT, 4)) == (4, 4)
    assert (vgpu.mmio_read(r.PV_DISPLAY_WIDTH, 4), vgpu.mmio_read(r.PV_DISPLAY_HEIGHT, 4)) == (1920, 1200)
    assert read64(vgpu, r.PV_GM_TOTAL) == 4096 * MIB and vgpu.mmio_read(r.PV_ENGINE_MASK, 4) == 0b11
    vgpu.mmio_write(r.PV_VGPU_ID, 4, 5)  # read-only
    assert vgpu.mmio_read(r.PV_VGPU_ID, 4) == 1
    vgpu.mmio_write(r.PV_DISPLAY_READY, 4, 1)
    assert vgpu.mmio_read(r.PV_DISPLAY_READY, 4) == 1


def test_pvinfo_of_a_framebuffer_model() -> None:
    vgpu, _, _ = open_vgpu(NV, "A10-2Q")
    assert (read64(vgpu, r.PV_LOW_GM_BASE), read64(vgpu, r.PV_LOW_GM_SIZE)) == (0, 2048 * MIB)
    assert read64(vgpu, r.PV_HIGH_GM_SIZE) == 0 and vgpu.mmio_read(r.PV_FENCE_COUNT, 4) == 0


def test_enabling_a_ring_before_reading_pvinfo_is_failsafe() -> None:
    vgpu, _, _ = open_vgpu(notify=False)
    effect = vgpu.mmio_write(RCS_CTL, 4, r.RING_CTL_ENABLE)
    assert effect.failsafe is FailsafeReason.UNSUPPORTED_GUEST
    assert vgpu.failsafe is FailsafeReason.UNSUPPORTED_GUEST
    assert not vgpu.regs.ring(Engine.RCS).enabled
    assert vgpu.mmio_write(RCS_TAIL, 4, 0x40) == NO_EFFECT  # failsafe: stored, no doorbell
    assert vgpu.mmio_read(RCS_TAIL, 4) == 0x40


def test_tail_write_rings_the_doorbell_only_when_enabled() -> None:
    vgpu, _, _ = open_vgpu()
    assert vgpu.mmio_write(RCS_TAIL, 4, 0x40) == NO_EFFECT
    effect = vgpu.mmio_write(RCS_CTL, 4, r.RING_CTL_ENABLE)  # head 0 != tail 0x40: pending work
    assert effect == WriteEffect(doorbells=frozenset({Engine.RCS}))
    assert vgpu.mmio_write(RCS_TAIL, 4, 0x80).doorbells == {Engine.RCS}
    ring = vgpu.regs.ring(Engine.RCS)
    assert (ring.tail, ring.enabled, ring.head) == (0x80, True, 0)
    assert vgpu.mmio_write(r.ring_reg(Engine.BCS, r.RING_TAIL), 4, 8) == NO_EFFECT
    assert vgpu.regs.statistics().doorbells_total == 2


def test_ring_registers_and_device_side() -> None:
    vgpu, _, _ = open_vgpu()
    start_ring(vgpu, start=0x0810_0FFF)
    ring = vgpu.regs.ring(Engine.RCS)
    assert (ring.start, ring.size) == (0x0810_0000, 16 * 4096)  # start is page aligned
    vgpu.mmio_write(RCS_HEAD, 4, 0x100)  # the GPU owns the head while the ring runs
    assert vgpu.mmio_read(RCS_HEAD, 4) == 0
    vgpu.mmio_write(RCS_TAIL, 4, 0x21)  # qword aligned
    assert vgpu.mmio_read(RCS_TAIL, 4) == 0x20
    status = r.ring_reg(Engine.RCS, r.RING_STATUS)
    assert vgpu.mmio_read(status, 4) == 0
    vgpu.regs.set_head(Engine.RCS, 0x20)
    assert vgpu.mmio_read(RCS_HEAD, 4) == 0x20 and vgpu.mmio_read(status, 4) == r.RING_STATUS_IDLE
    vgpu.regs.set_hung(Engine.RCS)
    assert vgpu.mmio_read(status, 4) == r.RING_STATUS_IDLE | r.RING_STATUS_HUNG
    vgpu.mmio_write(r.ring_reg(Engine.RCS, r.RING_SEQNO), 4, 99)  # read-only
    assert vgpu.mmio_read(r.ring_reg(Engine.RCS, r.RING_SEQNO), 4) == 0


def test_gdrst_resets_engines() -> None:
    vgpu, _, _ = open_vgpu()
    start_ring(vgpu, Engine.RCS)
    start_ring(vgpu, Engine.BCS)
    vgpu.regs.set_hung(Engine.RCS)
    effect = vgpu.mmio_write(r.GDRST, 4, r.gdrst_bit(Engine.RCS))
    assert effect == WriteEffect(resets=frozenset({Engine.RCS}))
    assert not vgpu.regs.ring(Engine.RCS).enabled and not vgpu.regs.ring(Engine.RCS).hung
    assert vgpu.regs.ring(Engine.BCS).enabled and vgpu.mmio_read(r.GDRST, 4) == 0
    assert vgpu.mmio_write(r.GDRST, 4, r.GDRST_FULL).resets == {Engine.RCS, Engine.BCS}
    assert vgpu.mmio_write(r.GDRST, 4, 0) == NO_EFFECT


def test_interrupts_enable_mask_ack() -> None:
    vgpu, _, _ = open_vgpu()
    regs = vgpu.regs
    assert vgpu.mmio_read(r.INT_MASK, 4) == 0xFFFF_FFFF
    assert not regs.complete(Engine.RCS, 1)  # not enabled: not even latched
    assert vgpu.mmio_read(r.INT_STATUS, 4) == 0
    vgpu.mmio_write(r.INT_ENABLE, 4, 0xFFFF_FFFF)
    assert not regs.complete(Engine.RCS, 2)  # latched but masked
    assert vgpu.mmio_read(r.INT_STATUS, 4) == 1
    assert vgpu.mmio_read(r.ring_reg(Engine.RCS, r.RING_SEQNO), 4) == 2
    assert vgpu.mmio_write(r.INT_MASK, 4, 0) == WriteEffect(irq=True)  # unmasking a pending bit
    assert not regs.complete(Engine.RCS, 3)  # still pending, not acked: no new MSI
    assert regs.complete(Engine.BCS, 1)
    vgpu.mmio_write(r.INT_ACK, 4, 0x1)  # write-1-to-clear
    assert vgpu.mmio_read(r.INT_STATUS, 4) == 0x2 and vgpu.mmio_read(r.INT_ACK, 4) == 0
    assert regs.complete(Engine.RCS, 4)  # acked, so a new MSI
    assert regs.statistics().irqs_total == 3


def test_display_plane_registers_and_flip() -> None:
    vgpu, _, _ = open_vgpu()
    vgpu.mmio_write(r.INT_ENABLE, 4, r.INT_FLIP_DONE)
    vgpu.mmio_write(r.INT_MASK, 4, 0)
    assert vgpu.mmio_write(r.PLANE_FORMAT, 4, DRM_FORMAT_XRGB8888) == WriteEffect(plane_changed=True)
    assert vgpu.mmio_write(r.PLANE_FORMAT, 4, DRM_FORMAT_XRGB8888) == NO_EFFECT
    vgpu.mmio_write(r.PLANE_WIDTH, 4, 640)
    vgpu.mmio_write(r.PLANE_HEIGHT, 4, 480)
    vgpu.mmio_write(r.PLANE_STRIDE, 4, 2560)
    assert vgpu.mmio_write(r.PLANE_BASE_LO, 8, 0x1_0800_0123) == WriteEffect(plane_changed=True)  # disabled
    assert vgpu.mmio_write(r.PLANE_CTL, 4, 0xFFFF_FFFF) == WriteEffect(plane_changed=True)
    plane = vgpu.regs.plane()
    assert (plane.enabled, plane.width, plane.height, plane.stride) == (True, 640, 480, 2560)
    assert plane.base == 0x1_0800_0000 and plane.drm_format == DRM_FORMAT_XRGB8888
    assert vgpu.mmio_read(r.PLANE_CTL, 4) == r.PLANE_CTL_ENABLE
    effect = vgpu.mmio_write(r.PLANE_BASE_LO, 4, 0x0900_0000)  # the flip
    assert effect == WriteEffect(plane_changed=True, irq=True)
    assert vgpu.mmio_read(r.INT_STATUS, 4) == r.INT_FLIP_DONE


def test_unknown_offsets_read_zero_and_are_counted() -> None:
    vgpu, _, _ = open_vgpu()
    assert vgpu.mmio_read(0x1000, 4) == 0 and vgpu.mmio_write(0x1000, 4, 1) == NO_EFFECT
    assert vgpu.mmio_read(4 * MIB, 4) == 0  # between registers and the GTT window
    stats = vgpu.statistics()
    assert stats.registers.unhandled_total == 2 and stats.mmio_unhandled_total == 1


def test_reset_restores_reset_values() -> None:
    vgpu, _, _ = open_vgpu()
    start_ring(vgpu)
    vgpu.mmio_write(r.SCRATCH, 4, 7)
    vgpu.regs.reset()
    assert vgpu.mmio_read(r.SCRATCH, 4) == 0 and not vgpu.regs.ring(Engine.RCS).enabled
    assert vgpu.mmio_read(r.INT_MASK, 4) == 0xFFFF_FFFF and not vgpu.regs.pv_notified
    assert vgpu.mmio_read(r.PV_VGPU_ID, 4) == 1
