"""Tests of vgpusim.common.shm.notify and .handover: eventfd waits, peer death, fd hand-over."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvloop

from vgpusim.common.errors import InvalidArgument, TimedOut, TooBig, WrongState
from vgpusim.common.shm.errors import PEER_CLOSED, PEER_DIED, PeerGone
from vgpusim.common.shm.handover import MAX_PAYLOAD, recv_fds, recv_fds_async, send_fds, send_fds_async
from vgpusim.common.shm.notify import Notifier, PeerWatch

if TYPE_CHECKING:
    from conftest import Children

T = 10.0  # generous bound for waits that must succeed


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    n = Notifier(spin_us=20)
    yield n
    n.close()


def test_signal_wait_drain(notifier: Notifier) -> None:
    assert notifier.drain() == 0
    notifier.signal()
    notifier.signal()
    assert notifier.drain() == 2
    notifier.signal()
    notifier.wait(T)  # without a predicate: returns once signalled, consuming the count
    assert notifier.drain() == 0


def test_wait_times_out(notifier: Notifier) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimedOut):
        notifier.wait(0.05)
    with pytest.raises(TimedOut):
        notifier.wait(0.05, ready=lambda: False, spin_us=10)
    assert time.monotonic() - t0 < T


def test_ready_predicate_short_circuits_and_spin_catches(notifier: Notifier) -> None:
    notifier.wait(0, ready=lambda: True)
    calls = 0

    def soon() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    notifier.wait(0, ready=soon, spin_us=1e6)  # caught while spinning: no signal needed
    assert calls == 4


def test_spin_budget_adapts() -> None:
    n = Notifier(spin_us=10)
    try:
        assert n.spin_budget_us == 10
        with pytest.raises(TimedOut):
            n.wait(0.001, ready=lambda: False, spin_us=3)  # an explicit spin leaves the budget alone
        assert n.spin_budget_us == 10
        for expected in (5, 2.5, 1.25, 0):  # every blocked wait halves it, down to 0 below 1 us
            with pytest.raises(TimedOut):
                n.wait(0.001, ready=lambda: False)
            assert n.spin_budget_us == expected
        calls = 0

        def second_call() -> bool:  # false before spinning, true at the first check after
            nonlocal calls
            calls += 1
            return calls % 2 == 0

        for _ in range(15):  # no spin at budget 0: these find it true only after arming
            calls = 0
            n.wait(T, ready=second_call)
            assert n.spin_budget_us == 0
        calls = 0
        n.wait(T, ready=second_call)  # the 16th wait probes with the full spin, and succeeds
        assert n.spin_budget_us == 10
    finally:
        n.close()


def test_arm_is_set_while_blocked_and_cleared_after(notifier: Notifier) -> None:
    flag: list[bool] = []
    done = threading.Event()
    helpers: list[threading.Thread] = []

    def arm(waiting: bool) -> None:
        flag.append(waiting)
        if waiting and not helpers:
            helpers.append(threading.Thread(target=lambda: (done.set(), notifier.signal())))
            helpers[0].start()

    notifier.wait(T, ready=done.is_set, arm=arm, spin_us=0)
    helpers[0].join(T)
    assert flag[0] is True and flag[-1] is False


def test_signal_from_another_thread_wakes_waiter(notifier: Notifier) -> None:
    box: list[int] = []
    t = threading.Thread(target=lambda: (box.append(1), notifier.signal()))
    t.start()
    notifier.wait(T, ready=lambda: bool(box), spin_us=0)
    t.join(T)


def test_closed_notifier_is_wrong_state() -> None:
    n = Notifier()
    n.close()
    n.close()
    with pytest.raises(WrongState):
        n.signal()
    with pytest.raises(WrongState):
        n.fileno()


def test_adopts_an_existing_fd() -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    n = Notifier(fd)
    os.eventfd_write(fd, 5)
    assert n.fileno() == fd and n.drain() == 5
    n.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_peer_hangup_wakes_waiter(notifier: Notifier, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    watch = PeerWatch(a.dup())
    assert not watch.gone()
    b.send(b"data")  # data on the watch connection is not a hang-up
    assert not watch.gone()
    closer = threading.Thread(target=b.close)
    closer.start()
    with pytest.raises(PeerGone) as info:
        notifier.wait(T, ready=lambda: False, peer=watch, spin_us=0)
    closer.join(T)
    assert info.value.reason == PEER_DIED
    assert watch.gone()
    watch.close()
    watch.close()


def test_ready_wins_over_hangup(notifier: Notifier, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    watch = PeerWatch(a.dup())
    b.close()
    notifier.wait(T, ready=lambda: True, peer=watch)
    watch.close()


async def test_wait_async_signal_timeout_and_hangup(
    notifier: Notifier, pair: tuple[socket.socket, socket.socket]
) -> None:
    loop = asyncio.get_running_loop()
    loop.call_soon(notifier.signal)
    await notifier.wait_async(T)
    state = {"ready": False}

    def make_ready() -> None:
        state["ready"] = True
        notifier.signal()

    loop.call_soon(make_ready)
    await notifier.wait_async(T, ready=lambda: state["ready"])
    with pytest.raises(TimedOut):
        await notifier.wait_async(0.05, ready=lambda: False)
    a, b = pair
    watch = PeerWatch(a.dup())
    loop.call_soon(b.close)
    with pytest.raises(PeerGone):
        await notifier.wait_async(T, ready=lambda: False, peer=watch)
    watch.close()


async def test_wait_async_rejects_data_on_watch(
    notifier: Notifier, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    watch = PeerWatch(a.dup())
    b.send(b"?")
    with pytest.raises(InvalidArgument) as info:
        await notifier.wait_async(T, ready=lambda: False, peer=watch)
    assert info.value.reason == "UNEXPECTED_PEER_DATA"
    watch.close()


def test_wait_async_under_uvloop(notifier: Notifier) -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_later(0.01, notifier.signal)
        await notifier.wait_async(T)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- hand-over ---------------------------------------------------------------------------------


def test_send_recv_fds_roundtrip(
    pair: tuple[socket.socket, socket.socket], open_fds: Callable[[], int]
) -> None:
    a, b = pair
    before = open_fds()
    efd = Notifier()
    send_fds(a, b"first", [efd.fileno()], timeout=T)
    send_fds(a, b"second", [], timeout=T)
    payload, fds = recv_fds(b, timeout=T)
    assert payload == b"first" and len(fds) == 1 and fds[0] != efd.fileno()
    theirs = Notifier(fds[0])
    theirs.signal()
    assert efd.drain() == 1  # same kernel object
    assert recv_fds(b, timeout=T) == (b"second", [])
    theirs.close()
    efd.close()
    assert open_fds() == before


def test_large_payload_and_blocking_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    big = os.urandom(MAX_PAYLOAD)
    t = threading.Thread(target=send_fds, args=(a, big, []), kwargs={"timeout": T})
    t.start()
    assert recv_fds(b, timeout=T) == (big, [])
    t.join(T)
    with pytest.raises(TooBig):
        send_fds(a, big + b"!", [], timeout=T)


def test_too_many_fds_rejected_and_closed(
    pair: tuple[socket.socket, socket.socket], open_fds: Callable[[], int]
) -> None:
    a, b = pair
    efds = [Notifier() for _ in range(4)]
    before = open_fds()
    send_fds(a, b"x", [n.fileno() for n in efds], timeout=T)
    with pytest.raises(TooBig):
        recv_fds(b, 2, timeout=T)
    assert open_fds() == before
    with pytest.raises(TooBig):
        send_fds(a, b"x", [efds[0].fileno()] * 65, timeout=T)
    for n in efds:
        n.close()


def test_recv_timeout_eof_and_garbage(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(TimedOut):
        recv_fds(b, timeout=0.05)
    a.sendall(b"not a frame at all")
    with pytest.raises(InvalidArgument):
        recv_fds(b, timeout=T)
    a.close()
    c, d = socket.socketpair()
    with c, d:
        c.close()
        with pytest.raises(PeerGone) as info:
            recv_fds(d, timeout=T)
        assert info.value.reason == PEER_CLOSED


def test_handover_needs_unix_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(InvalidArgument):
        send_fds(s, b"", [], timeout=T)


async def test_async_handover(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.setblocking(False)
    b.setblocking(False)
    efd = Notifier()
    recv_task = asyncio.create_task(recv_fds_async(b, timeout=T))
    await send_fds_async(a, b"async", [efd.fileno()], timeout=T)
    payload, fds = await recv_task
    assert payload == b"async"
    os.close(fds[0])
    efd.close()
    with pytest.raises(TimedOut):
        await recv_fds_async(b, timeout=0.05)


# -- across processes --------------------------------------------------------------------------

_EVENTFD_CHILD = """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    n = Notifier()
    send_fds(sock, b"efd", [n.fileno()], timeout=10)
    if sys.argv[2] == "signal":
        assert sock.recv(2) == b"go"
        n.signal()
        sock.recv(1)  # wait for the parent to finish
    else:
        time.sleep(60)  # the test kills us
