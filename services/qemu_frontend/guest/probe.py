"""Bringing the vGPU up as a PCI driver and a GVT-g-aware guest would: config space, then PVINFO.

:func:`probe_pci` does what the firmware and ``pci_enable_device``/``pci_enable_msi`` do:

1. read the vendor/device/subsystem IDs and the class code (a display controller is expected);
2. size BAR0 and BAR2 the real way, with memory decoding off: save the BAR, write all-ones, read
   back ``~(size - 1)`` in the address bits, restore; unassigned 64-bit BARs get an address in the
   64-bit MMIO window (naturally aligned, as OVMF does above RAM);
3. enable memory decoding and bus mastering (and disable INTx, since MSI will be used);
4. walk the capability list from ``0x34`` to the MSI capability, program the message address and
   data, and set its enable bit.

:func:`read_pvinfo` reads the PVINFO page of BAR0: the magic first (which tells the host that the
guest knows it runs on a vGPU; enabling a ring before it would put the vGPU in failsafe), the
version, then the partition (low/high GM), vGPU ID, engines, fences and display resolution.

Glossary:
- BAR: base address register; sizing it reveals the size of the region it decodes.
- PVINFO: the paravirtual info page GVT-g exposes at BAR0 + 0x78000.
- low GM: the vGPU's slice of the aperture; the guest maps its rings and surfaces there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import NotFound, NotSupported
from vgpusim.gfx_host.core import pci as p
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.core.regions import REGION_CONFIG, MmioPort
from vgpusim.qemu_frontend.guest.env import REGION_BAR0

MMIO64_WINDOW: Final = 0x80_0000_0000  # where unassigned 64-bit BARs go (512 GiB, above any RAM)
MSI_ADDRESS: Final = 0xFEE0_0000  # x86 local APIC, destination 0
MSI_VECTOR: Final = 0x31
PCI_BASE_ADDRESS_SPACE_IO: Final = 0x01
PCI_BASE_ADDRESS_MEM_TYPE_MASK: Final = 0x06
PCI_CLASS_DISPLAY: Final = 0x03
PCI_NUM_BARS: Final = 6
_MAX_CAPS: Final = 48  # a capability list longer than this loops
_NO_BAR: Final = (0, 0, False)


@dataclass(frozen=True, slots=True)
class PciInfo:
    """What probing the config space found."""

    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_id: int
    revision: int
    class_code: int  # base class, subclass, prog-if (0x030000 for a VGA controller)
    bar0_size: int
    bar2_size: int
    bar0_address: int
    bar2_address: int
    msi_cap: int  # config offset of the MSI capability
    msi_64bit: bool


@dataclass(frozen=True, slots=True)
class GmRange:
    """``size`` bytes of graphics memory at ``base``."""

    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, gm: int, size: int = 1) -> bool:
        """True if ``[gm, gm + size)`` lies inside this range."""
        return self.base <= gm and gm + size <= self.end and size >= 0


@dataclass(frozen=True, slots=True)
class VgpuInfo:
    """The PVINFO page: who the vGPU is and which part of the GPU it owns."""

    version: tuple[int, int]  # (major, minor)
    vgpu_id: int
    engines: tuple[Engine, ...]
    low_gm: GmRange
    high_gm: GmRange
    fence_base: int
    fence_count: int
    display_width: int
    display_height: int
    gm_total: int

    def owns(self, gm: int, size: int = 1) -> bool:
        """True if ``[gm, gm + size)`` lies inside the low or the high GM range."""
        return self.low_gm.contains(gm, size) or (self.high_gm.size > 0 and self.high_gm.contains(gm, size))


def _cfg(port: MmioPort, offset: int, size: int) -> int:
    return port.read(REGION_CONFIG, offset, size)


def _size_bar(port: MmioPort, offset: int) -> tuple[int, int, bool]:
    """(size, address, is_64bit) of the BAR at ``offset`` (size 0: not implemented); decoding off."""
    lo = _cfg(port, offset, 4)
    if lo & PCI_BASE_ADDRESS_SPACE_IO:
        raise NotSupported(f"BAR at {offset:#x} is an I/O BAR", reason="UNEXPECTED_BAR")
    is64 = lo & PCI_BASE_ADDRESS_MEM_TYPE_MASK == p.PCI_BASE_ADDRESS_MEM_TYPE_64
    hi = _cfg(port, offset + 4, 4) if is64 else 0
    port.write(REGION_CONFIG, offset, 4, 0xFFFF_FFFF)
    if is64:
        port.write(REGION_CONFIG, offset + 4, 4, 0xFFFF_FFFF)
    mask = _cfg(port, offset, 4) & ~0xF
    if is64:
        mask |= _cfg(port, offset + 4, 4) << 32
    port.write(REGION_CONFIG, offset, 4, lo)
    if is64:
        port.write(REGION_CONFIG, offset + 4, 4, hi)
    width = 0xFFFF_FFFF_FFFF_FFFF if is64 else 0xFFFF_FFFF
    size = (~mask & width) + 1 if mask else 0
    return size, (hi << 32 | lo) & ~0xF, is64


def _size_bars(port: MmioPort) -> dict[int, tuple[int, int, bool]]:
    """Every BAR of the type-0 header, the upper halves of 64-bit BARs skipped."""
    bars: dict[int, tuple[int, int, bool]] = {}
    index = 0
    while index < PCI_NUM_BARS:
        bars[index] = _size_bar(port, p.PCI_BASE_ADDRESS_0 + 4 * index)
        index += 2 if bars[index][2] else 1
    return bars


def find_capability(port: MmioPort, cap_id: int) -> int | None:
    """Config offset of the first capability ``cap_id`` on the list, None if absent."""
    if not _cfg(port, p.PCI_STATUS, 2) & p.PCI_STATUS_CAP_LIST:
        return None
    ptr = _cfg(port, p.PCI_CAPABILITY_LIST, 1) & ~3
    for _ in range(_MAX_CAPS):
        if ptr < 0x40:
            return None
        if _cfg(port, ptr, 1) == cap_id:
            return ptr
        ptr = _cfg(port, ptr + 1, 1) & ~3
    return None


def probe_pci(port: MmioPort, *, msi_vector: int = MSI_VECTOR) -> PciInfo:
    """Identify the device, size and place its BARs, enable decoding, bus mastering and MSI.

    Errors: NotFound (NO_DEVICE: vendor ID 0xFFFF), NotSupported (NOT_A_DISPLAY_DEVICE,
    UNEXPECTED_BAR, NO_MSI_CAPABILITY, MSI_NOT_ENABLED).
    """
    vendor = _cfg(port, p.PCI_VENDOR_ID, 2)
    if vendor in (0xFFFF, 0):
        raise NotFound("no device answers config space", reason="NO_DEVICE")
    class_code = _cfg(port, p.PCI_REVISION_ID, 4) >> 8
    if class_code >> 16 != PCI_CLASS_DISPLAY:
        raise NotSupported(
            f"class {class_code:#08x} is not a display controller", reason="NOT_A_DISPLAY_DEVICE"
        )
    command = _cfg(port, p.PCI_COMMAND, 2)
    port.write(REGION_CONFIG, p.PCI_COMMAND, 2, command & ~(p.PCI_COMMAND_MEMORY | p.PCI_COMMAND_IO))
    bars = _size_bars(port)
    window = MMIO64_WINDOW
    addresses: dict[int, int] = {}
    for index in sorted(bars, key=lambda i: -bars[i][0]):  # largest first keeps alignment tight
        size, address, is64 = bars[index]
        if size and not address:
            address = (window + size - 1) // size * size
            window = address + size
            off = p.PCI_BASE_ADDRESS_0 + 4 * index
            port.write(REGION_CONFIG, off, 4, address & 0xFFFF_FFFF | _cfg(port, off, 4) & 0xF)
            if is64:
                port.write(REGION_CONFIG, off + 4, 4, address >> 32)
        addresses[index] = address
    command = p.PCI_COMMAND_MEMORY | p.PCI_COMMAND_MASTER | p.PCI_COMMAND_INTX_DISABLE
    port.write(REGION_CONFIG, p.PCI_COMMAND, 2, _cfg(port, p.PCI_COMMAND, 2) | command)
    msi = find_capability(port, p.PCI_CAP_ID_MSI)
    if msi is None:
        raise NotSupported("the device has no MSI capability", reason="NO_MSI_CAPABILITY")
    flags = _cfg(port, msi + p.PCI_MSI_FLAGS, 2)
    msi64 = bool(flags & p.PCI_MSI_FLAGS_64BIT)
    port.write(REGION_CONFIG, msi + p.PCI_MSI_ADDRESS_LO, 4, MSI_ADDRESS)
    if msi64:
        port.write(REGION_CONFIG, msi + p.PCI_MSI_ADDRESS_HI, 4, 0)
    data_off = msi + (p.PCI_MSI_DATA if msi64 else p.PCI_MSI_ADDRESS_HI)
    port.write(REGION_CONFIG, data_off, 2, msi_vector)
    port.write(REGION_CONFIG, msi + p.PCI_MSI_FLAGS, 2, (flags & ~0x70) | p.PCI_MSI_FLAGS_ENABLE)
    if not _cfg(port, msi + p.PCI_MSI_FLAGS, 2) & p.PCI_MSI_FLAGS_ENABLE:
        raise NotSupported("MSI enable did not stick", reason="MSI_NOT_ENABLED")
    return PciInfo(
        vendor_id=vendor,
        device_id=_cfg(port, p.PCI_DEVICE_ID, 2),
        subsystem_vendor_id=_cfg(port, p.PCI_SUBSYSTEM_VENDOR_ID, 2),
        subsystem_id=_cfg(port, p.PCI_SUBSYSTEM_ID, 2),
        revision=_cfg(port, p.PCI_REVISION_ID, 1),
        class_code=class_code,
        bar0_size=bars.get(0, _NO_BAR)[0],
        bar2_size=bars.get(2, _NO_BAR)[0],
        bar0_address=addresses.get(0, 0),
        bar2_address=addresses.get(2, 0),
        msi_cap=msi,
        msi_64bit=msi64,
    )


def read_pvinfo(port: MmioPort) -> VgpuInfo:
    """Read the PVINFO page (magic first); NotSupported (PVINFO_MAGIC, PVINFO_VERSION) otherwise."""

    def rd(offset: int, size: int = 4) -> int:
        return port.read(REGION_BAR0, offset, size)

    magic = rd(r.PV_MAGIC_LO, 8)
    if magic != r.PVINFO_MAGIC_VALUE:
        raise NotSupported(f"PVINFO magic {magic:#x}: not a vGPU this driver knows", reason="PVINFO_MAGIC")
    version = rd(r.PV_VERSION)
    major, minor = version & 0xFFFF, version >> 16
    if major != r.PVINFO_VERSION_VALUE & 0xFFFF:
        raise NotSupported(f"PVINFO version {major}.{minor} is not supported", reason="PVINFO_VERSION")
    mask = rd(r.PV_ENGINE_MASK)
    return VgpuInfo(
        version=(major, minor),
        vgpu_id=rd(r.PV_VGPU_ID),
        engines=tuple(e for e in Engine if mask & (1 << e)),
        low_gm=GmRange(rd(r.PV_LOW_GM_BASE, 8), rd(r.PV_LOW_GM_SIZE, 8)),
        high_gm=GmRange(rd(r.PV_HIGH_GM_BASE, 8), rd(r.PV_HIGH_GM_SIZE, 8)),
        fence_base=rd(r.PV_FENCE_BASE),
        fence_count=rd(r.PV_FENCE_COUNT),
        display_width=rd(r.PV_DISPLAY_WIDTH),
        display_height=rd(r.PV_DISPLAY_HEIGHT),
        gm_total=rd(r.PV_GM_TOTAL, 8),
    )
