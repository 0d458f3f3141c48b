"""The event hub: sequence numbers, timestamps, bounded queues and the overflow marker."""

from __future__ import annotations

import asyncio

import pytest

from tests.vgpu_bus.helpers import FakeClock
from vgpusim.vgpu_bus.core.events import EventHub
from vgpusim.vgpu_bus.core.model import Event, EventKind


def _publish(hub: EventHub, count: int) -> list[Event]:
    return [hub.publish(EventKind.CREATED, uuid=f"u{i}") for i in range(count)]


async def test_events_are_numbered_from_one_and_stamped_by_the_clock(hub: EventHub, clock: FakeClock) -> None:
    subscription = hub.subscribe()
    published = _publish(hub, 3)
    received = [await subscription.get() for _ in range(3)]
    assert received == published
    assert [event.seq for event in received] == [1, 2, 3]
    assert [event.timestamp for event in received] == [1001.0, 1002.0, 1003.0]


async def test_a_subscriber_sees_only_events_published_after_it_subscribed(hub: EventHub) -> None:
    _publish(hub, 2)
    subscription = hub.subscribe()
    hub.publish(EventKind.PARENT_ADDED, parent="p")
    event = await subscription.get()
    assert (event.seq, event.kind, event.parent) == (3, EventKind.PARENT_ADDED, "p")


async def test_every_subscriber_gets_every_event(hub: EventHub) -> None:
    first, second = hub.subscribe(), hub.subscribe()
    published = _publish(hub, 4)
    assert [first.get_nowait() for _ in range(4)] == published
    assert [second.get_nowait() for _ in range(4)] == published


async def test_a_slow_subscriber_gets_one_overflow_marker_in_place_of_what_it_lost(hub: EventHub) -> None:
    slow = hub.subscribe(maxsize=2)
    fast = hub.subscribe(maxsize=100)
    _publish(hub, 5)  # slow keeps 1, 2 and loses 3, 4, 5
    assert [slow.get_nowait() for _ in range(2)] == [fast.get_nowait() for _ in range(2)]
    hub.publish(EventKind.REMOVED)  # 6: still dropped, slow has not drained the marker yet
    marker = slow.get_nowait()
    assert marker is not None
    assert (marker.kind, marker.seq, marker.dropped) == (EventKind.OVERFLOW, 6, 4)
    assert slow.get_nowait() is None
    hub.publish(EventKind.REMOVED)
    after = slow.get_nowait()
    assert after is not None and after.seq == 7
    assert [e.seq for e in (fast.get_nowait() for _ in range(5)) if e] == [3, 4, 5, 6, 7]
    assert hub.statistics().dropped == 4


async def test_publishing_never_waits_for_a_subscriber(hub: EventHub) -> None:
    hub.subscribe(maxsize=1)  # never read
    _publish(hub, 1000)
    assert hub.statistics().emitted == 1000
    assert hub.statistics().dropped == 999


async def test_async_iteration_waits_for_events_and_ends_when_closed(hub: EventHub) -> None:
    received: list[int] = []

    async def consume() -> None:
        async with hub.subscribe() as events:
            async for event in events:
                received.append(event.seq)

    async with asyncio.TaskGroup() as group:
        group.create_task(consume())
        await asyncio.sleep(0)
        _publish(hub, 3)
        await asyncio.sleep(0)
        hub.close()
    assert received == [1, 2, 3]
    assert hub.statistics().subscribers == 0


async def test_leaving_the_context_unsubscribes(hub: EventHub) -> None:
    async with hub.subscribe() as subscription:
        assert hub.statistics().subscribers == 1
    assert hub.statistics().subscribers == 0
    _publish(hub, 1)
    assert subscription.get_nowait() is None
    with pytest.raises(StopAsyncIteration):
        await subscription.get()


async def test_a_subscription_to_a_closed_hub_ends_at_once(hub: EventHub) -> None:
    hub.close()
    events = [event async for event in hub.subscribe()]
    assert events == []


def test_overflow_markers_cannot_be_published_and_queues_must_hold_something(clock: FakeClock) -> None:
    hub = EventHub(clock)
    with pytest.raises(ValueError, match="OVERFLOW"):
        hub.publish(EventKind.OVERFLOW)
    with pytest.raises(ValueError, match="maxsize"):
        hub.subscribe(maxsize=0)
    with pytest.raises(ValueError, match="default_queue_size"):
        EventHub(clock, default_queue_size=0)