"""


def test_eventfd_handover_across_processes(
    listener: tuple[socket.socket, str], children: Children, open_fds: Callable[[], int]
) -> None:
    before = open_fds()
    proc = children.start(_EVENTFD_CHILD, listener[1], "signal")
    conn, _ = listener[0].accept()
    with conn:
        payload, fds = recv_fds(conn, timeout=T)
        n = Notifier(fds[0])
        assert payload == b"efd"
        conn.sendall(b"go")
        n.wait(T)
        n.close()
    children.finish(proc)
    assert open_fds() == before


@pytest.mark.parametrize("when", ["before", "during"])
def test_peer_killed_wakes_waiter_with_peer_gone(
    listener: tuple[socket.socket, str], children: Children, when: str, shm_dir: Path
) -> None:
    proc = children.start(_EVENTFD_CHILD, listener[1], "sleep")
    conn, _ = listener[0].accept()
    _, fds = recv_fds(conn, timeout=T)
    n, watch = Notifier(fds[0]), PeerWatch(conn)
    if when == "before":
        proc.send_signal(signal.SIGKILL)
        proc.wait(T)
    killer = threading.Timer(0.1, proc.send_signal, args=(signal.SIGKILL,))
    if when == "during":
        killer.start()
    t0 = time.monotonic()
    with pytest.raises(PeerGone) as info:
        n.wait(T, ready=lambda: False, peer=watch)
    assert info.value.reason == PEER_DIED
    if when == "during":
        killer.join(T)
    assert time.monotonic() - t0 < T / 2
    n.close()
    watch.close()
