"""GuestDriver against the real device model and engine: init, submit/wait, wrap, hangs, display."""

from __future__ import annotations

import dataclasses

import pytest

from vgpusim.common.errors import InvalidArgument, TooBig, WrongState
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import DRM_FORMAT_XRGB8888
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.registers import Engine, FailsafeReason
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.core.regions import MmioPort
from vgpusim.qemu_frontend.guest.config import DeviceFailsafe, DriverConfig, display_mode
from vgpusim.qemu_frontend.guest.driver import GuestDriver
from vgpusim.qemu_frontend.guest.env import REGION_BAR0
from vgpusim.qemu_frontend.guest.testing import IRQ_MSI, NVIDIA_PARENT, SimulatedVgpu


def _store(driver: GuestDriver, offset: int, value: int) -> bytes:
    assert driver.scratch is not None
    return c.pack(c.store_dword(driver.scratch.gm + offset, value))


def test_init_programs_rings_interrupts_and_memory(sim: SimulatedVgpu, driver: GuestDriver) -> None:
    low = sim.vgpu.partition.low_gm
    assert driver.engines == (Engine.RCS, Engine.BCS)
    for engine in driver.engines:
        state, ring = sim.vgpu.regs.ring(engine), driver.ring(engine)
        assert (state.start, state.size, state.hws) == (ring.buffer.gm, 16 * 1024, ring.hws.gm)
        assert state.enabled and state.head == state.tail == 0 and not state.hung
    bits = r.INT_FLIP_DONE | 0b11 | 0b11 << 8
    assert sim.vgpu.regs.read(r.INT_ENABLE, 4) == bits
    assert sim.vgpu.regs.read(r.INT_MASK, 4) == ~bits & 0xFFFF_FFFF
    assert driver.mode == (1024, 768, 4096) and len(driver.framebuffers) == 2
    for buffer in driver.gtt.buffers:
        assert low.start <= buffer.gm and buffer.gm_end <= low.end
    assert sim.vgpu.failsafe is None


def test_submit_wait_and_interrupt(sim: SimulatedVgpu, driver: GuestDriver) -> None:
    seqno = driver.submit(Engine.RCS, _store(driver, 0, 0xDEAD_BEEF))
    assert not driver.is_complete(seqno)  # the lazy engine has not run yet
    assert driver.wait(seqno)
    assert driver.scratch is not None and sim.env.read_u32(driver.scratch.gpa) == 0xDEAD_BEEF
    assert driver.completed(Engine.RCS) == seqno == driver.seqno_register(Engine.RCS)
    assert sim.irq_log == [IRQ_MSI]
    assert sim.vgpu.regs.read(r.INT_STATUS, 4) == 0  # acknowledged
    stats = driver.statistics()
    assert (stats.submissions, stats.commands_submitted, stats.interrupts_received) == (1, 1, 1)
    assert stats.first_irq_latency_us is not None and stats.first_irq_latency_us > 0
    assert driver.wait(seqno) and driver.is_complete(seqno)  # retired: immediate


def test_both_engines_and_gm_helpers(sim: SimulatedVgpu, driver: GuestDriver) -> None:
    assert driver.scratch is not None
    a = driver.submit(Engine.RCS, _store(driver, 0, 1))
    b = driver.submit(Engine.BCS, _store(driver, 4, 2))
    assert driver.idle()
    assert driver.is_complete(a) and driver.is_complete(b)
    assert driver.read_gm(driver.scratch.gm, 8) == (1).to_bytes(4, "little") + (2).to_bytes(4, "little")
    driver.write_gm(driver.scratch.gm + 8, b"\x01\x02\x03\x04")
    assert sim.env.read_u32(driver.gm_to_gpa(driver.scratch.gm + 8)) == 0x0403_0201
    assert driver.gpa_to_gm(driver.scratch.gpa) == driver.scratch.gm


