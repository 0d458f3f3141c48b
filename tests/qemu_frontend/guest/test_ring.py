"""The ring (space, wrap with NOOPs), seqno arithmetic, command counting and the batch pool."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.core.memory import MIB, PageAllocator, ram_layout
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.guest.gtt import PAGE, GmBuffer
from vgpusim.qemu_frontend.guest.ring import RING_GAP, BatchPool, Ring, count_commands, seqno_passed


class _NoPort:
    def read(self, region: int, offset: int, size: int) -> int:
        raise AssertionError

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        raise AssertionError


def _ring(size: int = PAGE) -> tuple[Ring, GuestEnv, bytearray]:
    ram = bytearray(2 * MIB)
    regions = ram_layout(len(ram))
    env = GuestEnv(_NoPort(), memoryview(ram), regions, PageAllocator(regions), lambda t: False)
    ring = Ring(
        Engine.RCS, GmBuffer("ring", 0x10_0000, 0x10_0000, size), GmBuffer("hws", 0, 0x10_0000 + size, PAGE)
    )
    return ring, env, ram


def test_seqno_passed_wraps() -> None:
    assert seqno_passed(5, 5) and seqno_passed(6, 5) and not seqno_passed(4, 5)
    assert seqno_passed(2, 0xFFFF_FFF0)  # after the wrap
    assert not seqno_passed(0xFFFF_FFF0, 2)


def test_count_commands_follows_lengths() -> None:
    data = c.pack(c.noop(), c.store_dword(0x1000, 1), c.fill(0, 8, 0), c.user_interrupt())
    assert count_commands(data) == 4
    assert count_commands(b"") == 0


def test_space_and_emit_wrap_with_noops() -> None:
    ring, env, ram = _ring()
    assert ring.space(0) == PAGE - RING_GAP
    ring.tail = PAGE - 16
    ram[0x10_0000 + ring.tail : 0x10_0000 + PAGE] = b"\xff" * 16
    assert ring.padding(24) == 16
    payload = c.pack(c.store_dword(0x1000, 7), c.store_seqno(1), c.user_interrupt(), c.noop(), c.noop())
    tail = ring.emit(env, payload[:24])
    assert tail == 24
    assert ram[0x10_0000 + PAGE - 16 : 0x10_0000 + PAGE] == bytes(16)  # NOOP padding
    assert ram[0x10_0000 : 0x10_0000 + 24] == payload[:24]
    assert ring.space(24) == PAGE - RING_GAP
    with pytest.raises(InvalidArgument):
        ring.emit(env, b"\0" * 12)  # not a qword multiple
    with pytest.raises(InvalidArgument):
        ring.emit(env, b"\0" * (ring.max_payload + 8))


@given(st.lists(st.integers(min_value=1, max_value=255), min_size=1, max_size=200), st.randoms())
def test_emitting_never_overruns_the_head(qwords: list[int], rnd: object) -> None:
    """Whatever the sizes, a submission written after waiting for space never covers unconsumed bytes."""
    ring, env, _ = _ring()
    head = 0
    for n in qwords:
        size = min(8 * n, ring.max_payload)
        need = ring.padding(size) + size
        while ring.space(head) < need:  # the GPU consumes everything submitted so far
            head = ring.tail
        used = (ring.tail - head) % ring.size
        old = ring.tail
        new = ring.emit(env, b"\0" * size)
        written = (new - old) % ring.size
        assert used + written <= ring.size - RING_GAP
        assert new % 8 == 0


def test_batch_pool_round_robin() -> None:
    buffers = [GmBuffer(f"b{i}", i * PAGE, i * PAGE, PAGE) for i in range(3)]
    pool = BatchPool(buffers)
    assert [pool.next().buffer.name for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    assert pool.capacity == PAGE and len(pool.slots) == 3
    with pytest.raises(InvalidArgument):
        BatchPool([])
