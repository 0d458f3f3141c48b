"""The engine runner: doorbell to completion, fairness over 10 simulated seconds, policies, hangs."""

from __future__ import annotations

import random
import struct

import pytest

from vgpusim.common.errors import Busy, NotFound, WrongState
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE
from vgpusim.gfx_host.core.engine.runner import EngineRunner, ManualClock, MonotonicClock
from vgpusim.gfx_host.core.engine.scheduler import IDLE_VGPU, SchedConfig, SchedPolicy, Scheduler
from vgpusim.gfx_host.core.engine.testing import EngineRig, spin_workload
from vgpusim.gfx_host.core.engine.workload import Completion, CompletionStatus

SECOND = 1_000_000


class Farm:
    """A runner on a ManualClock whose vGPUs resubmit a workload whenever one completes."""

    def __init__(self, weights: dict[int, int], policy: SchedPolicy = SchedPolicy.WEIGHTED) -> None:
        self.clock = ManualClock()
        self.rigs = {vid: EngineRig() for vid in weights}
        self.done: list[tuple[int, int, Completion]] = []  # (vgpu, clock time, completion)
        self.busy_loop: dict[int, tuple[int, int]] = {}  # vgpu -> (min_us, max_us) of resubmitted SPINs
        self.rng = random.Random(5)
        self.runner = EngineRunner(
            clock=self.clock, on_complete=self.on_complete, scheduler=Scheduler(SchedConfig(policy=policy))
        )
        for vid, w in weights.items():
            self.runner.add_vgpu(vid, self.rigs[vid].mem, weight=w)

    def on_complete(self, vgpu_id: int, completion: Completion) -> None:
        self.done.append((vgpu_id, self.clock.now_us(), completion))
        if vgpu_id in self.busy_loop and not self.runner.is_hung(vgpu_id):
            self.runner.submit(vgpu_id, spin_workload(0, self.rng.randint(*self.busy_loop[vgpu_id])))

    def keep_busy(self, vgpu_id: int, min_us: int = 200, max_us: int = 3000) -> None:
        self.busy_loop[vgpu_id] = (min_us, max_us)
        for _ in range(2):
            self.runner.submit(vgpu_id, spin_workload(0, self.rng.randint(min_us, max_us)))

    def busy(self) -> dict[int, int]:
        return {v.vgpu_id: v.busy_us for v in self.runner.statistics().scheduler.vgpus}


def test_doorbell_to_completion() -> None:
    clock = ManualClock()
    seen: list[tuple[int, Completion]] = []
    runner = EngineRunner(clock=clock, on_complete=lambda v, comp: seen.append((v, comp)))
    rig = EngineRig()
    runner.add_vgpu(3, rig.mem, weight=4)
    wl = rig.submit(
        c.fill(rig.DATA, 4096, 0x01010101),
        c.copy(rig.HIGH_BASE, rig.DATA, 4096),
        c.store_seqno(77),
        c.user_interrupt(),
    ).unwrap()
    runner.submit(3, wl)
    assert runner.step() is not None
    assert runner.run_until_idle()
    ((vid, comp),) = seen
    assert vid == 3 and comp.ok and comp.interrupts == 1 and comp.seqno == 77
    assert comp.ring_head == rig.tail
    assert rig.mem.read(rig.HIGH_BASE, 4096) == b"\x01" * 4096
    assert rig.mem.read(rig.HWSP, 4) == struct.pack("<I", 77)
    assert clock.now_us() >= comp.busy_us
    assert runner.step() is None  # quiescent: sleep until the next doorbell
    stats = runner.statistics()
    assert stats.dispatched == 1 and stats.vgpus[0].completed == 1


MIXES = [
    {1: 2, 2: 4, 3: 8, 4: 16},
    {1: 2, 2: 4, 3: 8, 4: 16, 5: 2, 6: 4, 7: 8},
    {1: 16, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2},
    {1: 4, 2: 4, 3: 8, 4: 8, 5: 16, 6: 16, 7: 2},
]


@pytest.mark.parametrize("weights", MIXES, ids=["-".join(map(str, m.values())) for m in MIXES])
def test_weighted_fairness_over_10_simulated_seconds(weights: dict[int, int]) -> None:
    farm = Farm(weights)
    for vid in weights:
        farm.keep_busy(vid)
    farm.runner.run_for(10 * SECOND)
    busy = farm.busy()
    total = sum(busy.values())
    assert total > 0.99 * 10 * SECOND  # everyone busy: the GPU never idles
    for vid, w in weights.items():
        share, target = 100 * busy[vid] / total, 100 * w / sum(weights.values())
        assert abs(share - target) <= 3.0, (vid, share, target)


