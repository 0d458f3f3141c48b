"""GuestGtt: GM buffers backed by guest pages, entries the host shadows, gm <-> gpa."""

from __future__ import annotations

import pytest

from vgpusim.common.errors import Exhausted, InvalidArgument, NotFound
from vgpusim.gfx_host.core.gtt import GTT_PRESENT
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.guest.gtt import PAGE, GuestGtt, gtt_entry, gtt_entry_offset
from vgpusim.qemu_frontend.guest.probe import GmRange, read_pvinfo
from vgpusim.qemu_frontend.guest.testing import CANARY, SimulatedVgpu


def _gtt(sim: SimulatedVgpu, size: int | None = None) -> GuestGtt:
    low = read_pvinfo(sim.env.port).low_gm
    return GuestGtt(sim.env, GmRange(low.base, size or low.size))


def test_entry_encoding() -> None:
    assert gtt_entry(0x12_3456_7000) == 0x12_3456_7000 | GTT_PRESENT
    assert gtt_entry(0x1000, present=False) == 0x1000
    assert gtt_entry_offset(0x10_0000) == 8 * 1024 * 1024 + 8 * 0x100


def test_map_buffer_maps_zeroed_pages_in_low_gm(sim: SimulatedVgpu) -> None:
    gtt = _gtt(sim)
    low = sim.vgpu.partition.low_gm
    a = gtt.map_buffer("a", 3 * PAGE + 1)
    b = gtt.map_buffer("b", PAGE)
    assert (a.gm, a.size, b.gm) == (low.start, 4 * PAGE, low.start + 4 * PAGE)
    assert gtt.entries_written == 5
    assert sim.env.read_ram(a.gpa, a.size) == bytes(a.size)  # the canary was cleared
    for page in range(4):
        assert gtt.read_entry(a.gm + page * PAGE) == gtt_entry(a.gpa + page * PAGE)
    sim.apply_gtt()
    assert {a.gpa // PAGE + i for i in range(4)} <= sim.pinner.pinned
    assert sim.vgpu.gtt.statistics().entries_shadowed == 5


def test_gm_gpa_translation(sim: SimulatedVgpu) -> None:
    gtt = _gtt(sim)
    buf = gtt.map_buffer("buf", 2 * PAGE)
    assert gtt.gm_to_gpa(buf.gm + 5000) == buf.gpa + 5000
    assert gtt.gpa_to_gm(buf.gpa + 5000) == buf.gm + 5000
    assert (buf.gm_at(8), buf.gpa_at(8)) == (buf.gm + 8, buf.gpa + 8)
    assert gtt.find(buf.gm + PAGE) is buf
    with pytest.raises(NotFound):
        gtt.gm_to_gpa(buf.gm_end)
    with pytest.raises(NotFound):
        gtt.gpa_to_gm(buf.gpa + buf.size)
    with pytest.raises(InvalidArgument):
        buf.gm_at(buf.size)


def test_gm_and_ram_exhaustion(sim: SimulatedVgpu) -> None:
    gtt = _gtt(sim, size=4 * PAGE)
    with pytest.raises(Exhausted) as exc:
        gtt.map_buffer("big", 5 * PAGE)
    assert exc.value.reason == "GM_EXHAUSTED"
    with pytest.raises(InvalidArgument):
        gtt.map_buffer("empty", 0)
    roomy = _gtt(sim)
    with pytest.raises(Exhausted) as exc:
        roomy.map_buffer("more-than-ram", 32 * MIB)
    assert exc.value.reason == "GUEST_RAM_EXHAUSTED"
    assert roomy.buffers == () and roomy.free_bytes == sim.vgpu.partition.low_gm.size


def test_entries_outside_the_partition_are_ignored(sim: SimulatedVgpu) -> None:
    gtt = _gtt(sim)
    outside = sim.vgpu.partition.low_gm.end
    gtt.write_entry(outside, 0x20_0000)
    assert gtt.read_entry(outside) == 0
    assert sim.vgpu.gtt.statistics().writes_ignored_total == 1
    assert sim.env.read_ram(0x20_0000, 4) == bytes([CANARY]) * 4
