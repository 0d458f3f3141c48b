"""The baselines of ``vgpusim bench`` run and return positive samples (never a timing assertion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpusim.cli.bench_baselines import EchoServer, echo_rtt_ns, eventfd_rtt_ns, percentile, two_cpus


def test_percentile_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 0.5) == 51
    assert percentile(samples, 0.99) == 100
    assert percentile(samples, 0.0) == 1
    assert percentile([7], 0.99) == 7


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_eventfd_round_trips_are_positive() -> None:
    samples = eventfd_rtt_ns(50)
    assert len(samples) == 50
    assert all(s > 0 for s in samples)


def test_eventfd_round_trips_pinned_apart_restore_the_affinity() -> None:
    import os

    before = os.sched_getaffinity(0)
    cpus = two_cpus()
    samples = eventfd_rtt_ns(20, cpus=cpus)
    assert len(samples) == 20 and min(samples) > 0
    assert os.sched_getaffinity(0) == before


def test_eventfd_needs_a_positive_count() -> None:
    with pytest.raises(ValueError, match="positive"):
        eventfd_rtt_ns(0)


async def test_raw_grpc_echo_round_trips_are_positive(tmp_path: Path) -> None:
    with EchoServer(tmp_path) as server:
        samples = await echo_rtt_ns(server.target, (76, 50), 10)
    assert len(samples) == 10
    assert all(s > 0 for s in samples)
    assert not server.socket.exists()
