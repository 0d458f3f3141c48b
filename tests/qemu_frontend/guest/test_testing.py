"""The in-process harness itself: engine modes, interrupt delivery, and the isolation checks."""

from __future__ import annotations

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core import pci as p
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.core.memory import GIB, MIB
from vgpusim.qemu_frontend.core.regions import REGION_CONFIG
from vgpusim.qemu_frontend.guest.driver import GuestDriver
from vgpusim.qemu_frontend.guest.env import REGION_BAR0
from vgpusim.qemu_frontend.guest.testing import CANARY, IRQ_INTX, IRQ_MSI, SimulatedVgpu


def test_auto_run_executes_at_the_doorbell() -> None:
    sim = SimulatedVgpu(ram_bytes=16 * MIB, auto_run=True)
    driver = GuestDriver(sim.env)
    driver.init()
    seqno = driver.submit(Engine.RCS, c.pack(c.noop()))
    assert driver.is_complete(seqno)  # before any wait
    assert sim.irq_log == [IRQ_MSI]


def test_interrupts_fall_back_to_intx_without_msi(sim: SimulatedVgpu) -> None:
    driver = GuestDriver(sim.env)
    driver.init()
    msi_flags = p.MSI_CAP + p.PCI_MSI_FLAGS
    sim.env.port.write(REGION_CONFIG, msi_flags, 2, 0)
    assert driver.wait(driver.submit(Engine.RCS, c.pack(c.noop())))
    assert sim.irq_log == [IRQ_INTX]


def test_wait_irq_lets_simulated_time_pass() -> None:
    sim = SimulatedVgpu(ram_bytes=16 * MIB)
    t0 = sim.env.clock.monotonic()
    assert not sim.env.wait_irq(0.25)
    assert sim.env.clock.monotonic() - t0 == pytest.approx(0.25)


def test_stray_pages_and_neighbor_checks_see_writes(sim: SimulatedVgpu) -> None:
    assert sim.stray_pages() == [] and sim.neighbor_intact()
    sim.ram[0x30_0000] = 0
    assert sim.stray_pages() == [0x30_0000]
    assert sim.stray_pages(owned=[(0x30_0000, 4096)]) == []
    assert sim.neighbor_memory is not None
    sim.neighbor_memory.segments["ram"][0x10_0000] = 0
    assert not sim.neighbor_intact()


def test_accesses_the_device_refuses() -> None:
    sim = SimulatedVgpu(ram_bytes=16 * MIB)
    with pytest.raises(InvalidArgument):
        sim.env.port.read(REGION_BAR0, 3, 4)  # misaligned: a read error reaches the guest
    sim.env.port.write(REGION_BAR0, 3, 4, 0)  # a posted write: counted, not raised
    sim.env.port.write(5, 0, 4, 0)
    assert sim.write_errors == 2
    assert sim.env.port.read(REGION_BAR0, r.SCRATCH, 4) == 0
    with pytest.raises(ValueError, match="canary"):
        sim.stray_pages()
    with pytest.raises(ValueError, match="neighbour"):
        sim.neighbor_intact()
    with pytest.raises(ValueError, match="3 GiB"):
        SimulatedVgpu(ram_bytes=4 * GIB)
    assert CANARY == 0xA5


async def test_the_harness_works_under_a_running_event_loop() -> None:
    sim = SimulatedVgpu(ram_bytes=16 * MIB, canary=CANARY, neighbor=True)
    driver = GuestDriver(sim.env)
    driver.init()
    assert driver.wait(driver.submit(Engine.RCS, c.pack(c.noop())))
    assert sim.pinned_ever()


def test_the_aperture_shows_what_the_gpu_wrote(sim: SimulatedVgpu) -> None:
    driver = GuestDriver(sim.env)
    driver.init()
    assert driver.scratch is not None
    offset = driver.scratch.gm - driver.info.low_gm.base  # BAR2 is the low GM slice
    sim.env.port.write(2, offset, 4, 0x1122_3344)  # a CPU store through the aperture
    assert sim.env.read_u32(driver.scratch.gpa) == 0x1122_3344
    assert driver.wait(driver.submit(Engine.RCS, c.pack(c.store_dword(driver.scratch.gm + 4, 5))))
    assert sim.env.port.read(2, offset + 4, 4) == 5
