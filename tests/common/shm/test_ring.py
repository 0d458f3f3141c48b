"""Tests of vgpusim.common.shm.ring: layout, errors, wrap-around, batches, a deque model."""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vgpusim.common.errors import Busy, InvalidArgument, TooBig
from vgpusim.common.shm.errors import RingEmpty, RingFull, WouldBlock
from vgpusim.common.shm.ring import MAGIC, VERSION, Ring, RingLayout, RingStatistics

M64 = (1 << 64) - 1


def make(nslots: int = 8, slot_size: int = 32, *, first_index: int = 0) -> tuple[bytearray, Ring]:
    buf = bytearray(RingLayout.size_for(nslots, slot_size))
    return buf, Ring.init(buf, nslots, slot_size, first_index=first_index)


def test_size_for_and_layout_offsets() -> None:
    assert RingLayout.size_for(8, 32) == 256 + 8 * 32
    assert RingLayout.slot_size_for(60) == 64
    assert RingLayout.slot_size_for(0) == 8
    buf, ring = make(4, 16)
    assert struct.unpack_from("<IHHII", buf, 0) == (MAGIC, VERSION, 256, 16, 4)
    assert buf[0:4] == b"VRNG"
    ring.put_nowait(b"abc")
    assert struct.unpack_from("<Q", buf, 64)[0] == 1  # producer index, own cache line
    assert struct.unpack_from("<Q", buf, 128)[0] == 0  # consumer index, own cache line
    assert struct.unpack_from("<I", buf, 256)[0] == 3 and buf[260:263] == b"abc"
    ring.get_nowait()
    assert struct.unpack_from("<Q", buf, 128)[0] == 1
    ring.set_consumer_waiting(True)
    ring.set_producer_waiting(True)
    assert struct.unpack_from("<II", buf, 192) == (1, 1)
    ring.close_producer()
    ring.close_consumer()
    assert struct.unpack_from("<II", buf, 16) == (1, 1)
    ring.release()


def test_put_get_single_and_empty_full_errors() -> None:
    _, ring = make(4, 16)
    with pytest.raises(RingEmpty) as empty:
        ring.get_nowait()
    for i in range(4):
        ring.put_nowait(bytes([i]) * (i + 1))
    with pytest.raises(RingFull) as full:
        ring.put_nowait(b"x")
    for exc in (empty.value, full.value):
        assert isinstance(exc, WouldBlock) and isinstance(exc, Busy)
        assert exc.errno == errno.EAGAIN
    assert full.value.reason == "RING_FULL" and empty.value.reason == "RING_EMPTY"
    assert [ring.get_nowait() for _ in range(4)] == [b"\0", b"\1\1", b"\2\2\2", b"\3\3\3\3"]
    assert not ring.has_data() and ring.has_space()


def test_payload_size_limits() -> None:
    _, ring = make(4, 16)
    assert ring.max_payload == 12
    ring.put_nowait(b"")
    ring.put_nowait(b"y" * 12)
    with pytest.raises(TooBig):
        ring.put_nowait(b"z" * 13)
    with pytest.raises(TooBig):
        ring.put_batch([b"ok", b"z" * 13])
    assert ring.statistics().used == 2  # nothing of the rejected batch was written
    assert ring.get_nowait() == b""
    assert ring.get_nowait() == b"y" * 12


def test_accepts_bytearray_and_typed_memoryview() -> None:
    _, ring = make(4, 32)
    ring.put_nowait(bytearray(b"ba"))
    ring.put_nowait(memoryview(struct.pack("<4I", 1, 2, 3, 4)).cast("I"))
    ring.put_batch([memoryview(b"mv"), b"b"])
    assert ring.get_batch(10) == [b"ba", struct.pack("<4I", 1, 2, 3, 4), b"mv", b"b"]


@pytest.mark.parametrize("first_index", [0, M64 - 5])
def test_wrap_around_single_items(first_index: int) -> None:
    _, ring = make(8, 16, first_index=first_index)
    for i in range(1000):  # 125 laps of an 8-slot ring
        ring.put_nowait(i.to_bytes(4, "little"))
        assert ring.get_nowait() == i.to_bytes(4, "little")
    stats = ring.statistics()
    assert stats.produced == stats.consumed == (first_index + 1000) & M64
    assert stats.used == 0


