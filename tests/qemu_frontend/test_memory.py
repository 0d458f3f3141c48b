"""Guest RAM layout and the guest page allocator."""

import pytest

from vgpusim.common.errors import Exhausted, InvalidArgument
from vgpusim.qemu_frontend.core.memory import (
    FOUR_GIB,
    GIB,
    MIB,
    VGA_HOLE_END,
    VGA_HOLE_START,
    PageAllocator,
    Region,
    gpa_to_offset,
    ram_layout,
)


def test_small_guest_has_two_regions_around_the_vga_hole() -> None:
    regions = ram_layout(256 * MIB)
    assert regions == (
        Region(0, VGA_HOLE_START, 0),
        Region(VGA_HOLE_END, 256 * MIB - VGA_HOLE_END, VGA_HOLE_END),
    )


def test_large_guest_relocates_ram_above_4g() -> None:
    regions = ram_layout(4 * GIB)
    assert regions[-1] == Region(FOUR_GIB, 1 * GIB, 3 * GIB)
    assert sum(r.size for r in regions) == 4 * GIB - (VGA_HOLE_END - VGA_HOLE_START)


@pytest.mark.parametrize("size", [0, -2 * MIB, MIB, 3 * MIB + 4096, 65 * GIB])
def test_bad_sizes_are_rejected_with_a_reason(size: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        ram_layout(size)
    assert err.value.reason == "BAD_MEMORY_SIZE"


def test_gpa_translation() -> None:
    regions = ram_layout(4 * GIB)
    assert gpa_to_offset(regions, FOUR_GIB + 4096) == 3 * GIB + 4096
    with pytest.raises(InvalidArgument):
        gpa_to_offset(regions, VGA_HOLE_START)
    with pytest.raises(InvalidArgument):
        gpa_to_offset(regions, VGA_HOLE_START - 4096, 8192)


def test_allocator_is_page_granular_and_runs_out() -> None:
    alloc = PageAllocator(ram_layout(4 * MIB))
    first = alloc.alloc(1)
    second = alloc.alloc(4096)
    assert first == VGA_HOLE_END and second == first + 4096
    with pytest.raises(Exhausted):
        alloc.alloc(4 * MIB)
    assert alloc.free_bytes == 4 * MIB - VGA_HOLE_END - 8192
