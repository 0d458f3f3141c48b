"""The two ends of one ring with its wake-ups: :class:`Sender` (producer) and :class:`Receiver`.

A :mod:`.ring` moves bytes and a :mod:`.notify` notifier wakes sleepers; an endpoint couples them
with the ring's waiting flags so that a message costs no system call while the other side is busy
or spinning, and exactly one ``eventfd`` write when it sleeps.  Endpoints come from a
:class:`~.channel.ChannelEnd` (``end.sender("reply")``, ``end.receiver("trap")``), which owns the
ring, its two eventfds and the peer watch; the API follows trio's memory channels.

Glossary:
- data eventfd: signalled by the sender after a put when the receiver's waiting flag is set.
- space eventfd: signalled by the receiver after a get when the sender's waiting flag is set
  (the sender sleeps only on a full ring).
- ``*_nowait``: never blocks, raises ``RingFull``/``RingEmpty``; the plain forms wait up to
  ``timeout`` seconds (``None``: forever), spinning first (``spin_us``, see :mod:`.notify`).

| situation | :class:`Sender` | :class:`Receiver` |
|---|---|---|
| fast path | put, fence, signal if receiver waits | get, fence, signal if sender waits |
| full / empty ring | ``send`` waits, ``send_nowait``: ``RingFull`` | ``recv`` waits, else ``RingEmpty`` |
| peer closed its end | ``PeerGone(PEER_CLOSED)`` once full | drains, then ``PeerGone(PEER_CLOSED)`` |
| peer process died | ``PeerGone(PEER_DIED)`` when it blocks | drains, then ``PeerGone(PEER_DIED)`` |

A put into a ring whose consumer is gone succeeds until the ring is full: the closed flag and the
peer connection are only consulted on the slow path, to keep the fast path free of system calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

from vgpusim.common.errors import TimedOut, WrongState

from .errors import PEER_CLOSED, PeerGone, RingEmpty, RingFull
from .notify import Notifier, PeerWatch
from .ring import BytesLike, Ring, RingStatistics, full_fence

__all__ = ["Receiver", "Sender"]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class _Endpoint:
    __slots__ = ("_data", "_ring", "_space", "name", "peer")

    def __init__(self, name: str, ring: Ring, data: Notifier, space: Notifier) -> None:
        self.name = name
        self._ring = ring
        self._data = data
        self._space = space
        self.peer: PeerWatch | None = None

    @property
    def data_notifier(self) -> Notifier:
        """The eventfd signalled when items arrive (for a waiter that polls it with other fds)."""
        return self._data

    @property
    def ring(self) -> Ring:
        """The underlying ring (for ``statistics``-style reads; do not put/get around the endpoint)."""
        return self._ring

    def statistics(self) -> RingStatistics:
        return self._ring.statistics()

    def detach(self) -> None:
        """Called by the channel end when it closes: later use raises ``WrongState``."""
        self._ring = cast(Ring, ClosedRing(self.name))
        self.peer = None

    def _gone(self) -> PeerGone:
        return PeerGone(f"the peer closed its end of ring {self.name!r}", reason=PEER_CLOSED)


class Sender(_Endpoint):
    """The producing end of one ring of a channel."""

    __slots__ = ()

    def _writable(self) -> bool:
        return self._ring.has_space() or self._ring.consumer_closed

    def send_nowait(self, payload: BytesLike) -> None:
        """Put ``payload`` and wake the receiver if it sleeps.

        Errors: ``TooBig``, ``RingFull``, ``PeerGone`` (ring full and the consumer closed).
        """
        ring = self._ring
        try:
            ring.put_nowait(payload)
        except RingFull:
            if ring.consumer_closed:
                raise self._gone() from None
            raise
        full_fence()
        if ring.consumer_waiting:
            self._data.signal()

    def send_batch_nowait(self, items: Sequence[BytesLike]) -> int:
        """Put the leading ``items`` that fit with one wake-up; return how many were put.

        Errors: ``TooBig`` (nothing put), ``RingFull`` (none fit), ``PeerGone``.
        """
        ring = self._ring
        try:
            count = ring.put_batch(items)
        except RingFull:
            if ring.consumer_closed:
                raise self._gone() from None
            raise
        full_fence()
        if ring.consumer_waiting:
            self._data.signal()
        return count

    def wait_writable(self, *, timeout: float | None, spin_us: float | None = None) -> None:
        """Return once a put would succeed.  Errors: ``TimedOut``, ``PeerGone``."""
        ring = self._ring
        if not ring.has_space():
            self._space.wait(
                timeout, ready=self._writable, arm=ring.set_producer_waiting, spin_us=spin_us, peer=self.peer
            )
        if ring.consumer_closed:
            raise self._gone()

    def send(self, payload: BytesLike, *, timeout: float | None, spin_us: float | None = None) -> None:
        """Put ``payload``, waiting up to ``timeout`` s for a free slot.

        Errors: as ``send_nowait``, ``TimedOut``.
        """
        deadline = _deadline(timeout)
        while True:
            try:
                return self.send_nowait(payload)
            except RingFull:
                pass
            self.wait_writable(timeout=_remaining(deadline), spin_us=spin_us)

    def send_batch(self, items: Sequence[BytesLike], *, timeout: float | None) -> None:
        """Put all ``items`` in order, waiting for room as needed.

        Errors: ``TooBig``, ``PeerGone``, ``TimedOut`` (``metadata["sent"]`` says how many went).
        """
        deadline, sent, step = _deadline(timeout), 0, self._ring.nslots
        while sent < len(items):
            try:
                sent += self.send_batch_nowait(items[sent : sent + step])
                continue
            except RingFull:
                pass
            try:
                self.wait_writable(timeout=_remaining(deadline))
            except TimedOut as exc:
                raise TimedOut(exc.message, reason=exc.reason, metadata={"sent": str(sent)}) from exc

    async def send_async(self, payload: BytesLike, *, timeout: float | None) -> None:
        """``send`` on the running loop (no spinning)."""
        ring = self._ring
        deadline = _deadline(timeout)
        while True:
            try:
                return self.send_nowait(payload)
            except RingFull:
                pass
            await self._space.wait_async(
                _remaining(deadline), ready=self._writable, arm=ring.set_producer_waiting, peer=self.peer
            )
            if ring.consumer_closed:
                raise self._gone()


class Receiver(_Endpoint):
    """The consuming end of one ring of a channel."""

    __slots__ = ()

    def _readable(self) -> bool:
        return self._ring.has_data() or self._ring.producer_closed

    def _freed(self) -> None:
        full_fence()
        if self._ring.producer_waiting:
            self._space.signal()

    def _after_empty(self, exc: RingEmpty) -> None:
        """After ``RingEmpty``: return if items raced in before a close, raise ``PeerGone`` if closed."""
        ring = self._ring
        if not ring.producer_closed:
            raise exc
        if not ring.has_data():  # the producer publishes its last index before its closed flag
            raise self._gone() from None

    def recv_nowait(self) -> bytes:
        """Take the oldest item.  Errors: ``RingEmpty``, ``PeerGone`` (empty and producer closed)."""
        try:
            data = self._ring.get_nowait()
        except RingEmpty as exc:
            self._after_empty(exc)
            data = self._ring.get_nowait()
        self._freed()
        return data

    def recv_batch_nowait(self, max_items: int) -> list[bytes]:
        """Take up to ``max_items`` oldest items (at least one).  Errors: as ``recv_nowait``."""
        try:
            items = self._ring.get_batch(max_items)
        except RingEmpty as exc:
            self._after_empty(exc)
            items = self._ring.get_batch(max_items)
        self._freed()
        return items

    def recv_into_nowait(self, dst: BytesLike) -> int:
        """Copy the oldest item into ``dst``; return its length.  Errors: as ``recv_nowait``, ``TooBig``."""
        try:
            n = self._ring.get_into(dst)
        except RingEmpty as exc:
            self._after_empty(exc)
            n = self._ring.get_into(dst)
        self._freed()
        return n

    def wait_readable(self, *, timeout: float | None, spin_us: float | None = None) -> None:
        """Return once the ring holds an item or the producer closed.  Errors: ``TimedOut``, ``PeerGone``."""
        ring = self._ring
        if not ring.has_data():
            self._data.wait(
                timeout, ready=self._readable, arm=ring.set_consumer_waiting, spin_us=spin_us, peer=self.peer
            )

    def recv(self, *, timeout: float | None, spin_us: float | None = None) -> bytes:
        """Take the oldest item, waiting up to ``timeout`` s.  Errors: ``TimedOut``, ``PeerGone``."""
        self.wait_readable(timeout=timeout, spin_us=spin_us)
        return self.recv_nowait()

    def recv_batch(
        self, max_items: int, *, timeout: float | None, spin_us: float | None = None
    ) -> list[bytes]:
        """Take 1..``max_items`` items, waiting up to ``timeout`` s for the first."""
        self.wait_readable(timeout=timeout, spin_us=spin_us)
        return self.recv_batch_nowait(max_items)

    def recv_into(self, dst: BytesLike, *, timeout: float | None, spin_us: float | None = None) -> int:
        """Copy the oldest item into ``dst``, waiting up to ``timeout`` s; return its length."""
        self.wait_readable(timeout=timeout, spin_us=spin_us)
        return self.recv_into_nowait(dst)

    async def wait_readable_async(self, *, timeout: float | None) -> None:
        """``wait_readable`` on the running loop (no spinning)."""
        ring = self._ring
        if not ring.has_data():
            await self._data.wait_async(
                timeout, ready=self._readable, arm=ring.set_consumer_waiting, peer=self.peer
            )

    async def recv_async(self, *, timeout: float | None) -> bytes:
        """``recv`` on the running loop."""
        await self.wait_readable_async(timeout=timeout)
        return self.recv_nowait()

    async def recv_batch_async(self, max_items: int, *, timeout: float | None) -> list[bytes]:
        """``recv_batch`` on the running loop."""
        await self.wait_readable_async(timeout=timeout)
        return self.recv_batch_nowait(max_items)


class ClosedRing:
    """Stands in for the ring of an endpoint whose channel end is closed: any use raises ``WrongState``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> object:
        raise WrongState(f"ring {self._name!r} belongs to a closed channel end", reason="CHANNEL_CLOSED")
