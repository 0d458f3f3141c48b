"""GuestEnv: guest RAM access through the region layout."""

from __future__ import annotations

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.core.memory import MIB, VGA_HOLE_END, VGA_HOLE_START, PageAllocator, ram_layout
from vgpusim.qemu_frontend.guest.env import GuestEnv, SystemClock


class _NoPort:
    def read(self, region: int, offset: int, size: int) -> int:
        raise AssertionError("no device")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        raise AssertionError("no device")


def _env(ram: bytearray) -> GuestEnv:
    regions = ram_layout(len(ram))
    return GuestEnv(_NoPort(), memoryview(ram), regions, PageAllocator(regions), lambda t: False)


def test_ram_access_goes_through_the_layout() -> None:
    ram = bytearray(4 * MIB)
    env = _env(ram)
    env.write_ram(0x20_0000, b"abcd")
    assert ram[0x20_0000:0x20_0004] == b"abcd"
    assert env.read_ram(0x20_0000, 4) == b"abcd"
    env.write_u32(0x20_0010, 0x1234_5678)
    assert env.read_u32(0x20_0010) == 0x1234_5678
    assert ram[0x20_0010] == 0x78
    env.zero_ram(0x20_0000, 8)
    assert env.read_ram(0x20_0000, 4) == bytes(4)


def test_vga_hole_and_beyond_ram_are_not_ram() -> None:
    env = _env(bytearray(4 * MIB))
    with pytest.raises(InvalidArgument):
        env.read_ram(VGA_HOLE_START, 4)
    with pytest.raises(InvalidArgument):
        env.write_ram(VGA_HOLE_END - 2, b"1234")
    with pytest.raises(InvalidArgument):
        env.read_u32(4 * MIB)


def test_default_clock_is_monotonic() -> None:
    env = _env(bytearray(2 * MIB))
    assert isinstance(env.clock, SystemClock)
    a = env.clock.monotonic()
    assert env.clock.monotonic() >= a
