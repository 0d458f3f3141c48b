"""The vGPU's PCI configuration space (the VFIO CONFIG region, 4 KiB).

A type-0 header of a VGA-compatible display controller (class 0x030000) with:

- BAR0 (0x10/0x14): 64-bit non-prefetchable memory, MMIO registers + GTT window (``registers``);
- BAR2 (0x18/0x1c): 64-bit prefetchable memory, the aperture: the vGPU's low GM slice, its size
  rounded up to a power of two;
- BAR4/BAR5/ROM: not implemented (read 0, writes ignored, so probing them gives size 0);
- one capability, MSI at :data:`MSI_CAP` (64-bit address, one vector, no per-vector masking).

As in real hardware (and QEMU's ``wmask``), each byte has a writable-bit mask and a write stores
``old & ~mask | value & mask``; read-only fields (IDs, class, status, header type, capability
pointer, MSI ``64BIT``) keep their value.  BAR sizing works the real way: write all-ones, read
back ``~(size - 1)`` in the address bits with the type bits unchanged, then restore the address.

Glossary:
- wmask: per-byte mask of the bits a guest may change.
- MSI: message-signalled interrupt; enabled by bit 0 of the MSI message control register.
"""

from __future__ import annotations

from typing import Final

from vgpusim.common.errors import InvalidArgument

CONFIG_SIZE: Final = 4096
PCI_VENDOR_ID: Final = 0x00
PCI_DEVICE_ID: Final = 0x02
PCI_COMMAND: Final = 0x04
PCI_STATUS: Final = 0x06
PCI_REVISION_ID: Final = 0x08
PCI_CLASS_PROG: Final = 0x09
PCI_CLASS_DEVICE: Final = 0x0A
PCI_CACHE_LINE_SIZE: Final = 0x0C
PCI_LATENCY_TIMER: Final = 0x0D
PCI_HEADER_TYPE: Final = 0x0E
PCI_BASE_ADDRESS_0: Final = 0x10
PCI_SUBSYSTEM_VENDOR_ID: Final = 0x2C
PCI_SUBSYSTEM_ID: Final = 0x2E
PCI_ROM_ADDRESS: Final = 0x30
PCI_CAPABILITY_LIST: Final = 0x34
PCI_INTERRUPT_LINE: Final = 0x3C
PCI_INTERRUPT_PIN: Final = 0x3D

PCI_COMMAND_IO: Final = 0x0001
PCI_COMMAND_MEMORY: Final = 0x0002
PCI_COMMAND_MASTER: Final = 0x0004
PCI_COMMAND_INTX_DISABLE: Final = 0x0400
PCI_STATUS_CAP_LIST: Final = 0x0010
PCI_CLASS_DISPLAY_VGA: Final = 0x030000
PCI_BASE_ADDRESS_MEM_TYPE_64: Final = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH: Final = 0x08

PCI_CAP_ID_MSI: Final = 0x05
MSI_CAP: Final = 0xAC  # where i915 has it
PCI_MSI_FLAGS: Final = 0x02  # offsets inside the capability
PCI_MSI_ADDRESS_LO: Final = 0x04
PCI_MSI_ADDRESS_HI: Final = 0x08
PCI_MSI_DATA: Final = 0x0C
PCI_MSI_FLAGS_ENABLE: Final = 0x0001
PCI_MSI_FLAGS_64BIT: Final = 0x0080

BAR_OFFSETS: Final = {0: 0x10, 2: 0x18}


