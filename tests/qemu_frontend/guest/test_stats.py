"""WorkloadStats: snapshots, counters, the event log and the end states."""

from __future__ import annotations

import threading

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.guest.config import DriverStatistics
from vgpusim.qemu_frontend.guest.stats import MAX_EVENTS, GuestState, Workload, WorkloadStats


def test_workload_names() -> None:
    assert Workload.parse("WORKLOAD_HOSTILE") is Workload.HOSTILE
    assert Workload.parse(" Render ") is Workload.RENDER
    with pytest.raises(InvalidArgument) as exc:
        Workload.parse("WORKLOAD_UNSPECIFIED")
    assert exc.value.reason == "UNKNOWN_WORKLOAD"


def test_counters_and_states() -> None:
    stats = WorkloadStats()
    assert stats.snapshot().state is GuestState.STOPPED
    stats.begin(Workload.COPY)
    stats.add(bytes_copied=10, iterations=1, verified=1)
    stats.add(frames=2, attempts=3, contained=2)
    stats.sync(DriverStatistics(4, 5, 6, 0, 0, 1, 1, 0, 12.5))
    stats.mark_failsafe()
    snap = stats.snapshot()
    assert (snap.workload, snap.state, snap.bytes_copied, snap.frames_drawn) == (
        Workload.COPY,
        GuestState.RUNNING,
        10,
        2,
    )
    assert (snap.commands_submitted, snap.interrupts_received, snap.hangs_detected, snap.resets) == (
        5,
        6,
        1,
        1,
    )
    assert (snap.hostile_attempts, snap.hostile_contained, snap.failsafe) == (3, 2, True)
    assert snap.first_irq_latency_us == 12.5
    stats.finish()
    assert stats.snapshot().state is GuestState.FINISHED
    stats.begin(Workload.IDLE)
    assert stats.snapshot().bytes_copied == 0
    stats.fail("boom")
    stats.finish()  # a failure is final
    assert (stats.snapshot().state, stats.snapshot().error) == (GuestState.FAILED, "boom")


def test_event_log_is_bounded() -> None:
    stats = WorkloadStats()
    for i in range(MAX_EVENTS + 5):
        stats.note(str(i))
    events = stats.snapshot().events
    assert len(events) == MAX_EVENTS and events[-1] == str(MAX_EVENTS + 4)


def test_updates_from_many_threads_are_not_lost() -> None:
    stats = WorkloadStats()

    def work() -> None:
        for _ in range(500):
            stats.add(iterations=1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.snapshot().iterations == 2000
