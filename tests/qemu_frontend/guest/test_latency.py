"""The latency workload and the busy spin queue, on the in-process vGPU (no timed assertions)."""

from __future__ import annotations

import threading

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.engine.workload import AuditedWorkload
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest import GuestState, run_workload
from vgpusim.qemu_frontend.guest.stats import LatencySummary, WorkloadStats
from vgpusim.qemu_frontend.guest.testing import SimulatedVgpu


def _ordered(s: LatencySummary | None, count: int) -> None:
    assert s is not None
    assert s.count == count
    assert 0 < s.p50 <= s.p90 <= s.p99 <= s.max


def test_latency_measures_every_round_trip_and_read(sim: SimulatedVgpu) -> None:
    snap = run_workload("latency", sim.env, {"iterations": 40})
    assert (snap.state, snap.error) == (GuestState.FINISHED, "")
    _ordered(snap.irq_roundtrip_us, 40)
    _ordered(snap.mmio_read_us, 40)
    assert snap.iterations == snap.verified == 40
    assert snap.interrupts_received >= 41  # the warm-up and one per round trip
    assert len(sim.completions) == 41
    assert sim.rejections == [] and sim.write_errors == 0
    assert any(e.startswith("doorbell -> interrupt: 40 samples") for e in snap.events)
    assert any(e.startswith("register read: 40 samples") for e in snap.events)


def test_latency_on_another_engine(sim: SimulatedVgpu) -> None:
    snap = run_workload("latency", sim.env, {"iterations": "5", "engine": "bcs"})
    assert snap.state is GuestState.FINISHED
    _ordered(snap.irq_roundtrip_us, 5)
    assert {c.engine for c in sim.completions} == {int(Engine.BCS)}


@pytest.mark.parametrize("params", [{"iterations": "x"}, {"depth": 2}])
def test_latency_rejects_bad_params_before_running(sim: SimulatedVgpu, params: dict[str, str | int]) -> None:
    with pytest.raises(InvalidArgument):
        run_workload("latency", sim.env, params)
    assert not sim.completions


def test_latency_needs_at_least_one_iteration(sim: SimulatedVgpu) -> None:
    snap = run_workload("latency", sim.env, {"iterations": 0})
    assert snap.state is GuestState.FAILED
    assert "iterations" in snap.error


def test_a_stopped_latency_run_publishes_what_it_measured(sim: SimulatedVgpu) -> None:
    stop = threading.Event()
    stop.set()
    snap = run_workload("latency", sim.env, {"iterations": 10}, stop=stop)
    assert snap.state is GuestState.FINISHED
    assert snap.irq_roundtrip_us == LatencySummary(0, 0.0, 0.0, 0.0, 0.0)
    assert snap.mmio_read_us is None


def test_latency_summary_is_nearest_rank_in_microseconds() -> None:
    s = LatencySummary.of_ns([i * 1000 for i in range(100, 0, -1)])  # 1..100 us, unsorted
    assert s == LatencySummary(100, 51.0, 91.0, 100.0, 100.0)
    assert LatencySummary.of_ns([]) == LatencySummary(0, 0.0, 0.0, 0.0, 0.0)
    assert LatencySummary.of_ns([2500]) == LatencySummary(1, 2.5, 2.5, 2.5, 2.5)


def test_set_latency_keeps_the_other_summary() -> None:
    stats = WorkloadStats()
    a, b = LatencySummary.of_ns([1000]), LatencySummary.of_ns([2000])
    stats.set_latency(irq_roundtrip=a)
    stats.set_latency(mmio_read=b)
    snap = stats.snapshot()
    assert (snap.irq_roundtrip_us, snap.mmio_read_us) == (a, b)


def test_spin_queue_keeps_depth_requests_submitted(sim: SimulatedVgpu) -> None:
    queued: list[int] = []
    submit = sim.runner.submit

    def counting_submit(vgpu_id: int, workload: AuditedWorkload) -> None:
        submit(vgpu_id, workload)
        queued.append(next(v.queued for v in sim.runner.statistics().vgpus if v.vgpu_id == vgpu_id))

    sim.runner.submit = counting_submit  # type: ignore[method-assign]
    snap = run_workload("hang", sim.env, {"spin_us": 2000, "iterations": 12, "depth": 3})
    assert (snap.state, snap.error) == (GuestState.FINISHED, "")
    assert (snap.iterations, snap.verified, snap.hangs_detected) == (12, 12, 0)
    assert len(sim.completions) == 12
    assert max(queued) == 3  # the lazy engine runs only while the guest waits
    assert sum(c.busy_us for c in sim.completions) >= 12 * 2000


def test_spin_queue_detects_a_hang_and_recovers(sim: SimulatedVgpu) -> None:
    snap = run_workload("hang", sim.env, {"iterations": 2, "timeout_ms": 300, "depth": 2})
    assert (snap.state, snap.error) == (GuestState.FINISHED, "")
    assert snap.hangs_detected >= 1 and snap.resets == snap.hangs_detected
    assert snap.verified == snap.iterations >= 1
    assert any("hang detected" in e and "queued lost" in e for e in snap.events)


def test_spin_queue_stops_between_requests(sim: SimulatedVgpu) -> None:
    stop = threading.Event()
    stats = WorkloadStats()

    def stop_after_some() -> None:
        while stats.snapshot().iterations < 3:
            pass
        stop.set()

    watcher = threading.Thread(target=stop_after_some, daemon=True)
    watcher.start()
    snap = run_workload(
        "hang", sim.env, {"spin_us": 500, "iterations": 0, "depth": 2}, stop=stop, stats=stats
    )
    watcher.join(5)
    assert snap.state is GuestState.FINISHED
    assert snap.iterations >= 3 and snap.hangs_detected == 0


@pytest.mark.parametrize("depth", [0, 65])
def test_spin_queue_depth_is_bounded(sim: SimulatedVgpu, depth: int) -> None:
    snap = run_workload("hang", sim.env, {"spin_us": 10, "depth": depth})
    assert snap.state is GuestState.FAILED
    assert "depth" in snap.error