def test_equal_share_ignores_weights() -> None:
    farm = Farm({1: 2, 2: 16, 3: 4}, SchedPolicy.EQUAL_SHARE)
    for vid in (1, 2, 3):
        farm.keep_busy(vid)
    farm.runner.run_for(5 * SECOND)
    busy = farm.busy()
    for vid in (1, 2, 3):
        assert abs(100 * busy[vid] / sum(busy.values()) - 100 / 3) <= 3.0


def test_fixed_share_idles_rather_than_take_more() -> None:
    farm = Farm({1: 4, 2: 4}, SchedPolicy.FIXED_SHARE)  # 4/16 each of a parent of capacity 16
    farm.keep_busy(1)
    farm.keep_busy(2)
    farm.runner.run_for(5 * SECOND)
    for vid, b in farm.busy().items():
        assert abs(100 * b / (5 * SECOND) - 25.0) <= 3.0, vid
    assert farm.runner.statistics().scheduler.idle_us > 2 * SECOND


def test_weighted_is_not_work_conserving_but_best_effort_is() -> None:
    for policy, expected in ((SchedPolicy.WEIGHTED, 50.0), (SchedPolicy.BEST_EFFORT, 100.0)):
        farm = Farm({1: 8, 2: 8}, policy)
        farm.keep_busy(1)  # vGPU 2 is attached but idle
        farm.runner.run_for(5 * SECOND)
        assert abs(100 * farm.busy()[1] / (5 * SECOND) - expected) <= 3.0, policy


def test_best_effort_round_robin_is_equal() -> None:
    farm = Farm({1: 2, 2: 16}, SchedPolicy.BEST_EFFORT)
    farm.keep_busy(1, 1000, 1000)
    farm.keep_busy(2, 1000, 1000)
    farm.runner.run_for(2 * SECOND)
    busy = farm.busy()
    assert abs(busy[1] - busy[2]) <= 0.03 * sum(busy.values())


def test_no_preemption_mid_workload() -> None:
    farm = Farm({1: 8, 2: 8})
    farm.keep_busy(1, 10_000, 10_000)  # 10 ms workloads: ten ticks each
    farm.keep_busy(2, 100, 100)
    farm.runner.run_for(SECOND)
    long_runs = [(t - comp.busy_us, t) for v, t, comp in farm.done if v == 1]
    assert len(long_runs) > 10
    for v, t, comp in farm.done:
        start = t - comp.busy_us
        for a, b in long_runs:
            assert not (a < t < b or a < start < b), (v, start, t, a, b)
    left = {v.vgpu_id: v.left_ts_us for v in farm.runner.statistics().scheduler.vgpus}
    assert min(left.values()) > -20_000  # overruns are at most one workload of debt


def test_pending_work_is_picked_without_waiting_for_a_tick() -> None:
    farm = Farm({1: 8})
    farm.runner.run_for(5_500)  # idle: ticks skipped
    assert farm.runner.step() is None
    wl = farm.rigs[1].submit(c.store_seqno(1), c.user_interrupt()).unwrap()
    farm.runner.submit(1, wl)
    farm.runner.step()  # the submission's kick switches in and dispatches at once
    farm.runner.run_for(10)
    assert farm.done and farm.done[0][1] - 5_500 < 10


