"""The BAR0 layout helpers: engine blocks, event bits, BAR0 size, write effects, access checks."""

from __future__ import annotations

import pytest

from tests.gfx_host.helpers import GVT, MIB, NV
from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.registers import NO_EFFECT, Engine, FailsafeReason, WriteEffect


def test_engine_names_and_offsets() -> None:
    assert Engine.from_name("rcs") is Engine.RCS and Engine.from_name("bcs") is Engine.BCS
    assert r.ring_reg(Engine.RCS, r.RING_TAIL) == 0x2014 and r.ring_reg(Engine.BCS, r.RING_TAIL) == 0x22014
    assert r.int_complete(Engine.BCS) == 0x2 and r.int_error(Engine.RCS) == 0x100
    assert r.gdrst_bit(Engine.RCS) == 0x2 and r.gdrst_bit(Engine.BCS) == 0x4


def test_bar0_size_covers_registers_and_gtt_window() -> None:
    assert r.bar0_size(GVT.gm_size) == 16 * MIB  # 8 MiB + 1M entries x 8 bytes
    assert r.bar0_size(NV.gm_size) == 64 * MIB  # 8 MiB + 48 MiB, rounded up


def test_layout_does_not_overlap() -> None:
    regs = [r.SCRATCH, r.INT_STATUS, r.INT_MASK, r.INT_ACK, r.INT_ENABLE, r.GDRST]
    regs += [r.PLANE_CTL, r.PLANE_FORMAT, r.PLANE_STRIDE, r.PLANE_WIDTH, r.PLANE_HEIGHT, r.PLANE_BASE_LO]
    regs += [r.PLANE_BASE_HI] + [r.ring_reg(e, off) for e in Engine for off in range(0, 0x20, 4)]
    regs += list(range(r.PVINFO_BASE, r.PVINFO_BASE + 0x50, 4))
    assert len(regs) == len(set(regs)) and max(regs) < r.MMIO_SIZE


def test_write_effect_merge_and_truth() -> None:
    assert not NO_EFFECT
    a = WriteEffect(doorbells=frozenset({Engine.RCS}))
    b = WriteEffect(resets=frozenset({Engine.BCS}), irq=True, failsafe=FailsafeReason.GUEST_ERROR)
    merged = a.merge(b)
    assert merged.doorbells == {Engine.RCS} and merged.resets == {Engine.BCS} and merged.irq
    assert (
        merged.failsafe is FailsafeReason.GUEST_ERROR and a.merge(NO_EFFECT) is a and NO_EFFECT.merge(b) is b
    )


@pytest.mark.parametrize(
    ("offset", "size"), [(0x101, 4), (0x100, 3), (0x104, 8), (r.MMIO_SIZE * 8, 4), (-4, 4)]
)
def test_check_access_rejects_bad_accesses(offset: int, size: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        r.check_access(offset, size, 16 * MIB)
    assert exc.value.reason == "MMIO_BAD_ACCESS"