@pytest.mark.parametrize("first_index", [0, M64 - 5])
def test_wrap_around_fifo_order(first_index: int) -> None:
    _, ring = make(8, 16, first_index=first_index)
    expected = deque[bytes]()
    for i in range(5000):
        item = i.to_bytes(4, "little")
        if not ring.has_space():
            assert ring.get_nowait() == expected.popleft()
        ring.put_nowait(item)
        expected.append(item)
        if i % 7 == 0:
            assert ring.get_nowait() == expected.popleft()
    while expected:
        assert ring.get_nowait() == expected.popleft()
    stats = ring.statistics()
    assert stats.used == 0 and stats.produced == stats.consumed == (first_index + 5000) & M64


@pytest.mark.parametrize("first_index", [0, M64 - 2])
def test_wrap_around_batches(first_index: int) -> None:
    _, ring = make(16, 16, first_index=first_index)
    sent = received = 0
    out: list[bytes] = []
    sizes = [1, 3, 16, 5, 17, 2, 9]
    for step in range(2000):
        batch = [i.to_bytes(8, "little") for i in range(sent, sent + sizes[step % len(sizes)])]
        try:
            sent += ring.put_batch(batch)
        except RingFull:
            assert ring.statistics().used == 16
        got = ring.get_batch(sizes[(step + 3) % len(sizes)])
        out.extend(got)
        received += len(got)
    out.extend(ring.get_batch(100) if ring.has_data() else [])
    assert [int.from_bytes(b, "little") for b in out] == list(range(sent))
    assert sent > 10 * 16


def test_put_batch_partial_and_full() -> None:
    _, ring = make(4, 16)
    assert ring.put_batch([]) == 0
    assert ring.put_batch([b"1", b"2", b"3"]) == 3
    assert ring.put_batch([b"4", b"5", b"6"]) == 1
    with pytest.raises(RingFull):
        ring.put_batch([b"7"])
    assert ring.get_batch(2) == [b"1", b"2"]
    assert ring.get_batch(10) == [b"3", b"4"]
    with pytest.raises(RingEmpty):
        ring.get_batch(1)
    with pytest.raises(InvalidArgument):
        ring.get_batch(0)


def test_get_into() -> None:
    _, ring = make(4, 64)
    ring.put_nowait(b"0123456789")
    small, big = bytearray(4), bytearray(64)
    with pytest.raises(TooBig):
        ring.get_into(small)
    assert ring.get_into(big) == 10 and big[:10] == b"0123456789"
    with pytest.raises(RingEmpty):
        ring.get_into(big)


def test_statistics_is_frozen_record() -> None:
    _, ring = make(8, 16)
    ring.put_batch([b"a", b"b", b"c"])
    ring.get_nowait()
    stats = ring.statistics()
    assert stats == RingStatistics(capacity=8, used=2, produced=3, consumed=1)
    with pytest.raises(FrozenInstanceError):
        stats.used = 0  # type: ignore[misc]


def test_two_handles_on_one_buffer() -> None:
    buf, producer = make(8, 16)
    consumer = Ring.attach(buf)
    for i in range(100):
        producer.put_nowait(bytes([i]))
        assert consumer.get_nowait() == bytes([i])
    assert not producer.producer_closed
    producer.close_producer()
    assert consumer.producer_closed and not consumer.consumer_closed


@pytest.mark.parametrize(
    ("nslots", "slot_size"), [(0, 16), (3, 16), (6, 16), (1 << 25, 16), (4, 4), (4, 12), (4, 20)]
)
def test_bad_geometry_rejected(nslots: int, slot_size: int) -> None:
    with pytest.raises(InvalidArgument):
        RingLayout.size_for(nslots, slot_size)
    with pytest.raises(InvalidArgument):
        Ring.init(bytearray(1 << 16), nslots, slot_size)


def test_one_slot_ring_is_valid() -> None:
    _, ring = make(1, 8)
    ring.put_nowait(b"1234")
    with pytest.raises(RingFull):
        ring.put_nowait(b"x")
    assert ring.get_nowait() == b"1234"


