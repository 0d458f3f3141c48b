"""The arbiter of one physical GPU: which vGPU's workloads may run, GVT-g ``tbs`` style.

A faithful model of i915 GVT-g's time-based scheduler (``sched_policy.c``, kernel-mdev.md §4.3),
driven by explicit times so it is deterministic under an injected clock:

- a timer ticks every ``tick_us`` (1 ms).  Every ``balance_ticks`` ticks (100 ms) the time slices
  are balanced; a stage counter modulo ``stages`` (10) makes every 10th balance (~1 s) a reset:
  ``allocated_ts = 100 ms x weight / sum(weights)`` and ``left_ts = allocated_ts``, debt and
  credit discarded.  At the other stages ``left_ts += allocated_ts`` carries debt or credit.
- at every tick and every *kick* (a workload queued, or a completion while a switch is pending)
  the current vGPU is charged the time since it was scheduled in, and if no target is chosen
  yet, the LRU run queue is walked for the first vGPU with pending work and ``left_ts > 0``; it
  becomes the target and moves to the LRU tail.  No such vGPU: the target is the idle vGPU.
- a switch happens only when no workload is in flight (no preemption mid-workload); until then
  ``need_reschedule`` stops dispatch from the current vGPU.

Policies (per parent): ``weighted`` (tbs above); ``equal-share`` (tbs with every weight 1);
``fixed-share`` (tbs whose denominator is the parent's capacity, ``max(capacity_weight, sum)``, so
a vGPU never gets more than weight/capacity even when the others idle); ``best-effort`` (round
robin by the LRU walk, ``left_ts`` ignored: work-conserving).  Like GVT-g, the three time-based
policies are not work-conserving: a busy vGPU that used its slice waits for the next balance
even if the GPU would otherwise idle.  Departure from GVT-g: a vGPU joining mid-second gets its
slice at once (GVT-g instead gives a new vGPU 2 s of priority).

Glossary:
- idle vGPU: ID 0 (:data:`IDLE_VGPU`), "run nothing"; real vGPU IDs are >= 1.
- left_ts: remaining time slice (µs), negative = debt; allocated_ts: slice per balance period.
- sched_time: time a vGPU was current (charged); busy time: time its workloads ran.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound

IDLE_VGPU = 0
MAX_WEIGHT = 16  # VGPU_MAX_WEIGHT

HasWork = Callable[[int], bool]


class SchedPolicy(enum.StrEnum):
    WEIGHTED = "weighted"
    EQUAL_SHARE = "equal-share"
    FIXED_SHARE = "fixed-share"
    BEST_EFFORT = "best-effort"


@dataclass(frozen=True, slots=True)
class SchedConfig:
    """The arbiter's knobs (defaults: GVT-g's)."""

    policy: SchedPolicy = SchedPolicy.WEIGHTED
    tick_us: int = 1_000  # GVT_DEFAULT_TIME_SLICE, 1 ms
    balance_ticks: int = 100  # GVT_TS_BALANCE_PERIOD_MS
    stages: int = 10  # GVT_TS_BALANCE_STAGE_NUM
    capacity_weight: int = MAX_WEIGHT  # fixed-share denominator: the weight of a full parent

    def __post_init__(self) -> None:
        if min(self.tick_us, self.balance_ticks, self.stages, self.capacity_weight) <= 0:
            raise InvalidArgument(
                "scheduler periods and capacity must be positive", reason="INVALID_SCHED_CONFIG"
            )

    @property
    def period_us(self) -> int:
        return self.tick_us * self.balance_ticks


@dataclass(frozen=True, slots=True)
class VgpuSchedStats:
    vgpu_id: int
    weight: int
    allocated_ts_us: int
    left_ts_us: int
    sched_time_us: int  # time charged as current vGPU
    busy_us: int  # time its workloads occupied the engine
    workloads: int
    scheduled_in: int  # switches to this vGPU


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    policy: SchedPolicy
    ticks: int
    switches: int
    current: int  # IDLE_VGPU when idle
    runqueue_length: int  # vGPUs in the run queue
    in_flight: int
    idle_us: int  # time the idle vGPU was current, up to the last event
    vgpus: tuple[VgpuSchedStats, ...]  # LRU order, next candidate first


class _Entry:
    __slots__ = (
        "allocated",
        "busy",
        "left",
        "sched_in",
        "sched_time",
        "scheduled_in",
        "vgpu_id",
        "weight",
        "workloads",
    )

    def __init__(self, vgpu_id: int, weight: int) -> None:
        self.vgpu_id, self.weight = vgpu_id, weight
        self.allocated = self.left = self.sched_in = self.sched_time = 0
        self.busy = self.workloads = self.scheduled_in = 0


class Scheduler:
    """The per-parent arbiter.  Not thread-safe: one owner (the engine runner) drives it."""

    def __init__(self, config: SchedConfig | None = None) -> None:
        self.config = config or SchedConfig()
        self._best_effort = self.config.policy is SchedPolicy.BEST_EFFORT
        self._runq: OrderedDict[int, _Entry] = OrderedDict()  # LRU: first = least recently picked
        self._current = IDLE_VGPU
        self._next: int | None = None
        self.need_reschedule = False
        self._in_flight = 0
        self._ticks = self._stage = self._switches = 0
        self._idle_us = self._idle_in = self._last = 0

    # ---- membership (start_schedule / stop_schedule) --------------------------------------------

    def add_vgpu(self, vgpu_id: int, weight: int, *, now_us: int = 0) -> None:
        """Put a vGPU on the run queue (at the LRU head, as GVT-g's ``list_add``)."""
        if vgpu_id <= IDLE_VGPU:
            raise InvalidArgument(f"vGPU id {vgpu_id} must be >= 1", reason="INVALID_VGPU_ID")
        if not 1 <= weight <= MAX_WEIGHT:
            raise InvalidArgument(f"weight {weight} outside 1..{MAX_WEIGHT}", reason="INVALID_WEIGHT")
        if vgpu_id in self._runq:
            raise AlreadyExists(f"vGPU {vgpu_id} already scheduled", reason="VGPU_SCHEDULED")
        e = self._runq[vgpu_id] = _Entry(vgpu_id, weight)
        self._runq.move_to_end(vgpu_id, last=False)
        self._allocate()
        e.left = e.allocated

    def remove_vgpu(self, vgpu_id: int, *, now_us: int) -> None:
        """Take a vGPU off the run queue; if it was current, the GPU goes idle."""
        if vgpu_id not in self._runq:
            raise NotFound(f"vGPU {vgpu_id} not scheduled", reason="VGPU_NOT_SCHEDULED")
        if self._current == vgpu_id:
            self._charge(now_us)
            self._current, self._idle_in = IDLE_VGPU, now_us
        if self._next == vgpu_id:
            self._next = None
        del self._runq[vgpu_id]
        self._allocate()

    def set_policy(self, policy: SchedPolicy) -> None:
        """Switch policy; shares are re-allocated from now on (debt and credit are kept)."""
        self.config = replace(self.config, policy=policy)
        self._best_effort = policy is SchedPolicy.BEST_EFFORT
        self._allocate()

    def set_weight(self, vgpu_id: int, weight: int) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise InvalidArgument(f"weight {weight} outside 1..{MAX_WEIGHT}", reason="INVALID_WEIGHT")
        self._entry(vgpu_id).weight = weight
        self._allocate()

    def _entry(self, vgpu_id: int) -> _Entry:
        try:
            return self._runq[vgpu_id]
        except KeyError:
            raise NotFound(f"vGPU {vgpu_id} not scheduled", reason="VGPU_NOT_SCHEDULED") from None

    # ---- state the runner reads ---------------------------------------------------------------

    @property
    def current(self) -> int:
        return self._current

    @property
    def target(self) -> int | None:
        """The vGPU a switch is pending to (``next_vgpu``), None if none."""
        return self._next

    def dispatchable(self) -> int | None:
        """The vGPU whose workloads may be started now, None while idle or a switch is pending."""
        if self.need_reschedule or self._current == IDLE_VGPU:
            return None
        return self._current

    def quiescent(self) -> bool:
        """Idle, nothing in flight, no switch pending: ticks can only balance (see skip_idle_ticks)."""
        return self._current == IDLE_VGPU and self._next is None and not self._in_flight

    # ---- events -------------------------------------------------------------------------------

    def tick(self, now_us: int, has_work: HasWork) -> None:
        """The 1 ms timer (INTEL_GVT_REQUEST_SCHED): balance when due, charge, pick."""
        if self._ticks % self.config.balance_ticks == 0:
            self._balance()
        self._ticks += 1
        self.kick(now_us, has_work)

    def kick(self, now_us: int, has_work: HasWork) -> None:
        """A scheduling request (INTEL_GVT_REQUEST_EVENT_SCHED): charge the current vGPU, pick."""
        self._charge(now_us)
        if self._runq and self._next is None:
            pick = IDLE_VGPU
            for vid, e in self._runq.items():
                if has_work(vid) and (self._best_effort or e.left > 0):
                    pick = vid
                    break
            if pick != IDLE_VGPU:
                self._runq.move_to_end(pick)
            self._next = pick
        if self._next is not None:
            self._try_switch(now_us)

    def workload_started(self, vgpu_id: int) -> None:
        self._in_flight += 1

    def workload_finished(self, vgpu_id: int, now_us: int, busy_us: int, has_work: HasWork) -> None:
        """A workload left the engine; a pending switch is attempted (the completion's kick)."""
        if self._in_flight <= 0:
            raise AssertionError("workload_finished without workload_started")
        self._in_flight -= 1
        e = self._runq.get(vgpu_id)
        if e is not None:
            e.busy += busy_us
            e.workloads += 1
        if self.need_reschedule:
            self.kick(now_us, has_work)

    def skip_idle_ticks(self, count: int) -> None:
        """Account ``count`` ticks during which the GPU was quiescent (cheap, exact)."""
        if not self.quiescent():
            raise AssertionError("skip_idle_ticks while not quiescent")
        bt, first = self.config.balance_ticks, self._ticks
        balances = -(-(first + count) // bt) - -(-first // bt)
        skipped = max(0, balances - self.config.stages)  # the last `stages` balances include a reset
        self._stage += skipped
        for _ in range(balances - skipped):
            self._balance()
        self._ticks += count

    # ---- internals ----------------------------------------------------------------------------

    def _allocate(self) -> None:
        if not self._runq:
            return
        policy, period = self.config.policy, self.config.period_us
        total = sum(e.weight for e in self._runq.values())
        if policy is SchedPolicy.EQUAL_SHARE or policy is SchedPolicy.BEST_EFFORT:
            for e in self._runq.values():
                e.allocated = period // len(self._runq)
            return
        if policy is SchedPolicy.FIXED_SHARE:
            total = max(total, self.config.capacity_weight)
        for e in self._runq.values():
            e.allocated = period * e.weight // total

    def _balance(self) -> None:
        stage = self._stage % self.config.stages
        self._stage += 1
        if stage == 0:
            self._allocate()
            for e in self._runq.values():
                e.left = e.allocated
        else:
            for e in self._runq.values():
                e.left += e.allocated

    def _charge(self, now_us: int) -> None:
        self._last = max(self._last, now_us)
        if self._current == IDLE_VGPU:
            return
        e = self._runq[self._current]
        delta = now_us - e.sched_in
        e.sched_time += delta
        e.left -= delta
        e.sched_in = now_us

    def _try_switch(self, now_us: int) -> None:
        nxt = self._next
        assert nxt is not None
        if nxt == self._current:
            self._next = None
            return
        self.need_reschedule = True
        if self._in_flight:
            return
        self._charge(now_us)
        if self._current == IDLE_VGPU:
            self._idle_us += now_us - self._idle_in
        if nxt == IDLE_VGPU:
            self._idle_in = now_us
        else:
            e = self._runq[nxt]
            e.sched_in = now_us
            e.scheduled_in += 1
        self._current = nxt
        self._next = None
        self.need_reschedule = False
        self._switches += 1

    def statistics(self) -> SchedulerStats:
        idle = self._idle_us + (self._last - self._idle_in if self._current == IDLE_VGPU else 0)
        return SchedulerStats(
            self.config.policy,
            self._ticks,
            self._switches,
            self._current,
            len(self._runq),
            self._in_flight,
            idle,
            tuple(
                VgpuSchedStats(
                    e.vgpu_id,
                    e.weight,
                    e.allocated,
                    e.left,
                    e.sched_time,
                    e.busy,
                    e.workloads,
                    e.scheduled_in,
                )
                for e in self._runq.values()
            ),
        )