def test_hang_is_confined_to_the_guilty_vgpu() -> None:
    weights = {1: 8, 2: 8, 3: 8}
    farm = Farm(weights)
    for vid in weights:
        farm.keep_busy(vid)
    farm.runner.run_for(SECOND)
    del farm.busy_loop[2]
    farm.runner.submit(2, spin_workload(0, 10 * SECOND))  # a huge SPIN: a hang
    farm.runner.submit(2, spin_workload(0, 100))
    before = farm.busy()
    farm.runner.run_for(9 * SECOND)
    hung = [comp for v, _, comp in farm.done if v == 2 and not comp.ok]
    assert len(hung) == 1
    assert hung[0].status is CompletionStatus.HUNG and hung[0].interrupts == 0
    assert hung[0].busy_us == farm.runner.watchdog_us
    stats = {v.vgpu_id: v for v in farm.runner.statistics().vgpus}
    assert stats[2].hangs == 1 and stats[2].hung_engines == (0,) and stats[2].queued == 0
    assert stats[2].flushed == 1  # the workload queued behind the hang
    assert farm.runner.is_hung(2) and not farm.runner.is_hung(1)
    with pytest.raises(WrongState) as err:
        farm.runner.submit(2, spin_workload(0, 10))
    assert err.value.reason == "ENGINE_HUNG"
    after = farm.busy()
    for vid in (1, 3):  # the others keep (at least) their share of the 9 s
        assert 100 * (after[vid] - before[vid]) / (9 * SECOND) >= 100 / 3 - 3.0
    farm.runner.reset_engine(2)  # the guest's reset
    assert not farm.runner.is_hung(2)
    mark = len(farm.done)
    farm.runner.submit(2, spin_workload(0, 10))
    farm.runner.run_for(SECOND)
    assert [comp.ok for v, _, comp in farm.done[mark:] if v == 2] == [True]


def test_dma_fault_during_execution_fails_like_a_hang() -> None:
    farm = Farm({1: 8, 2: 8})
    rig = farm.rigs[1]
    wl = rig.submit(c.copy(rig.HIGH_BASE, rig.DATA, 64), c.user_interrupt()).unwrap()
    rig.mem.unmap(rig.HIGH_BASE, PAGE_SIZE)  # the guest unmapped the page after the doorbell
    farm.runner.submit(1, wl)
    farm.runner.submit(1, spin_workload(0, 10))
    farm.runner.run_until_idle()
    ((v, _, comp),) = farm.done
    assert v == 1 and comp.status is CompletionStatus.FAULTED and comp.fault is not None
    st = farm.runner.statistics().vgpus[0]
    assert (st.dma_faults, st.flushed, st.hung_engines) == (1, 1, (0,))


def test_real_time_overrun_is_a_hang() -> None:
    class SlowClock(ManualClock):
        def now_us(self) -> int:  # every reading is 30 ms later: execution "takes" 30 ms
            self.advance(30_000)
            return super().now_us()

    seen: list[Completion] = []
    runner = EngineRunner(
        clock=SlowClock(), on_complete=lambda v, comp: seen.append(comp), watchdog_us=20_000
    )
    runner.add_vgpu(1, EngineRig().mem, weight=1)
    runner.submit(1, spin_workload(0, 10))
    runner.run_until_idle(SECOND)
    assert seen[0].status is CompletionStatus.HUNG


def test_remove_vgpu_drops_its_work_silently() -> None:
    farm = Farm({1: 8, 2: 8})
    farm.runner.submit(1, spin_workload(0, 5000))
    farm.runner.submit(1, spin_workload(0, 5000))
    farm.runner.step()
    farm.runner.remove_vgpu(1)  # one in flight, one queued
    farm.runner.run_for(SECOND)
    assert farm.done == []
    assert farm.runner.statistics().scheduler.current == IDLE_VGPU
    with pytest.raises(NotFound):
        farm.runner.submit(1, spin_workload(0, 1))


def test_queue_limit() -> None:
    runner = EngineRunner(clock=ManualClock(), on_complete=lambda v, comp: None, max_queued=2)
    runner.add_vgpu(1, EngineRig().mem, weight=1)
    runner.submit(1, spin_workload(0, 1))
    runner.submit(1, spin_workload(1, 1))
    with pytest.raises(Busy) as err:
        runner.submit(1, spin_workload(0, 1))
    assert err.value.reason == "QUEUE_FULL"
    assert runner.flush(1) == 2


def test_engines_of_a_vgpu_are_served_round_robin() -> None:
    farm = Farm({1: 8})
    for engine in (0, 0, 0, 1, 1, 1):
        farm.runner.submit(1, spin_workload(engine, 10))
    farm.runner.run_until_idle()
    assert [comp.engine for _, _, comp in farm.done] == [0, 1, 0, 1, 0, 1]


def test_real_clock_smoke() -> None:
    seen: list[Completion] = []
    runner = EngineRunner(clock=MonotonicClock(), on_complete=lambda v, comp: seen.append(comp))
    rig = EngineRig()
    runner.add_vgpu(1, rig.mem, weight=16)
    runner.submit(1, rig.submit(c.store_seqno(5), c.user_interrupt()).unwrap())
    for _ in range(1000):
        if runner.step() is None and seen:
            break
    assert seen and seen[0].ok and seen[0].seqno == 5