def test_buffer_too_small_or_readonly() -> None:
    with pytest.raises(InvalidArgument):
        Ring.init(bytearray(RingLayout.size_for(8, 16) - 1), 8, 16)
    with pytest.raises(InvalidArgument):
        Ring.init(bytes(RingLayout.size_for(8, 16)), 8, 16)
    with pytest.raises(InvalidArgument):
        Ring.attach(bytearray(100))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (0, "<I", 0xDEADBEEF, "BAD_MAGIC"),
        (4, "<H", 2, "BAD_VERSION"),
        (6, "<H", 128, "BAD_VERSION"),
        (12, "<I", 6, "INVALID_ARGUMENT"),  # slot count not a power of two
        (12, "<I", 64, "INVALID_ARGUMENT"),  # more slots than the buffer holds
        (8, "<I", 12, "INVALID_ARGUMENT"),  # slot size not a multiple of 8
        (64, "<Q", 9, "RING_CORRUPT"),  # producer 9 ahead of consumer in an 8-slot ring
    ],
)
def test_attach_rejects_bad_headers(offset: int, fmt: str, value: int, reason: str) -> None:
    buf, ring = make(8, 16)
    ring.release()
    struct.pack_into(fmt, buf, offset, value)
    with pytest.raises(InvalidArgument) as info:
        Ring.attach(buf)
    assert info.value.reason == reason


def test_corrupt_length_and_index_detected_on_get() -> None:
    buf, ring = make(4, 16)
    consumer = Ring.attach(buf)
    ring.put_nowait(b"ok")
    struct.pack_into("<I", buf, 256, 100)  # length larger than the slot
    with pytest.raises(InvalidArgument) as info:
        consumer.get_nowait()
    assert info.value.reason == "RING_CORRUPT"
    struct.pack_into("<I", buf, 256, 2)
    assert consumer.get_nowait() == b"ok"
    struct.pack_into("<Q", buf, 64, 50)  # producer index 49 items ahead in a 4-slot ring
    with pytest.raises(InvalidArgument) as info:
        consumer.get_nowait()
    assert info.value.reason == "RING_CORRUPT"


def test_release_lets_the_buffer_go() -> None:
    buf, ring = make(4, 16)
    ring.release()
    ring.release()
    buf.extend(b"x")  # a bytearray with exported views could not be resized


class RingModel(RuleBasedStateMachine):
    """The ring behaves like a bounded deque, for any interleaving of operations."""

    ring: Ring
    model: deque[bytes]

    @initialize(
        nslots=st.sampled_from([1, 2, 4, 8]),
        slot_size=st.sampled_from([8, 16, 24]),
        first_index=st.sampled_from([0, 7, M64 - 3]),
    )
    def setup(self, nslots: int, slot_size: int, first_index: int) -> None:
        self.nslots = nslots
        self.max = slot_size - 4
        _, self.ring = make(nslots, slot_size, first_index=first_index)
        self.model = deque()

    @rule(data=st.binary(max_size=24))
    def put(self, data: bytes) -> None:
        if len(data) > self.max:
            with pytest.raises(TooBig):
                self.ring.put_nowait(data)
        elif len(self.model) == self.nslots:
            with pytest.raises(RingFull):
                self.ring.put_nowait(data)
        else:
            self.ring.put_nowait(data)
            self.model.append(data)

    @rule(items=st.lists(st.binary(max_size=20), max_size=10))
    def put_batch(self, items: list[bytes]) -> None:
        free = self.nslots - len(self.model)
        if items and not free:
            with pytest.raises(RingFull):
                self.ring.put_batch(items)
        elif any(len(d) > self.max for d in items[:free]):
            with pytest.raises(TooBig):  # only the items that fit are examined, none is written
                self.ring.put_batch(items)
        else:
            assert self.ring.put_batch(items) == min(free, len(items))
            self.model.extend(items[:free])

    @rule()
    def get(self) -> None:
        if not self.model:
            with pytest.raises(RingEmpty):
                self.ring.get_nowait()
        else:
            assert self.ring.get_nowait() == self.model.popleft()

    @precondition(lambda self: bool(self.model))
    @rule(k=st.integers(min_value=1, max_value=10))
    def get_batch(self, k: int) -> None:
        want = [self.model.popleft() for _ in range(min(k, len(self.model)))]
        assert self.ring.get_batch(k) == want

    @invariant()
    def counts_match(self) -> None:
        stats = self.ring.statistics()
        assert stats.used == len(self.model)
        assert stats.capacity == self.nslots
        assert self.ring.has_data() == bool(self.model)
        assert self.ring.has_space() == (len(self.model) < self.nslots)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