class ConfigSpace:
    """4 KiB of PCI configuration space with write masks and 64-bit BAR0/BAR2."""

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        subsystem_vendor_id: int,
        subsystem_id: int,
        revision: int,
        bar_sizes: dict[int, int],
    ) -> None:
        for index, size in bar_sizes.items():
            if index not in BAR_OFFSETS or size < 4096 or size & (size - 1):
                raise ValueError(f"BAR{index} size {size:#x} must be a power of two >= 4 KiB")
        self.bar_sizes = dict(bar_sizes)
        self._data = bytearray(CONFIG_SIZE)
        self._wmask = bytearray(CONFIG_SIZE)
        self._put(PCI_VENDOR_ID, 2, vendor_id)
        self._put(PCI_DEVICE_ID, 2, device_id)
        self._put(PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
        self._put(PCI_REVISION_ID, 1, revision)
        self._put(PCI_CLASS_PROG, 3, PCI_CLASS_DISPLAY_VGA)
        self._put(PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self._put(PCI_SUBSYSTEM_ID, 2, subsystem_id)
        self._put(PCI_CAPABILITY_LIST, 1, MSI_CAP)
        self._put(PCI_INTERRUPT_PIN, 1, 1)  # INTA#
        self._put(MSI_CAP, 1, PCI_CAP_ID_MSI)  # next pointer 0: last capability
        self._put(MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_64BIT)
        self._mask(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)
        self._mask(PCI_CACHE_LINE_SIZE, 2, 0xFFFF)  # cache line size, latency timer
        self._mask(PCI_INTERRUPT_LINE, 1, 0xFF)
        self._mask(MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE)
        self._mask(MSI_CAP + PCI_MSI_ADDRESS_LO, 4, 0xFFFF_FFFC)
        self._mask(MSI_CAP + PCI_MSI_ADDRESS_HI, 4, 0xFFFF_FFFF)
        self._mask(MSI_CAP + PCI_MSI_DATA, 2, 0xFFFF)
        for index, size in self.bar_sizes.items():
            off = BAR_OFFSETS[index]
            flags = PCI_BASE_ADDRESS_MEM_TYPE_64 | (PCI_BASE_ADDRESS_MEM_PREFETCH if index == 2 else 0)
            self._put(off, 4, flags)
            address_mask = ~(size - 1) & 0xFFFF_FFFF_FFFF_FFF0
            self._mask(off, 4, address_mask & 0xFFFF_FFFF)
            self._mask(off + 4, 4, address_mask >> 32)
        self._reset_image = bytes(self._data)

    def _put(self, off: int, size: int, value: int) -> None:
        self._data[off : off + size] = value.to_bytes(size, "little")

    def _mask(self, off: int, size: int, value: int) -> None:
        self._wmask[off : off + size] = value.to_bytes(size, "little")

    def _get(self, off: int, size: int) -> int:
        return int.from_bytes(self._data[off : off + size], "little")

    @staticmethod
    def _check(offset: int, size: int) -> None:
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= CONFIG_SIZE - size:
            raise InvalidArgument(
                f"bad config space access of {size} bytes at {offset:#x}",
                reason="CONFIG_BAD_ACCESS",
                metadata={"offset": hex(offset), "size": str(size)},
            )

    def read(self, offset: int, size: int) -> int:
        """Read 1, 2 or 4 naturally aligned bytes."""
        self._check(offset, size)
        return self._get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Write 1, 2 or 4 naturally aligned bytes; read-only bits keep their value."""
        self._check(offset, size)
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for i in range(size):
            m = self._wmask[offset + i]
            self._data[offset + i] = (self._data[offset + i] & ~m) | (raw[i] & m)

    def reset(self) -> None:
        """Back to the power-on image (BARs unassigned, MSI disabled, decoding off)."""
        self._data[:] = self._reset_image

    @property
    def command(self) -> int:
        """The command register."""
        return self._get(PCI_COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        """Memory space decoding (BAR0/BAR2 accesses) enabled."""
        return bool(self.command & PCI_COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        """Bus mastering (DMA, MSI) enabled."""
        return bool(self.command & PCI_COMMAND_MASTER)

    @property
    def msi_enabled(self) -> bool:
        """MSI enable bit of the MSI capability."""
        return bool(self._get(MSI_CAP + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)

    @property
    def msi_address(self) -> int:
        """The 64-bit MSI message address."""
        return self._get(MSI_CAP + PCI_MSI_ADDRESS_LO, 8)

    @property
    def msi_data(self) -> int:
        """The MSI message data."""
        return self._get(MSI_CAP + PCI_MSI_DATA, 2)

    def bar_address(self, index: int) -> int:
        """The address programmed in BAR ``index`` (0 or 2), type bits stripped."""
        return self._get(BAR_OFFSETS[index], 8) & ~0xF
