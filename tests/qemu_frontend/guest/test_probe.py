"""PCI bring-up and PVINFO against the real vGPU device model."""

from __future__ import annotations

import pytest

from vgpusim.common.errors import NotSupported
from vgpusim.gfx_host.core import pci as p
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.registers import Engine, FailsafeReason
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.core.regions import REGION_CONFIG
from vgpusim.qemu_frontend.guest.env import REGION_BAR0
from vgpusim.qemu_frontend.guest.probe import (
    MMIO64_WINDOW,
    MSI_ADDRESS,
    MSI_VECTOR,
    find_capability,
    probe_pci,
    read_pvinfo,
)
from vgpusim.qemu_frontend.guest.testing import NVIDIA_PARENT, SimulatedVgpu


def test_probe_identifies_sizes_and_enables_the_device(sim: SimulatedVgpu) -> None:
    info = probe_pci(sim.env.port)
    vgpu = sim.vgpu
    assert (info.vendor_id, info.device_id) == (0x8086, 0x1912)
    assert (info.subsystem_vendor_id, info.subsystem_id, info.revision) == (0x8086, 0x2212, 0x06)
    assert info.class_code == p.PCI_CLASS_DISPLAY_VGA
    assert (info.bar0_size, info.bar2_size) == (vgpu.bar0_size, vgpu.bar2_size)
    assert info.bar2_address == MMIO64_WINDOW  # the larger BAR goes first, naturally aligned
    assert info.bar0_address == MMIO64_WINDOW + vgpu.bar2_size
    assert vgpu.config.bar_address(0) == info.bar0_address
    assert vgpu.config.bar_address(2) == info.bar2_address
    assert vgpu.config.memory_enabled and vgpu.config.bus_master
    assert vgpu.config.command & p.PCI_COMMAND_INTX_DISABLE
    assert (info.msi_cap, info.msi_64bit) == (p.MSI_CAP, True)
    assert vgpu.config.msi_enabled
    assert (vgpu.config.msi_address, vgpu.config.msi_data) == (MSI_ADDRESS, MSI_VECTOR)


def test_probe_keeps_addresses_the_firmware_assigned(sim: SimulatedVgpu) -> None:
    port = sim.env.port
    port.write(REGION_CONFIG, p.PCI_BASE_ADDRESS_0, 4, 0xE000_0000)
    port.write(REGION_CONFIG, p.PCI_BASE_ADDRESS_0 + 4, 4, 0)
    info = probe_pci(port)
    assert info.bar0_address == 0xE000_0000 == sim.vgpu.config.bar_address(0)
    assert info.bar0_size == sim.vgpu.bar0_size  # sizing restored the address


def test_capability_walk(sim: SimulatedVgpu) -> None:
    assert find_capability(sim.env.port, p.PCI_CAP_ID_MSI) == p.MSI_CAP
    assert find_capability(sim.env.port, 0x10) is None  # no PCIe capability


def test_pvinfo_describes_the_partition(sim: SimulatedVgpu) -> None:
    info = read_pvinfo(sim.env.port)
    part = sim.vgpu.partition
    assert sim.vgpu.regs.pv_notified
    assert info.version == (1, 0)
    assert info.vgpu_id == part.vgpu_id == 1
    assert (info.low_gm.base, info.low_gm.size) == (part.low_gm.start, part.low_gm.size)
    assert (info.high_gm.base, info.high_gm.size) == (part.high_gm.start, part.high_gm.size)
    assert info.engines == (Engine.RCS, Engine.BCS)
    assert (info.display_width, info.display_height) == (1024, 768)
    assert (info.fence_base, info.fence_count) == (part.fences.start, part.fences.size)
    assert info.owns(part.low_gm.start, 4096) and info.owns(part.high_gm.start)
    assert not info.owns(part.low_gm.end - 4, 8)


def test_pvinfo_rejects_a_foreign_device() -> None:
    class Port:
        def read(self, region: int, offset: int, size: int) -> int:
            return 0

        def write(self, region: int, offset: int, size: int, value: int) -> None:
            pass

    with pytest.raises(NotSupported) as exc:
        read_pvinfo(Port())
    assert exc.value.reason == "PVINFO_MAGIC"


def test_framebuffer_model_has_no_high_gm() -> None:
    sim = SimulatedVgpu(parent=NVIDIA_PARENT, type_id="nvidia-A10-1Q", ram_bytes=8 * MIB)
    pci = probe_pci(sim.env.port)
    info = read_pvinfo(sim.env.port)
    assert (pci.vendor_id, pci.device_id) == (0x10DE, 0x2236)
    assert info.high_gm.size == 0 and not info.owns(info.high_gm.base)
    assert info.low_gm.size == 1024 * MIB


def test_a_ring_enabled_before_pvinfo_puts_the_vgpu_in_failsafe(sim: SimulatedVgpu) -> None:
    """Why the driver reads PVINFO first: the host refuses guests that do not know it is a vGPU."""
    probe_pci(sim.env.port)
    sim.env.port.write(REGION_BAR0, r.ring_reg(Engine.RCS, r.RING_CTL), 4, r.RING_CTL_ENABLE)
    assert sim.vgpu.failsafe is FailsafeReason.UNSUPPORTED_GUEST