class _TailWatch:
    """An MmioPort that checks, at every doorbell, that the new commands did not overrun the head."""

    def __init__(self, inner: MmioPort, sim: SimulatedVgpu, engine: Engine) -> None:
        self.inner, self.sim, self.engine = inner, sim, engine
        self.tail_reg = r.ring_reg(engine, r.RING_TAIL)
        self.prev = 0
        self.doorbells = self.wraps = 0

    def read(self, region: int, offset: int, size: int) -> int:
        return self.inner.read(region, offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        if region == REGION_BAR0 and offset == self.tail_reg:
            state = self.sim.vgpu.regs.ring(self.engine)
            if state.enabled:
                head = self.sim.submitted.get(self.engine, state.head)
                unconsumed = (self.prev - state.head) % state.size
                written = (value - self.prev) % state.size
                assert unconsumed + written < state.size, "the tail overran the head"
                assert head == self.prev
                self.doorbells += 1
                self.wraps += value < self.prev
            self.prev = value
        self.inner.write(region, offset, size, value)


def test_ring_wraps_over_many_submissions_without_overrunning_the_head(sim: SimulatedVgpu) -> None:
    watch = _TailWatch(sim.env.port, sim, Engine.RCS)
    env = dataclasses.replace(sim.env, port=watch)
    driver = GuestDriver(env, DriverConfig(ring_size=4096))
    driver.init()
    scratch = driver.scratch
    assert scratch is not None
    seqnos = []
    for i in range(600):
        stores = [c.store_dword(scratch.gm + 4 * (3 * i + k), i << 8 | k) for k in range(1 + i % 3)]
        seqnos.append(driver.submit(Engine.RCS, c.pack(*stores)))
    assert driver.idle()
    assert all(driver.is_complete(s) for s in seqnos)
    for i in range(600):
        for k in range(1 + i % 3):
            assert sim.env.read_u32(scratch.gpa + 4 * (3 * i + k)) == i << 8 | k
    assert watch.doorbells == 600 and watch.wraps >= 5
    stats = driver.statistics()
    assert (stats.hangs_detected, stats.resets) == (0, 0)
    assert stats.interrupts_received >= 5  # the ring filled up: the driver slept until the head moved
    assert sim.rejections == []


def test_batches_are_reused_after_their_request_retired(sim: SimulatedVgpu) -> None:
    driver = GuestDriver(sim.env, DriverConfig(batches=2, framebuffers=0))
    driver.init()
    seqnos = [driver.submit_batch(Engine.BCS, _store(driver, 4 * i, 100 + i)) for i in range(7)]
    assert driver.wait(seqnos[-1])
    assert driver.scratch is not None
    assert [sim.env.read_u32(driver.scratch.gpa + 4 * i) for i in range(7)] == list(range(100, 107))
    assert driver.statistics().commands_submitted == 7


def test_submission_errors(sim: SimulatedVgpu) -> None:
    driver = GuestDriver(sim.env)
    with pytest.raises(WrongState):
        driver.submit(Engine.RCS, c.pack(c.noop()))
    driver.init()
    with pytest.raises(InvalidArgument):
        driver.submit(Engine.RCS, b"\0\0")
    with pytest.raises(TooBig):
        driver.submit(Engine.RCS, bytes(8 * 1024))
    with pytest.raises(TooBig):
        driver.submit_batch(Engine.RCS, bytes(64 * 1024))
    with pytest.raises(InvalidArgument):
        driver.submit(Engine.VCS, c.pack(c.noop()))  # this model has no video engine
    with pytest.raises(WrongState):
        driver.init()


def test_hang_detected_engine_reset_and_requests_behind_it_lost(
    sim: SimulatedVgpu, driver: GuestDriver
) -> None:
    hang = driver.submit(Engine.RCS, c.pack(c.spin(10_000_000)))
    behind = driver.submit(Engine.RCS, _store(driver, 0, 7))
    other = driver.submit(Engine.BCS, _store(driver, 4, 8))
    assert not driver.wait(hang, timeout=1.0)
    assert not driver.wait(behind)  # lost with the reset
    assert driver.wait(other)  # the other engine was not affected
    stats = driver.statistics()
    assert (stats.hangs_detected, stats.resets, stats.lost_requests) == (1, 1, 2)
    state = sim.vgpu.regs.ring(Engine.RCS)
    assert state.enabled and not state.hung and state.start == driver.ring(Engine.RCS).buffer.gm
    assert driver.completed(Engine.RCS) == behind
    after = driver.submit(Engine.RCS, _store(driver, 0, 9))
    assert driver.wait(after)
    assert driver.scratch is not None and sim.env.read_u32(driver.scratch.gpa) == 9


def test_a_vgpu_in_failsafe_is_reported_and_only_a_device_reset_recovers(sim: SimulatedVgpu) -> None:
    driver = GuestDriver(sim.env, DriverConfig(timeout_s=0.5))
    driver.init()
    seqno = driver.submit(Engine.RCS, c.pack(c.store_dword(sim.vgpu.partition.low_gm.end, 1)))
    with pytest.raises(DeviceFailsafe):
        driver.wait(seqno)
    assert not driver.running
    assert sim.vgpu.failsafe is FailsafeReason.GUEST_ERROR
    assert [e.reason for e in sim.rejections] == ["ADDRESS_OUT_OF_PARTITION"]
    sim.reset()  # VFIO_DEVICE_RESET from the VMM
    again = GuestDriver(sim.env, DriverConfig(framebuffers=0))
    again.init()
    assert again.wait(again.submit(Engine.RCS, c.pack(c.noop())))


def test_display_plane_and_flip(sim: SimulatedVgpu, driver: GuestDriver) -> None:
    front, back = driver.framebuffers
    width, height, stride = driver.mode
    driver.set_plane(front.gm, width, height, stride)
    plane = sim.plane()
    assert (plane.drm_format, plane.width, plane.height) == (DRM_FORMAT_XRGB8888, width, height)
    assert (plane.stride, plane.gm_addr, plane.dmabuf_id) == (stride, front.gm, 1)
    assert sim.vgpu.regs.read(r.PV_DISPLAY_READY, 4) == 1
    driver.flip(back.gm)
    assert driver.wait_interrupt(timeout=0.1)
    assert driver.statistics().flips == 1
    assert sim.plane().gm_addr == back.gm
    driver.disable_plane()
    assert sim.plane().dmabuf_id == 0


def test_shutdown_disables_rings_and_interrupts(sim: SimulatedVgpu, driver: GuestDriver) -> None:
    driver.shutdown()
    driver.shutdown()
    assert not any(sim.vgpu.regs.ring(e).enabled for e in driver.engines)
    assert sim.vgpu.regs.read(r.INT_ENABLE, 4) == 0
    assert sim.vgpu.regs.read(r.INT_MASK, 4) == 0xFFFF_FFFF
    with pytest.raises(WrongState):
        driver.submit(Engine.RCS, c.pack(c.noop()))


def test_config_is_validated() -> None:
    with pytest.raises(InvalidArgument):
        DriverConfig(ring_size=1000)
    with pytest.raises(InvalidArgument):
        DriverConfig(ring_size=4 * MIB)
    with pytest.raises(InvalidArgument):
        DriverConfig(batches=0)
    with pytest.raises(InvalidArgument):
        DriverConfig(timeout_s=0)


def test_large_displays_get_a_mode_that_fits_one_surface() -> None:
    sim = SimulatedVgpu(parent=NVIDIA_PARENT, type_id="nvidia-A10-1Q", ram_bytes=128 * MIB)
    driver = GuestDriver(sim.env)
    driver.init()
    assert (driver.info.display_width, driver.info.display_height) == (5120, 2880)
    assert driver.mode == (2560, 1440, 10240) == display_mode(driver.info)
    assert driver.wait(driver.submit(Engine.BCS, c.pack(c.fill(driver.framebuffers[0].gm, 10240, 0xFF))))
