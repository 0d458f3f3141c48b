"""Tests of vgpusim.common.shm.channel and .endpoint: layout, hand-over, waits, peers that die."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvloop

from vgpusim.common.errors import Busy, InvalidArgument, NotFound, TimedOut, TooBig, WrongState
from vgpusim.common.shm.channel import (
    MAGIC,
    ChannelEnd,
    ChannelSpec,
    RingSpec,
    Side,
    attach_channel,
    create_channel,
)
from vgpusim.common.shm.endpoint import Receiver
from vgpusim.common.shm.errors import PEER_CLOSED, PEER_DIED, PeerGone, RingEmpty, RingFull
from vgpusim.common.shm.handover import recv_fds, send_fds
from vgpusim.common.shm.segment import Segment, list_segments, remove_all

if TYPE_CHECKING:
    from conftest import Children

T = 10.0
SPEC = ChannelSpec(
    (
        RingSpec("trap", 16, 64, Side.PEER),
        RingSpec("reply", 16, 64, Side.OWNER),
        RingSpec("irq", 4, 16, Side.OWNER),
    )
)


@pytest.fixture
def ends(shm_dir: Path) -> Iterator[tuple[ChannelEnd, ChannelEnd]]:
    """An owner and a peer end in this process (the peer gets duplicated descriptors)."""
    owner = create_channel(shm_dir, "chan", SPEC, spin_us=5)
    payload, fds = owner.export()
    peer = attach_channel(shm_dir, payload, [os.dup(fd) for fd in fds], spin_us=5)
    try:
        yield owner, peer
    finally:
        peer.close()
        owner.close()


@pytest.mark.parametrize(
    "build",
    [
        lambda: RingSpec("Trap", 4, 16, Side.PEER),
        lambda: RingSpec("", 4, 16, Side.PEER),
        lambda: RingSpec("x" * 32, 4, 16, Side.PEER),
        lambda: RingSpec("ok", 3, 16, Side.PEER),
        lambda: RingSpec("ok", 4, 10, Side.PEER),
        lambda: ChannelSpec(()),
        lambda: ChannelSpec(tuple(RingSpec(f"r{i}", 1, 8, Side.PEER) for i in range(17))),
        lambda: ChannelSpec((RingSpec("a", 1, 8, Side.PEER), RingSpec("a", 1, 8, Side.OWNER))),
    ],
)
def test_bad_specs_rejected(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument):
        build()


def test_segment_layout(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, _ = ends
    buf = owner.segment.buf
    assert buf[:4].tobytes() == b"VCHN"
    magic, version, nrings, dir_end, _, total = struct.unpack_from("<IHHIIQ", buf, 0)
    assert (magic, version, nrings, dir_end, total) == (MAGIC, 1, 3, 256, owner.segment.size)
    offsets, size = SPEC.offsets()
    assert size == total
    for i, rs in enumerate(SPEC.rings):
        name, off, rsize, producer = struct.unpack_from("<32sQQB", buf, 64 + 64 * i)
        assert (name.rstrip(b"\0").decode(), off, rsize, producer) == (
            rs.name,
            offsets[i],
            rs.size,
            rs.producer,
        )
        assert off % 64 == 0 and buf[off : off + 4].tobytes() == b"VRNG"


def test_both_directions(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    peer.sender("trap").send_nowait(b"mmio read 0x10")
    assert owner.receiver("trap").recv(timeout=T) == b"mmio read 0x10"
    owner.sender("reply").send(b"value 7", timeout=T)
    owner.sender("irq").send_nowait(b"msi 0")
    assert peer.receiver("reply").recv(timeout=T) == b"value 7"
    assert peer.receiver("irq").recv_nowait() == b"msi 0"
    stats = owner.statistics()
    assert stats["trap"].consumed == 1 and stats["irq"].used == 0
    assert peer.side is Side.PEER and owner.name == peer.name == "chan"


def test_direction_and_names_checked(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    with pytest.raises(WrongState):
        owner.sender("trap")
    with pytest.raises(WrongState):
        peer.receiver("trap")
    with pytest.raises(NotFound):
        owner.receiver("nope")
    with pytest.raises(WrongState):
        peer.export()


def test_batches_and_errors(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    tx, rx = peer.sender("trap"), owner.receiver("trap")
    with pytest.raises(RingEmpty):
        rx.recv_nowait()
    assert tx.send_batch_nowait([bytes([i]) for i in range(20)]) == 16
    with pytest.raises(RingFull):
        tx.send_nowait(b"x")
    with pytest.raises(TooBig):
        tx.send_nowait(b"x" * 61)
    assert rx.recv_batch(10, timeout=T) == [bytes([i]) for i in range(10)]
    buf = bytearray(64)
    assert rx.recv_into(buf, timeout=T) == 1 and buf[0] == 10
    assert rx.recv_batch_nowait(100) == [bytes([i]) for i in range(11, 16)]


def test_recv_times_out(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, _ = ends
    t0 = time.monotonic()
    with pytest.raises(TimedOut):
        owner.receiver("trap").recv(timeout=0.05)
    assert time.monotonic() - t0 < T


def test_send_waits_for_space(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    tx, rx = owner.sender("irq"), peer.receiver("irq")
    for i in range(4):
        tx.send_nowait(bytes([i]))
    with pytest.raises(TimedOut):
        tx.send(b"late", timeout=0.05)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(rx.recv(timeout=T) for _ in range(6)))
    reader.start()
    tx.send(b"4", timeout=T)
    tx.send_batch([b"5"], timeout=T)
    reader.join(T)
    assert got == [b"\0", b"\1", b"\2", b"\3", b"4", b"5"]


def test_wake_up_across_threads(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    tx, rx = peer.sender("trap"), owner.receiver("trap")
    out: list[bytes] = []

    def serve() -> None:
        for _ in range(500):
            out.append(rx.recv(timeout=T))

    t = threading.Thread(target=serve)
    t.start()
    for i in range(500):
        tx.send(i.to_bytes(4, "little"), timeout=T)
    t.join(T)
    assert [int.from_bytes(b, "little") for b in out] == list(range(500))


def test_orderly_close_drains_then_peer_gone(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    rx = peer.receiver("reply")
    owner.sender("reply").send_nowait(b"last words")
    closer = threading.Thread(target=owner.close)
    closer.start()
    assert rx.recv(timeout=T) == b"last words"
    with pytest.raises(PeerGone) as info:
        rx.recv(timeout=T)
    closer.join(T)
    assert info.value.reason == PEER_CLOSED
    with pytest.raises(PeerGone):
        peer.sender("trap").send_batch([b"x"] * 17, timeout=T)


def test_close_cleans_up(shm_dir: Path, open_fds: Callable[[], int]) -> None:
    before = open_fds()
    owner = create_channel(shm_dir, "c1", SPEC)
    payload, fds = owner.export()
    peer = attach_channel(shm_dir, payload, [os.dup(fd) for fd in fds])
    assert open_fds() > before
    tx = peer.sender("trap")
    peer.close()
    peer.close()
    with pytest.raises(WrongState):
        tx.send_nowait(b"x")
    with pytest.raises(WrongState):
        peer.sender("trap")
    assert list_segments(shm_dir) == ["c1"]  # the peer does not unlink
    owner.close()
    with pytest.raises(WrongState):
        owner.export()
    assert os.listdir(shm_dir) == []
    assert open_fds() == before


def test_close_with_a_view_still_held(shm_dir: Path) -> None:
    owner = create_channel(shm_dir, "held", SPEC)
    view = owner.segment.buf[:8]
    with pytest.raises(Busy):
        owner.close()
    assert list_segments(shm_dir) == []  # unlinked and released all the same
    view.release()
    owner.close()
    assert owner.segment.closed


def test_create_twice_is_already_exists_and_leaves_nothing(
    shm_dir: Path, open_fds: Callable[[], int]
) -> None:
    with create_channel(shm_dir, "c", SPEC):
        before = open_fds()
        with pytest.raises(Exception, match="exists"):
            create_channel(shm_dir, "c", SPEC)
        assert open_fds() == before
    assert os.listdir(shm_dir) == []


def _attach_fails(shm_dir: Path, payload: bytes, nfds: int, open_fds: Callable[[], int]) -> Exception:
    before = open_fds()
    fds = [os.eventfd(0) for _ in range(nfds)]
    with pytest.raises((InvalidArgument, NotFound)) as info:
        attach_channel(shm_dir, payload, fds)
    assert open_fds() == before  # attach owns the descriptors even when it fails
    return info.value


def test_attach_rejects_bad_handovers(shm_dir: Path, open_fds: Callable[[], int]) -> None:
    with create_channel(shm_dir, "good", SPEC) as owner:
        payload, _ = owner.export()
        good = json.loads(payload)
        _attach_fails(shm_dir, b"not json", 6, open_fds)
        _attach_fails(shm_dir, json.dumps({**good, "format": "x"}).encode(), 6, open_fds)
        _attach_fails(shm_dir, json.dumps({**good, "version": 2}).encode(), 6, open_fds)
        _attach_fails(shm_dir, payload, 5, open_fds)
        _attach_fails(shm_dir, json.dumps({**good, "rings": ["trap", "irq", "reply"]}).encode(), 6, open_fds)
        err = _attach_fails(shm_dir, json.dumps({**good, "segment": "gone"}).encode(), 6, open_fds)
        assert isinstance(err, NotFound)
        with Segment.create(shm_dir, "bogus", 4096) as seg:
            seg.buf[:4] = b"XXXX"
            err = _attach_fails(shm_dir, json.dumps({**good, "segment": "bogus"}).encode(), 6, open_fds)
            assert isinstance(err, InvalidArgument) and err.reason == "BAD_MAGIC"
            seg.unlink()


async def test_async_endpoints(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends
    rx, tx = owner.receiver("trap"), peer.sender("trap")
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, tx.send_nowait, b"async trap")
    assert await rx.recv_async(timeout=T) == b"async trap"
    with pytest.raises(TimedOut):
        await rx.recv_async(timeout=0.05)
    irq_tx, irq_rx = owner.sender("irq"), peer.receiver("irq")
    for i in range(4):
        await irq_tx.send_async(bytes([i]), timeout=T)
    loop.call_later(0.01, irq_rx.recv_nowait)
    await irq_tx.send_async(b"4", timeout=T)  # waited for the space the reader freed
    assert await irq_rx.recv_batch_async(10, timeout=T) == [b"\1", b"\2", b"\3", b"4"]


def test_async_under_uvloop(ends: tuple[ChannelEnd, ChannelEnd]) -> None:
    owner, peer = ends

    async def main() -> bytes:
        asyncio.get_running_loop().call_later(0.01, peer.sender("trap").send_nowait, b"uv")
        return await owner.receiver("trap").recv_async(timeout=T)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == b"uv"


# -- across processes --------------------------------------------------------------------------

_ITEM = "struct.pack('<Q', i) + bytes([i % 251]) * (i % 53)"

_TRANSFER_CHILD = f"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    payload, fds = recv_fds(sock, timeout=10)
    end = attach_channel(sys.argv[2], payload, fds, peer=sock)
    n = int(sys.argv[3])
    rx, tx = end.receiver("reply"), end.sender("trap")
    i = 0
    while i < n:
        for item in rx.recv_batch(64, timeout=10):
            assert item == {_ITEM}, (i, item)
            i += 1
    i = 0
    while i < n:
        batch = [{_ITEM} for i in range(i, min(n, i + 37))]
        tx.send_batch(batch, timeout=10)
        i += len(batch)
    end.close()
    print("received", n)
"""


