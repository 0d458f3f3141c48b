"""The arbiter alone: allocation, balance stages and debt reset, LRU pick, idle, policies, switching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound
from vgpusim.gfx_host.core.engine.scheduler import IDLE_VGPU, HasWork, SchedConfig, SchedPolicy, Scheduler

MS = 1000


def make(weights: dict[int, int], policy: SchedPolicy = SchedPolicy.WEIGHTED, **kw: int) -> Scheduler:
    s = Scheduler(SchedConfig(policy=policy, **kw))
    for vid, w in weights.items():
        s.add_vgpu(vid, w)
    return s


def left(s: Scheduler) -> dict[int, int]:
    return {v.vgpu_id: v.left_ts_us for v in s.statistics().vgpus}


def allocated(s: Scheduler) -> dict[int, int]:
    return {v.vgpu_id: v.allocated_ts_us for v in s.statistics().vgpus}


def lru(s: Scheduler) -> list[int]:
    return [v.vgpu_id for v in s.statistics().vgpus]


def everyone(vid: int) -> bool:
    return True


def nobody(vid: int) -> bool:
    return False


def test_membership_is_validated() -> None:
    s = make({1: 2})
    with pytest.raises(AlreadyExists):
        s.add_vgpu(1, 2)
    with pytest.raises(InvalidArgument) as err:
        s.add_vgpu(2, 17)
    assert err.value.reason == "INVALID_WEIGHT"
    with pytest.raises(InvalidArgument):
        s.add_vgpu(IDLE_VGPU, 4)
    with pytest.raises(NotFound):
        s.remove_vgpu(9, now_us=0)
    with pytest.raises(InvalidArgument):
        SchedConfig(tick_us=0)


def test_weighted_allocation() -> None:
    s = make({1: 2, 2: 4, 3: 8, 4: 16})
    assert allocated(s) == {v: 100 * MS * w // 30 for v, w in {1: 2, 2: 4, 3: 8, 4: 16}.items()}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (SchedPolicy.EQUAL_SHARE, {1: 50 * MS, 2: 50 * MS}),
        (SchedPolicy.FIXED_SHARE, {1: 25 * MS, 2: 12_500}),  # weight / capacity 16
        (SchedPolicy.BEST_EFFORT, {1: 50 * MS, 2: 50 * MS}),
    ],
)
def test_policy_allocation(policy: SchedPolicy, expected: dict[int, int]) -> None:
    assert allocated(make({1: 4, 2: 2}, policy)) == expected


def test_fixed_share_never_exceeds_capacity() -> None:
    s = make({1: 16, 2: 16}, SchedPolicy.FIXED_SHARE)
    assert allocated(s) == {1: 50 * MS, 2: 50 * MS}


def test_lru_pick_rotates_and_moves_to_tail() -> None:
    s = make({1: 4, 2: 4, 3: 4})  # added at the head each: LRU order 3, 2, 1
    assert lru(s) == [3, 2, 1]
    order = []
    for t in range(6):
        s.tick(t * MS, everyone)
        order.append(s.current)
    assert order == [3, 2, 1, 3, 2, 1]
    assert s.statistics().switches == 6


def test_pick_skips_vgpus_without_work_or_slice() -> None:
    s = make({1: 4, 2: 4, 3: 4})
    s.tick(0, lambda v: v in (1, 2))  # 3 has no work
    assert s.current == 2
    st = s.statistics()
    assert st.runqueue_length == 3


def test_idle_when_nothing_is_runnable() -> None:
    s = make({1: 4, 2: 4})
    s.tick(0, nobody)
    assert s.current == IDLE_VGPU
    assert s.dispatchable() is None
    assert s.quiescent()


def run_workload(s: Scheduler, start_ms: int, length_ms: int, has_work: HasWork = everyone) -> int:
    """Run a workload of the current vGPU from ``start_ms`` with the 1 ms ticks; return the vGPU."""
    vid = s.current
    s.workload_started(vid)
    for t in range(start_ms + 1, start_ms + length_ms):
        s.tick(t * MS, has_work)
    s.workload_finished(vid, (start_ms + length_ms) * MS, length_ms * MS, has_work)
    s.tick((start_ms + length_ms) * MS, has_work)  # the timer keeps ticking at every ms
    return vid


def test_exhausted_slices_idle_the_gpu_even_with_work() -> None:
    """tbs is not work-conserving: vGPU 3 is idle, 1 and 2 have used their slices: the GPU idles."""
    s = make({1: 8, 2: 8, 3: 16})  # 25, 25 and 50 ms per 100 ms
    busy = lambda v: v != 3  # noqa: E731
    s.tick(0, busy)
    first = run_workload(s, 0, 30, busy)  # 30 ms > its 25 ms slice; the switch waits for the completion
    second = s.current
    assert {first, second} == {1, 2}
    assert left(s)[first] == -5 * MS
    run_workload(s, 30, 30, busy)
    assert s.current == IDLE_VGPU  # both in debt: idle although both have work
    assert left(s) == {1: -5 * MS, 2: -5 * MS, 3: 50 * MS}
    for t in range(61, 100):
        s.tick(t * MS, busy)
        assert s.current == IDLE_VGPU
    s.tick(100 * MS, busy)  # balance stage 1: +25 ms each
    assert s.current in (1, 2)


def test_best_effort_ignores_slices() -> None:
    s = make({1: 8, 2: 8}, SchedPolicy.BEST_EFFORT)
    s.tick(0, everyone)
    s.workload_started(s.current)
    s.workload_finished(s.current, 500 * MS, 500 * MS, everyone)
    s.tick(500 * MS, everyone)
    assert s.current != IDLE_VGPU
    s.tick(501 * MS, everyone)
    assert s.current != IDLE_VGPU


def test_balance_stages_carry_debt_and_stage_zero_resets_it() -> None:
    s = make({1: 8, 2: 8})
    s.tick(0, lambda v: v == 1)  # tick 0: balance stage 0, vGPU 1 current
    assert s.current == 1
    s.workload_started(1)
    for t in range(1, 300):
        s.tick(t * MS, nobody)  # one 300 ms workload, charged at every tick
    assert left(s) == {1: 3 * 50 * MS - 299 * MS, 2: 3 * 50 * MS}  # debt carried through stages 1, 2
    s.workload_finished(1, 300 * MS, 300 * MS, nobody)
    for t in range(300, 1000):
        s.tick(t * MS, nobody)
    assert left(s) == {1: 10 * 50 * MS - 300 * MS, 2: 10 * 50 * MS}  # stage 9: credit accumulated
    s.tick(1000 * MS, nobody)  # stage 0 again (~1 s): debt and credit discarded
    assert left(s) == {1: 50 * MS, 2: 50 * MS}


def test_no_switch_while_a_workload_is_in_flight() -> None:
    s = make({1: 8, 2: 8})
    s.tick(0, everyone)
    cur = s.current
    s.workload_started(cur)
    s.tick(1 * MS, everyone)  # the other vGPU becomes the target...
    assert s.target not in (None, cur)
    assert s.need_reschedule and s.dispatchable() is None
    assert s.current == cur  # ...but the running workload is not preempted
    s.tick(2 * MS, everyone)
    assert s.current == cur
    s.workload_finished(cur, 7 * MS, 7 * MS, everyone)  # completion kicks the pending switch
    assert s.current not in (cur, IDLE_VGPU)
    assert s.dispatchable() == s.current
    stats = {v.vgpu_id: v for v in s.statistics().vgpus}
    assert stats[cur].sched_time_us == 7 * MS
    assert stats[cur].busy_us == 7 * MS


def test_remove_current_goes_idle() -> None:
    s = make({1: 8, 2: 8})
    s.tick(0, everyone)
    s.remove_vgpu(s.current, now_us=5)
    assert s.current == IDLE_VGPU
    assert s.statistics().runqueue_length == 1
    assert allocated(s) == {v: 100 * MS for v in allocated(s)}


@given(st.integers(0, 2500), st.integers(1, 3000))
def test_skipping_idle_ticks_equals_ticking(before: int, count: int) -> None:
    a, b = make({1: 2, 2: 16}), make({1: 2, 2: 16})
    for s in (a, b):
        s.tick(0, lambda v: v == 1)
        s.workload_started(1)
        s.workload_finished(1, 3 * MS, 3 * MS, nobody)
        for t in range(1, before + 1):
            s.tick(t * MS, nobody)
    for t in range(count):
        a.tick((before + 1 + t) * MS, nobody)
    if b.quiescent():
        b.skip_idle_ticks(count)
    else:
        b.tick((before + 1) * MS, nobody)
        b.skip_idle_ticks(count - 1)
    assert left(a) == left(b)
    assert a.statistics().ticks == b.statistics().ticks


def test_statistics_snapshot() -> None:
    s = make({1: 4})
    s.tick(0, everyone)
    s.workload_started(1)
    st_ = s.statistics()
    assert (st_.policy, st_.ticks, st_.current, st_.in_flight, st_.runqueue_length) == (
        SchedPolicy.WEIGHTED,
        1,
        1,
        1,
        1,
    )
    assert st_.vgpus[0].scheduled_in == 1
