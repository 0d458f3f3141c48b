"""The bus event stream: numbered, time-stamped events fanned out to bounded subscriber queues.

Publishing never waits and never fails: each subscriber has its own bounded queue, and when a
slow subscriber's queue is full the hub drops events *for that subscriber only* and later hands
it one ``OVERFLOW`` marker saying how many it lost, in the place where they would have been.
After an overflow a subscriber receives nothing new until it has drained what it already has, so
the gap is a single contiguous range of sequence numbers.

Glossary:
- seq: the event's number, 1, 2, 3... across the whole bus, in publication order.
- subscription: one consumer's queue; an async iterator of :class:`~.model.Event`, and an async
  context manager that unsubscribes on exit.
- overflow marker: ``Event(kind=OVERFLOW, seq=<last lost seq>, dropped=<how many>)``.

Usage::

    async with hub.subscribe() as events:
        async for event in events:
            ...
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from vgpusim.vgpu_bus.core.model import Event, EventKind

Clock = Callable[[], float]


@dataclass(frozen=True)
class EventStatistics:
    """Counters of the hub (``statistics()``)."""

    emitted: int
    dropped: int
    subscribers: int


class Subscription:
    """One subscriber's bounded queue of events; iterate it with ``async for``."""

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._maxsize = maxsize
        self._items: collections.deque[Event] = collections.deque()
        self._dropped = 0
        self._last_dropped_seq = 0
        self._closed = False
        self._wakeup = asyncio.Event()

    @property
    def maxsize(self) -> int:
        """The bound of this subscriber's queue."""
        return self._maxsize

    def put_nowait(self, event: Event) -> bool:
        """Queue ``event``; ``False`` if it was dropped because the queue is (or recently was) full."""
        if self._closed:
            return False
        if self._dropped or len(self._items) >= self._maxsize:
            self._dropped += 1
            self._last_dropped_seq = event.seq
            return False
        self._items.append(event)
        self._wakeup.set()
        return True

    def get_nowait(self) -> Event | None:
        """The next event or overflow marker, or ``None`` if nothing is waiting."""
        if self._items:
            return self._items.popleft()
        if self._dropped:
            marker = Event(
                seq=self._last_dropped_seq,
                timestamp=self._hub.clock(),
                kind=EventKind.OVERFLOW,
                dropped=self._dropped,
                message=f"subscriber too slow: {self._dropped} events lost",
            )
            self._dropped = 0
            return marker
        return None

    async def get(self) -> Event:
        """Wait for the next event or overflow marker; ``StopAsyncIteration`` once closed and drained."""
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Unsubscribe; events already queued can still be read, then iteration ends."""
        self._closed = True
        self._hub._discard(self)
        self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    """Numbers, stamps and fans out bus events."""

    def __init__(self, clock: Clock, default_queue_size: int = 1024) -> None:
        if default_queue_size < 1:
            raise ValueError("default_queue_size must be >= 1")
        self.clock = clock
        self._default_queue_size = default_queue_size
        self._subscribers: list[Subscription] = []
        self._seq = 0
        self._dropped = 0
        self._closed = False

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        """A new subscription that sees every event published from now on.

        ``maxsize`` bounds its queue (default: the hub's). Subscribing to a closed hub gives a
        subscription that ends at once.
        """
        size = self._default_queue_size if maxsize is None else maxsize
        if size < 1:
            raise ValueError("maxsize must be >= 1")
        subscription = Subscription(self, size)
        if self._closed:
            subscription.close()
        else:
            self._subscribers.append(subscription)
        return subscription

    def publish(
        self,
        kind: EventKind,
        *,
        parent: str = "",
        uuid: str = "",
        type_id: str = "",
        owner: str = "",
        detail: str = "",
        reason: str = "",
        message: str = "",
    ) -> Event:
        """Number, stamp and deliver one event to every subscriber (never waits); returns it."""
        if kind is EventKind.OVERFLOW:
            raise ValueError("OVERFLOW markers are made by subscriptions, not published")
        self._seq += 1
        event = Event(
            seq=self._seq,
            timestamp=self.clock(),
            kind=kind,
            parent=parent,
            uuid=uuid,
            type_id=type_id,
            owner=owner,
            detail=detail,
            reason=reason,
            message=message,
        )
        for subscription in self._subscribers:
            if not subscription.put_nowait(event):
                self._dropped += 1
        return event

    def close(self) -> None:
        """End every subscription (each drains what it has, then stops)."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.close()

    def statistics(self) -> EventStatistics:
        """Events published, deliveries dropped for slow subscribers, current subscribers."""
        return EventStatistics(emitted=self._seq, dropped=self._dropped, subscribers=len(self._subscribers))

    def _discard(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
