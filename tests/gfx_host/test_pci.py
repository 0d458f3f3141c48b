"""PCI config space: IDs, read-only fields, BAR sizing by all-ones probing, the MSI capability."""

from __future__ import annotations

import pytest

from tests.gfx_host.helpers import GVT, MIB, NV, make_vgpu
from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core import pci
from vgpusim.gfx_host.core.pci import ConfigSpace


@pytest.fixture
def cfg() -> ConfigSpace:
    return make_vgpu(GVT, "GVTg_V5_4").config


def probe_bar64(cfg: ConfigSpace, offset: int) -> tuple[int, int]:
    """Size a 64-bit BAR like a PCI enumerator; returns (flags, size) and restores the address."""
    lo, hi = cfg.read(offset, 4), cfg.read(offset + 4, 4)
    cfg.write(offset, 4, 0xFFFF_FFFF)
    cfg.write(offset + 4, 4, 0xFFFF_FFFF)
    mask = cfg.read(offset, 4) | cfg.read(offset + 4, 4) << 32
    cfg.write(offset, 4, lo)
    cfg.write(offset + 4, 4, hi)
    return mask & 0xF, (~(mask & ~0xF) + 1) & 0xFFFF_FFFF_FFFF_FFFF


def test_identity_and_class(cfg: ConfigSpace) -> None:
    assert cfg.read(pci.PCI_VENDOR_ID, 2) == 0x8086 and cfg.read(pci.PCI_DEVICE_ID, 2) == 0x1912
    assert cfg.read(pci.PCI_VENDOR_ID, 4) == 0x1912_8086
    assert cfg.read(pci.PCI_REVISION_ID, 4) >> 8 == 0x030000
    assert cfg.read(pci.PCI_HEADER_TYPE, 1) == 0
    assert cfg.read(pci.PCI_SUBSYSTEM_VENDOR_ID, 2) == 0x8086 and cfg.read(pci.PCI_INTERRUPT_PIN, 1) == 1
    assert cfg.read(pci.PCI_STATUS, 2) & pci.PCI_STATUS_CAP_LIST


def test_read_only_fields_are_masked(cfg: ConfigSpace) -> None:
    for off, size in ((pci.PCI_VENDOR_ID, 4), (pci.PCI_CLASS_DEVICE, 2), (pci.PCI_STATUS, 2), (0x34, 1)):
        before = cfg.read(off, size)
        cfg.write(off, size, 0)
        assert cfg.read(off, size) == before
    cfg.write(pci.PCI_INTERRUPT_LINE, 1, 0x0B)
    assert cfg.read(pci.PCI_INTERRUPT_LINE, 1) == 0x0B


def test_command_register_memory_and_bus_master(cfg: ConfigSpace) -> None:
    assert (cfg.memory_enabled, cfg.bus_master) == (False, False)
    cfg.write(pci.PCI_COMMAND, 2, 0xFFFF)
    assert cfg.command == pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER | pci.PCI_COMMAND_INTX_DISABLE
    assert (cfg.memory_enabled, cfg.bus_master) == (True, True)
    cfg.reset()
    assert cfg.command == 0


def test_bar0_is_16_mib_64bit_mmio(cfg: ConfigSpace) -> None:
    flags, size = probe_bar64(cfg, 0x10)
    assert (flags, size) == (pci.PCI_BASE_ADDRESS_MEM_TYPE_64, 16 * MIB)
    assert cfg.read(0x10, 4) == 0x4  # address restored (unassigned)
    cfg.write(0x10, 4, 0xFE00_0000)
    cfg.write(0x14, 4, 0x1)
    assert cfg.bar_address(0) == 0x1_FE00_0000


def test_bar2_is_the_aperture_slice_prefetchable(cfg: ConfigSpace) -> None:
    flags, size = probe_bar64(cfg, 0x18)
    assert flags == pci.PCI_BASE_ADDRESS_MEM_TYPE_64 | pci.PCI_BASE_ADDRESS_MEM_PREFETCH
    assert size == 128 * MIB  # the _4 type's low GM
    cfg.write(0x18, 4, 0x1234_5678)  # bits below the size are not writable
    assert cfg.read(0x18, 4) == 0x1000_000C  # bits 27 and up are the address


def test_large_bar2_sizes_through_the_high_dword() -> None:
    cfg = make_vgpu(NV, "A10-24Q").config
    assert probe_bar64(cfg, 0x18)[1] == 32 * 1024 * MIB  # 24 GiB rounded up to a power of two
    assert probe_bar64(cfg, 0x10)[1] == 64 * MIB  # registers + a GTT window for 24 GiB of GM


def test_unimplemented_bars_and_rom_size_zero(cfg: ConfigSpace) -> None:
    for off in (0x20, 0x24, pci.PCI_ROM_ADDRESS):
        cfg.write(off, 4, 0xFFFF_FFFF)
        assert cfg.read(off, 4) == 0


def test_msi_capability(cfg: ConfigSpace) -> None:
    cap = cfg.read(pci.PCI_CAPABILITY_LIST, 1)
    found = []
    while cap:
        found.append(cfg.read(cap, 1))
        cap = cfg.read(cap + 1, 1)
    assert found == [pci.PCI_CAP_ID_MSI]
    base = pci.MSI_CAP
    flags = cfg.read(base + pci.PCI_MSI_FLAGS, 2)
    assert flags & pci.PCI_MSI_FLAGS_64BIT and not flags & pci.PCI_MSI_FLAGS_ENABLE
    cfg.write(base + pci.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_0003)
    cfg.write(base + pci.PCI_MSI_ADDRESS_HI, 4, 0x1)
    cfg.write(base + pci.PCI_MSI_DATA, 2, 0x4041)
    cfg.write(base + pci.PCI_MSI_FLAGS, 2, 0xFFFF)  # only the enable bit sticks
    assert cfg.read(base + pci.PCI_MSI_FLAGS, 2) == pci.PCI_MSI_FLAGS_64BIT | pci.PCI_MSI_FLAGS_ENABLE
    assert cfg.msi_enabled and cfg.msi_address == 0x1_FEE0_0000 and cfg.msi_data == 0x4041


def test_extended_space_reads_zero_and_bad_accesses_fail(cfg: ConfigSpace) -> None:
    assert cfg.read(0x100, 4) == 0 and cfg.read(0xFFC, 4) == 0
    for off, size in ((0x1001, 1), (0xFFE, 4), (0x2, 4), (0x0, 3), (-4, 4)):
        with pytest.raises(InvalidArgument) as exc:
            cfg.read(off, size)
        assert exc.value.reason == "CONFIG_BAD_ACCESS"


def test_bar_sizes_must_be_powers_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ConfigSpace(
            vendor_id=1,
            device_id=2,
            subsystem_vendor_id=3,
            subsystem_id=4,
            revision=0,
            bar_sizes={0: 3 * MIB},
        )
