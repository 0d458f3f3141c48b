"""Guest RAM of a VM: its layout in guest-physical space and a page allocator for the guest driver.

QEMU's pc machine does not map guest RAM as one block: the legacy VGA/ROM window (0xA0000-0xFFFFF)
and the PCI hole below 4 GiB are not RAM, so RAM above ``lowmem`` is relocated above 4 GiB.  The
frontend maps each RAM region separately in iommu_type2 at IOVA = GPA, exactly as QEMU's vfio
listener does, and the whole RAM lives in one shared-memory segment.

Glossary:
- GPA: guest-physical address; IOVA equals the GPA (no vIOMMU).
- region: a contiguous GPA range backed by a contiguous range of the RAM segment (``offset``).
- lowmem: where RAM below 4 GiB stops (3 GiB, as QEMU does for guests with more than 3.5 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from vgpusim.common.errors import Exhausted, InvalidArgument

PAGE = 4096
MIB = 1 << 20
GIB = 1 << 30
VGA_HOLE_START = 0xA0000
VGA_HOLE_END = 0x100000
FOUR_GIB = 4 * GIB
DEFAULT_LOWMEM = 3 * GIB
MAX_RAM = 64 * GIB


@dataclass(frozen=True, slots=True)
class Region:
    """A RAM region: ``size`` bytes at ``gpa``, stored at ``offset`` in the RAM segment."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


def ram_layout(ram_bytes: int, lowmem: int = DEFAULT_LOWMEM) -> tuple[Region, ...]:
    """The RAM regions of a guest with ``ram_bytes`` of RAM (a multiple of 2 MiB)."""
    if ram_bytes <= 0 or ram_bytes % (2 * MIB):
        raise InvalidArgument(
            f"guest memory must be a positive multiple of 2 MiB, got {ram_bytes} bytes",
            reason="BAD_MEMORY_SIZE",
            metadata={"memory_bytes": str(ram_bytes)},
        )
    if ram_bytes > MAX_RAM:
        raise InvalidArgument(
            f"guest memory {ram_bytes} bytes is above the {MAX_RAM // GIB} GiB limit",
            reason="BAD_MEMORY_SIZE",
            metadata={"memory_bytes": str(ram_bytes), "limit_bytes": str(MAX_RAM)},
        )
    low = min(ram_bytes, lowmem)
    regions = [Region(0, VGA_HOLE_START, 0)]
    if low > VGA_HOLE_END:
        regions.append(Region(VGA_HOLE_END, low - VGA_HOLE_END, VGA_HOLE_END))
    if ram_bytes > low:
        regions.append(Region(FOUR_GIB, ram_bytes - low, low))
    return tuple(regions)


def gpa_to_offset(regions: tuple[Region, ...], gpa: int, size: int = 1) -> int:
    """Segment offset of ``[gpa, gpa+size)``, which must lie inside one region."""
    for region in regions:
        if region.gpa <= gpa and gpa + size <= region.end:
            return region.offset + (gpa - region.gpa)
    raise InvalidArgument(f"GPA {gpa:#x}+{size:#x} is not guest RAM", reason="NOT_RAM")


class PageAllocator:
    """Hands out guest-physical pages for the guest driver's rings, batches and buffers.

    Allocation is first-fit over the RAM regions above the first MiB (the low MiB is left to the
    guest's "firmware"), contiguous in GPA within one region.
    """

    def __init__(self, regions: tuple[Region, ...]) -> None:
        self._free: list[tuple[int, int]] = [
            (max(r.gpa, VGA_HOLE_END), r.end) for r in regions if r.end > VGA_HOLE_END
        ]

    def alloc(self, size: int) -> int:
        """GPA of ``size`` bytes (rounded up to pages) of contiguous guest RAM."""
        need = (size + PAGE - 1) // PAGE * PAGE
        for i, (start, end) in enumerate(self._free):
            if end - start >= need:
                self._free[i] = (start + need, end)
                return start
        raise Exhausted(f"guest RAM has no {need} contiguous free bytes", reason="GUEST_RAM_EXHAUSTED")

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in self._free)
