"""Cross-process wake-ups: an eventfd :class:`Notifier` with a bounded adaptive spin, and peer death.

A ring holds data; a notifier wakes the process sleeping on it.  The producer ``signal()``s an
eventfd (8-byte add to its counter); the consumer ``wait()``s: first it spins for a few
microseconds on a caller-supplied ``ready`` predicate (a cross-vCPU wake-up costs ~50 us on our
VMs, a reply often arrives sooner), then it blocks in ``poll`` on the eventfd *and* on a
:class:`PeerWatch`, so it also wakes when the peer dies.  ``wait_async`` does the same on an
asyncio (or uvloop) loop through ``add_reader``, without spinning.

Glossary:
- ready: a predicate, e.g. "the ring has data or the producer closed"; a wait returns as soon as
  it is true, and checks it again after every wake-up (wake-ups may be spurious).
- arm: a callback ``arm(True)`` run before sleeping and ``arm(False)`` after, which sets the
  ring's waiting flag; the notifier issues :func:`~.ring.full_fence` between ``arm(True)`` and
  the last ``ready()`` check (the Dekker handshake described in :mod:`.ring`).
- spin budget: how long the next wait may spin.  It is reset to ``spin_us`` when spinning caught
  the event and halved (down to 0 below 1 us) when the wait had to block.  At 0, one wait in
  ``gap`` probes with the full ``spin_us``; ``gap`` doubles from 16 to 1024 with every failed
  probe.  So a peer that answers within the spin is caught without a wake-up (~50 us across
  vCPUs), and a slow peer, or one sharing our vCPU (where spinning only delays it), costs
  almost nothing.
- peer watch: a connected ``AF_UNIX`` stream socket to the peer that carries no data after the
  hand-over (:mod:`.handover`); the kernel hangs it up (POLLHUP/POLLRDHUP) when the peer exits.

| object | kernel resource | owner closes |
|---|---|---|
| :class:`Notifier` | eventfd (``EFD_NONBLOCK|EFD_CLOEXEC``), counter semantics | ``close()`` |
| :class:`PeerWatch` | the connection socket | ``close()`` |

Descriptors reach the peer with :func:`~.handover.send_fds`/:func:`~.handover.recv_fds`
(re-exported here).  One waiter per notifier at a time (SPSC): concurrent waits on one eventfd
steal each other's wake-ups, and ``wait_async`` registers the only reader of the fd.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import socket
import time
from collections.abc import Callable

from vgpusim.common.errors import InvalidArgument, TimedOut, WrongState

from .errors import PEER_DIED, PeerGone
from .handover import recv_fds, send_fds  # the hand-over helpers, also reachable from here
from .ring import full_fence

__all__ = ["DEFAULT_SPIN_US", "Notifier", "PeerWatch", "recv_fds", "send_fds"]

DEFAULT_SPIN_US = 30.0
"""Default spin bound: below a cross-vCPU wake-up (~50 us), above a fast local reply."""
_PROBE_MIN, _PROBE_MAX = 16, 1024
_MIN_SPIN_NS = 1000
_HUP = select.POLLHUP | select.POLLRDHUP | select.POLLERR | select.POLLNVAL

Predicate = Callable[[], bool]
Arm = Callable[[bool], None]


class PeerWatch:
    """Learns that the peer process is gone from the hang-up of a connection to it (owns ``sock``)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock

    def fileno(self) -> int:
        if self._sock is None:
            raise WrongState("peer watch is closed", reason="PEER_WATCH_CLOSED")
        return self._sock.fileno()

    def gone(self) -> bool:
        """True if the connection hung up (the peer closed it or died).  Never blocks."""
        p = select.poll()
        p.register(self.fileno(), select.POLLRDHUP)
        return any(ev & _HUP for _, ev in p.poll(0))

    def check(self) -> None:
        """Raise ``PeerGone`` (reason ``PEER_DIED``) if the peer is gone."""
        if self.gone():
            raise PeerGone("the peer hung up its connection (exited or crashed)", reason=PEER_DIED)

    def close(self) -> None:
        """Close the connection (idempotent); the peer sees us as gone."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Notifier:
    """An eventfd with ``signal``/``wait``: ``Notifier()`` makes one, ``Notifier(fd)`` adopts ``fd``."""

    __slots__ = ("_budget_ns", "_fd", "_gap", "_max_ns", "_poll", "_poll_peer", "_waits")

    def __init__(self, fd: int | None = None, *, spin_us: float = DEFAULT_SPIN_US) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if fd is None else fd
        self._max_ns = int(spin_us * 1000)
        self._budget_ns = self._max_ns
        self._gap = _PROBE_MIN
        self._waits = 0
        self._poll: select.poll | None = None
        self._poll_peer = -1

    def fileno(self) -> int:
        if self._fd < 0:
            raise WrongState("notifier is closed", reason="NOTIFIER_CLOSED")
        return self._fd

    def signal(self) -> None:
        """Wake the waiter (adds 1 to the eventfd counter; never blocks)."""
        try:
            os.eventfd_write(self.fileno(), 1)
        except BlockingIOError:
            pass  # the counter is saturated: the waiter is being woken already

    def drain(self) -> int:
        """Reset the counter; return how many signals it held (0 if none)."""
        try:
            return os.eventfd_read(self.fileno())
        except BlockingIOError:
            return 0

    def _spin(self, ready: Predicate, spin_us: float | None) -> bool:
        """Spin on ``ready`` within the budget; adapt the budget; return whether it became true."""
        adaptive, probing = spin_us is None, False
        if spin_us is not None:
            budget = int(spin_us * 1000)
        elif self._budget_ns:
            budget = self._budget_ns
        else:
            self._waits += 1
            probing = self._waits >= self._gap
            budget = self._max_ns if probing else 0
        if budget <= 0:
            return False
        now = time.perf_counter_ns
        start = now()
        while True:  # at least one check, even if we were preempted for the whole budget
            if ready():
                if adaptive:
                    self._budget_ns, self._gap, self._waits = self._max_ns, _PROBE_MIN, 0
                return True
            if now() - start >= budget:
                break
        if probing:
            self._gap, self._waits = min(_PROBE_MAX, self._gap * 2), 0
        elif adaptive:
            half = self._budget_ns // 2
            self._budget_ns = half if half >= _MIN_SPIN_NS else 0
        return False

    @property
    def spin_budget_us(self) -> float:
        """How long the next adaptive wait will spin (0: only every ``gap``-th wait probes)."""
        return self._budget_ns / 1000

    def _poller(self, peer: PeerWatch | None) -> select.poll:
        peer_fd = -1 if peer is None else peer.fileno()
        if self._poll is None or self._poll_peer != peer_fd:
            self._poll = select.poll()
            self._poll.register(self.fileno(), select.POLLIN)
            if peer_fd >= 0:
                self._poll.register(peer_fd, select.POLLRDHUP)
            self._poll_peer = peer_fd
        return self._poll

    def wait(
        self,
        timeout: float | None,
        *,
        ready: Predicate | None = None,
        arm: Arm | None = None,
        spin_us: float | None = None,
        peer: PeerWatch | None = None,
    ) -> None:
        """Return once ``ready()`` is true (or, without ``ready``, once signalled).

        Spins first (``spin_us`` overrides the adaptive budget; 0 disables spinning), then blocks
        in ``poll`` on the eventfd and the ``peer`` connection.  ``timeout`` is in seconds
        (``None``: no limit).  Errors: ``TimedOut``; ``PeerGone`` if the peer hangs up while
        ``ready()`` is false.
        """
        if ready is not None and (ready() or self._spin(ready, spin_us)):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = self._poller(peer)
        fd = self._fd
        try:
            while True:
                if arm is not None:
                    arm(True)
                    full_fence()
                if ready is not None and ready():
                    return
                if deadline is None:
                    events = poller.poll()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimedOut(f"no wake-up within {timeout} s", reason="WAIT_TIMED_OUT")
                    events = poller.poll(math.ceil(remaining * 1000))
                signalled = hup = False
                for efd, ev in events:
                    if efd == fd:
                        signalled = True
                    elif ev & _HUP:
                        hup = True
                if signalled:
                    self.drain()
                if ready is None:
                    if signalled:
                        return
                elif ready():
                    return
                if hup:
                    raise PeerGone("the peer hung up its connection (exited or crashed)", reason=PEER_DIED)
        finally:
            if arm is not None:
                arm(False)

    async def wait_async(
        self,
        timeout: float | None,
        *,
        ready: Predicate | None = None,
        arm: Arm | None = None,
        peer: PeerWatch | None = None,
    ) -> None:
        """``wait`` for asyncio: no spinning, the loop watches the eventfd and the peer connection.

        Errors: ``TimedOut``, ``PeerGone``; ``InvalidArgument`` (reason ``UNEXPECTED_PEER_DATA``)
        if the peer connection becomes readable without hanging up (the protocol forbids it).
        """
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        peer_fd = -1 if peer is None else peer.fileno()
        woken = asyncio.Event()
        signalled = False

        def on_signal() -> None:
            nonlocal signalled
            self.drain()
            signalled = True
            woken.set()

        loop.add_reader(fd, on_signal)
        if peer_fd >= 0:
            loop.add_reader(peer_fd, woken.set)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if arm is not None:
                        arm(True)
                        full_fence()
                    if ready is not None and ready():
                        return
                    await woken.wait()
                    woken.clear()
                    if ready is None and signalled:
                        return
                    if peer is not None and (ready is None or not ready()) and _readable(peer_fd):
                        peer.check()
                        raise InvalidArgument(
                            "data arrived on the peer watch connection", reason="UNEXPECTED_PEER_DATA"
                        )
        except TimeoutError as exc:
            raise TimedOut(f"no wake-up within {timeout} s", reason="WAIT_TIMED_OUT") from exc
        finally:
            if arm is not None:
                arm(False)
            loop.remove_reader(fd)
            if peer_fd >= 0:
                loop.remove_reader(peer_fd)

    def close(self) -> None:
        """Close the eventfd (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._poll = None

    def __repr__(self) -> str:
        return f"Notifier(fd={self._fd}, spin_budget_us={self.spin_budget_us:.1f})"


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLRDHUP)
    return bool(p.poll(0))
