"""Command encoding: header layout, encoders, decoder, round trips."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.engine import commands as c

u32 = st.integers(0, c.U32)
u64 = st.integers(0, c.U64)

command = st.one_of(
    st.just(c.noop()),
    st.just(c.user_interrupt()),
    st.just(c.batch_buffer_end()),
    st.builds(lambda a, s: c.batch_buffer_start(a, second_level=s), u64, st.booleans()),
    st.builds(c.store_dword, u64, u32),
    st.builds(lambda v, i: c.store_seqno(v, index=i), u32, st.integers(0, 1023)),
    st.builds(c.load_register_imm, st.lists(st.tuples(u32, u32), min_size=1, max_size=c.MAX_LRI_PAIRS)),
    st.builds(lambda b, p: c.display_flip(b, plane=p), u64, st.sampled_from(c.Plane)),
    st.builds(c.spin, u32),
    st.builds(c.fill, u64, u32, u32),
    st.builds(c.copy, u64, u64, u32),
    st.builds(c.compute, u64, u64, u32, st.sampled_from(c.ComputeOp)),
)


@given(st.lists(command, max_size=20))
def test_encode_decode_round_trip(cmds: list[tuple[int, ...]]) -> None:
    data = c.pack(*cmds)
    assert len(data) == 4 * sum(len(x) for x in cmds)
    decoded = c.decode(c.unpack(data))
    assert [d.dwords() for d in decoded] == cmds
    for d, raw in zip(decoded, cmds, strict=True):
        assert d.opcode == raw[0] >> 24
        assert len(d.operands) == raw[0] & 0xFF


@given(u64, u64, u32)
def test_addresses_split_low_high(dst: int, src: int, size: int) -> None:
    (cmd,) = c.decode(c.copy(dst, src, size))
    assert cmd.opcode is c.Opcode.COPY
    assert (cmd.address(0), cmd.address(2), cmd.operands[4]) == (dst, src, size)


def test_header_layout() -> None:
    assert c.noop() == (0,)
    assert c.copy(0, 0, 0)[0] == 0x4100_0005
    assert c.batch_buffer_start(0x1000, second_level=True)[0] == 0x3100_0102
    assert c.store_seqno(7, index=3)[0] == 0x2100_0301
    assert c.compute(0, 0, 0, c.ComputeOp.XOR32)[0] == 0x4200_0105
    assert c.display_flip(0, plane=c.Plane.CURSOR)[0] == 0x1400_0102
    assert c.pack(c.store_dword(0x1_0000_0004, 0xDEADBEEF)) == bytes.fromhex(
        "03000020 04000000 01000000 efbeadde"
    )


def test_every_opcode_has_a_spec() -> None:
    assert set(c.SPECS) == set(c.Opcode)
    for b, spec in enumerate(c.SPEC_BY_BYTE):
        assert (spec is not None) == (b in {int(o) for o in c.Opcode})
        assert spec is None or spec.opcode == b


@pytest.mark.parametrize(
    ("dwords", "reason"),
    [
        ((0xFF00_0000,), "UNKNOWN_OPCODE"),
        ((0x4100_0004, 0, 0, 0, 0), "BAD_COMMAND_LENGTH"),
        ((0x2200_0003, 0, 0, 0), "BAD_COMMAND_LENGTH"),  # LRI needs pairs
        ((0x0000_0100,), "INVALID_OPERAND"),  # NOOP with a flag
        ((0x4100_0005, 0, 0, 0), "TRUNCATED_COMMAND"),
    ],
)
def test_decode_rejects(dwords: Sequence[int], reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        c.decode(dwords)
    assert err.value.reason == reason


def test_unpack_needs_whole_dwords() -> None:
    with pytest.raises(InvalidArgument):
        c.unpack(b"\x00\x00\x00")


@pytest.mark.parametrize(
    "build",
    [
        lambda: c.store_dword(1 << 64, 0),
        lambda: c.store_dword(0, 1 << 32),
        lambda: c.store_seqno(0, index=1024),
        lambda: c.load_register_imm([]),
        lambda: c.load_register_imm([(0, 0)] * (c.MAX_LRI_PAIRS + 1)),
        lambda: c.spin(-1),
        lambda: c.copy(-1, 0, 0),
    ],
)
def test_encoders_validate(build: object) -> None:
    assert callable(build)
    with pytest.raises(InvalidArgument) as err:
        build()
    assert err.value.reason == "INVALID_OPERAND"
