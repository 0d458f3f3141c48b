"""The region side of the VFIO device API: region info, offsets and region reads/writes.

A VFIO device fd exposes every region at ``index << 40`` (``VFIO_PCI_OFFSET_SHIFT``).  The vGPU's
regions (CONFIG, BAR0 with registers and the GTT, BAR2 with the aperture) come from the vendor's
device description; reads and writes are split into naturally aligned accesses of at most 8 bytes
and sent to the device model through an :class:`MmioPort` (the shared-memory trap path).

Glossary:
- region index: BAR0-5 = 0-5, ROM 6, CONFIG 7, VGA 8; >= 9 device specific.
- access: one trapped register read or write of 1, 2, 4 or 8 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vgpusim.common.errors import InvalidArgument

OFFSET_SHIFT = 40
OFFSET_MASK = (1 << OFFSET_SHIFT) - 1
NUM_PCI_REGIONS = 9
REGION_CONFIG = 7
MAX_TRANSFER = 1 << 20
# vfio_region_info.flags
REGION_READ, REGION_WRITE, REGION_MMAP, REGION_CAPS = 1, 2, 4, 8
# vfio_device_info.flags
DEVICE_RESET, DEVICE_PCI = 1, 2


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """``vfio_region_info`` of one region (size 0 = not implemented)."""

    index: int
    flags: int
    size: int
    sparse_areas: tuple[tuple[int, int], ...] = ()
    cap_type: int = 0
    cap_subtype: int = 0

    @property
    def offset(self) -> int:
        return self.index << OFFSET_SHIFT


@dataclass(frozen=True, slots=True)
class DeviceDescription:
    """What ``VFIO_DEVICE_GET_INFO`` and the region infos report for a device."""

    flags: int
    regions: tuple[RegionInfo, ...]
    num_irqs: int

    @property
    def num_regions(self) -> int:
        return max(NUM_PCI_REGIONS, max((r.index for r in self.regions), default=-1) + 1)

    def region(self, index: int) -> RegionInfo:
        """``VFIO_DEVICE_GET_REGION_INFO``: EINVAL for an index beyond ``num_regions``."""
        if not 0 <= index < self.num_regions:
            raise InvalidArgument(
                f"region index {index} out of range (0..{self.num_regions - 1})",
                reason="BAD_REGION_INDEX",
                metadata={"index": str(index)},
            )
        for region in self.regions:
            if region.index == index:
                return region
        return RegionInfo(index, 0, 0)


class MmioPort(Protocol):
    """The device model's register interface (the shared-memory trap path)."""

    def read(self, region: int, offset: int, size: int) -> int: ...

    def write(self, region: int, offset: int, size: int, value: int) -> None: ...


def split_offset(desc: DeviceDescription, offset: int, size: int, *, write: bool) -> tuple[RegionInfo, int]:
    """Decode a device-fd offset into (region, offset in region), checking bounds and access rights."""
    if size <= 0 or size > MAX_TRANSFER:
        raise InvalidArgument(f"access size {size} must be 1..{MAX_TRANSFER} bytes", reason="BAD_ACCESS_SIZE")
    region = desc.region(offset >> OFFSET_SHIFT)
    inner = offset & OFFSET_MASK
    if inner + size > region.size:
        raise InvalidArgument(
            f"access {inner:#x}+{size:#x} outside region {region.index} of size {region.size:#x}",
            reason="OUT_OF_REGION",
            metadata={"index": str(region.index), "region_size": str(region.size)},
        )
    needed = REGION_WRITE if write else REGION_READ
    if not region.flags & needed:
        raise InvalidArgument(
            f"region {region.index} is not {'writable' if write else 'readable'}", reason="REGION_ACCESS"
        )
    return region, inner


def _chunks(offset: int, size: int) -> Sequence[tuple[int, int]]:
    """Naturally aligned pieces of at most 8 bytes covering ``[offset, offset+size)``."""
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + size
    while pos < end:
        step = 8
        while step > 1 and (pos % step or pos + step > end):
            step //= 2
        out.append((pos, step))
        pos += step
    return out


def read_region(port: MmioPort, desc: DeviceDescription, offset: int, size: int) -> bytes:
    """pread on the device fd."""
    region, inner = split_offset(desc, offset, size, write=False)
    data = bytearray()
    for pos, step in _chunks(inner, size):
        data += port.read(region.index, pos, step).to_bytes(step, "little")
    return bytes(data)


def write_region(port: MmioPort, desc: DeviceDescription, offset: int, data: bytes) -> None:
    """pwrite on the device fd."""
    region, inner = split_offset(desc, offset, len(data), write=True)
    for pos, step in _chunks(inner, len(data)):
        value = int.from_bytes(data[pos - inner : pos - inner + step], "little")
        port.write(region.index, pos, step, value)