def _serve(listener: tuple[socket.socket, str], shm_dir: Path, name: str) -> tuple[ChannelEnd, socket.socket]:
    conn, _ = listener[0].accept()
    owner = create_channel(shm_dir, name, SPEC)
    payload, fds = owner.export()
    send_fds(conn, payload, fds, timeout=T)
    owner.watch_peer(conn)
    return owner, conn


def test_cross_process_transfer_100k(
    listener: tuple[socket.socket, str], shm_dir: Path, children: Children, open_fds: Callable[[], int]
) -> None:
    n = 100_000
    proc = children.start(_TRANSFER_CHILD, listener[1], str(shm_dir), str(n))
    before = open_fds() - 2  # the child's pipes, closed by finish()
    owner, _ = _serve(listener, shm_dir, "xfer")
    with owner:
        tx, rx = owner.sender("reply"), owner.receiver("trap")
        for i in range(n // 2):
            tx.send(struct.pack("<Q", i) + bytes([i % 251]) * (i % 53), timeout=T)
        items = [struct.pack("<Q", i) + bytes([i % 251]) * (i % 53) for i in range(n // 2, n)]
        tx.send_batch(items, timeout=6 * T)  # the timeout bounds the whole batch
        i = 0
        while i < n:
            for item in rx.recv_batch(100, timeout=T):
                assert item == struct.pack("<Q", i) + bytes([i % 251]) * (i % 53)
                i += 1
        assert children.finish(proc).strip() == f"received {n}"
        with pytest.raises(PeerGone):  # the child closed its end in order
            rx.recv(timeout=T)
    assert os.listdir(shm_dir) == ["broker.sock"]
    assert open_fds() == before


_SLEEPING_PEER = """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    payload, fds = recv_fds(sock, timeout=10)
    end = attach_channel(sys.argv[2], payload, fds, peer=sock)
    end.sender("trap").send_batch([b"one", b"two"], timeout=10)
    time.sleep(60)  # the test kills us
"""


@pytest.mark.parametrize("when", ["before", "during"])
def test_peer_killed_wakes_owner_with_peer_gone(
    listener: tuple[socket.socket, str], shm_dir: Path, children: Children, when: str
) -> None:
    proc = children.start(_SLEEPING_PEER, listener[1], str(shm_dir))
    owner, _ = _serve(listener, shm_dir, "victim")
    with owner:
        rx = owner.receiver("trap")
        assert rx.recv(timeout=T) == b"one"
        if when == "before":
            proc.send_signal(signal.SIGKILL)
            proc.wait(T)
        killer = threading.Timer(0.1, proc.send_signal, args=(signal.SIGKILL,))
        if when == "during":
            killer.start()
        assert rx.recv(timeout=T) == b"two"  # what it sent before dying still arrives
        t0 = time.monotonic()
        with pytest.raises(PeerGone) as info:
            rx.recv(timeout=T)
        assert info.value.reason == PEER_DIED
        assert time.monotonic() - t0 < T / 2
        with pytest.raises(PeerGone):
            owner.sender("irq").send_batch([b"x"] * 5, timeout=T)
        if when == "during":
            killer.join(T)


async def test_peer_killed_wakes_async_waiter(
    listener: tuple[socket.socket, str], shm_dir: Path, children: Children
) -> None:
    proc = children.start(_SLEEPING_PEER, listener[1], str(shm_dir))
    owner, _ = await asyncio.to_thread(_serve, listener, shm_dir, "victim")
    with owner:
        rx = owner.receiver("trap")
        assert await rx.recv_batch_async(2, timeout=T) in ([b"one", b"two"], [b"one"])
        asyncio.get_running_loop().call_later(0.05, proc.send_signal, signal.SIGKILL)
        with pytest.raises(PeerGone):
            await _drain_async(rx)


async def _drain_async(rx: Receiver) -> None:
    while True:
        await rx.recv_async(timeout=T)


_DYING_OWNER = """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    spec = ChannelSpec((RingSpec("trap", 4, 16, Side.PEER), RingSpec("reply", 4, 16, Side.OWNER)))
    end = create_channel(sys.argv[2], "orphan", spec)
    payload, fds = end.export()
    send_fds(sock, payload, fds, timeout=10)
    end.watch_peer(sock)
    end.sender("reply").send_nowait(b"hello")
    time.sleep(60)  # the test kills us
"""


def test_owner_killed_wakes_peer_and_leaves_segment_for_cleanup(
    listener: tuple[socket.socket, str], shm_dir: Path, children: Children, open_fds: Callable[[], int]
) -> None:
    proc = children.start(_DYING_OWNER, listener[1], str(shm_dir))
    before = open_fds()  # after the child's pipes
    conn, _ = listener[0].accept()
    payload, fds = recv_fds(conn, timeout=T)
    with attach_channel(shm_dir, payload, fds, peer=conn) as peer:
        rx = peer.receiver("reply")
        assert rx.recv(timeout=T) == b"hello"
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(PeerGone) as info:
            rx.recv(timeout=T)
        assert info.value.reason == PEER_DIED
    assert list_segments(shm_dir) == ["orphan"]
    assert remove_all(shm_dir) == 1
    assert open_fds() == before
