"""The engine runner of one physical GPU: per-vGPU queues, the arbiter, execution, completions.

The loop a ``gfx_host`` thread runs per parent (GVT-g's ``gvt:<engine>`` kthreads plus its
scheduler timer, as one discrete-event loop).  Audited workloads are queued per (vGPU, engine);
the :class:`~.scheduler.Scheduler` decides whose turn it is; the :class:`~.executor.Executor`
runs the workload against that vGPU's graphics memory; at the workload's end time (start + busy
time) the completion is handed to ``on_complete(vgpu_id, completion)``, which raises the MSI.

Time comes from an injected :class:`Clock`.  With :class:`ManualClock` the loop *jumps* to each
event (10 simulated seconds of busy vGPUs take a fraction of a second); with
:class:`MonotonicClock` it waits for them.  The engines of one parent share one execution
timeline (workloads run one at a time, round robin over the current vGPU's engines); a GVT-g
switch needs every engine idle anyway.

Hang watchdog: a workload whose busy time (simulated, or real elapsed time if larger) exceeds
``watchdog_us`` is a GPU hang for that vGPU only: it stops at the watchdog, raises no interrupt,
the vGPU's queue on that engine is flushed, the engine is marked hung (new submissions refused
with WRONG_STATE/ENGINE_HUNG) until :meth:`EngineRunner.reset_engine` (the guest's reset), and
the completion (status HUNG) is still delivered so the owner can count it.  A DMA fault during
execution is handled the same way (status FAULTED).  Other vGPUs keep being scheduled.

Not thread-safe: every method is called from the one thread that owns the runner (the doorbell
handler queues from that thread too).  No thread is created here.

Glossary:
- event: a scheduler tick (every ``tick_us``) or the end of the in-flight workload.
- quiescent: no work queued, nothing in flight, the idle vGPU current; ticks are then skipped in
  bulk and :meth:`EngineRunner.step` returns None (sleep until the next doorbell).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from vgpusim.common.errors import Busy, NotFound, WrongState
from vgpusim.gfx_host.core.engine.executor import Executor
from vgpusim.gfx_host.core.engine.memory import GraphicsMemory
from vgpusim.gfx_host.core.engine.scheduler import Scheduler, SchedulerStats
from vgpusim.gfx_host.core.engine.workload import AuditedWorkload, Completion, CompletionStatus

CompletionCallback = Callable[[int, Completion], None]


class Clock(Protocol):
    """Time in integer microseconds."""

    def now_us(self) -> int: ...

    def sleep_until(self, t_us: int) -> None:
        """Return once ``now_us() >= t_us`` (a simulated clock jumps there)."""
        ...


class MonotonicClock:
    """Real time (``time.monotonic_ns``)."""

    def now_us(self) -> int:
        return time.monotonic_ns() // 1000

    def sleep_until(self, t_us: int) -> None:
        delay = t_us - self.now_us()
        if delay > 0:
            time.sleep(delay / 1e6)


class ManualClock:
    """Simulated time: only moves when told to (or when the runner sleeps on it)."""

    def __init__(self, start_us: int = 0) -> None:
        self._now = start_us

    def now_us(self) -> int:
        return self._now

    def sleep_until(self, t_us: int) -> None:
        self._now = max(self._now, t_us)

    def advance(self, us: int) -> None:
        self._now += us


@dataclass(frozen=True, slots=True)
class VgpuRunStats:
    vgpu_id: int
    queued: int
    completed: int
    hangs: int
    dma_faults: int
    flushed: int  # workloads discarded by hangs, faults, flush() and resets
    hung_engines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RunnerStats:
    now_us: int
    watchdog_us: int
    dispatched: int
    engine_busy_us: int
    scheduler: SchedulerStats
    vgpus: tuple[VgpuRunStats, ...]


class _Slot:
    __slots__ = (
        "completed",
        "faults",
        "flushed",
        "hangs",
        "hung",
        "memory",
        "pending",
        "queues",
        "rr",
        "vgpu_id",
    )

    def __init__(self, vgpu_id: int, memory: GraphicsMemory) -> None:
        self.vgpu_id, self.memory = vgpu_id, memory
        self.queues: dict[int, deque[AuditedWorkload]] = {}
        self.rr: list[int] = []  # engines in round-robin order
        self.hung: set[int] = set()
        self.pending = self.completed = self.hangs = self.faults = self.flushed = 0

    def pop(self) -> AuditedWorkload:
        rr = self.rr
        for k, engine in enumerate(rr):
            q = self.queues[engine]
            if q:
                rr.append(rr.pop(k))  # this engine goes last
                self.pending -= 1
                return q.popleft()
        raise AssertionError("pop() without pending work")


class _InFlight:
    __slots__ = ("completion", "finish", "slot")

    def __init__(self, slot: _Slot, completion: Completion, finish: int) -> None:
        self.slot, self.completion, self.finish = slot, completion, finish


class EngineRunner:
    """Queues, arbitrates and executes the workloads of every vGPU of one parent."""

    def __init__(
        self,
        *,
        clock: Clock,
        on_complete: CompletionCallback,
        scheduler: Scheduler | None = None,
        executor: Executor | None = None,
        watchdog_us: int = 50_000,
        max_queued: int = 1024,
    ) -> None:
        self._clock = clock
        self._on_complete = on_complete
        self.scheduler = scheduler or Scheduler()
        self.executor = executor or Executor()
        self.watchdog_us = watchdog_us
        self._max_queued = max_queued
        self._slots: dict[int, _Slot] = {}
        self._inflight: _InFlight | None = None
        self._kicked = False
        self._pending = self._dispatched = self._busy = 0
        self._tick_us = self.scheduler.config.tick_us
        self._next_tick = clock.now_us()

    # ---- vGPUs --------------------------------------------------------------------------------

    def add_vgpu(self, vgpu_id: int, memory: GraphicsMemory, *, weight: int) -> None:
        self.scheduler.add_vgpu(vgpu_id, weight, now_us=self._clock.now_us())
        self._slots[vgpu_id] = _Slot(vgpu_id, memory)

    def remove_vgpu(self, vgpu_id: int) -> None:
        """Forget a vGPU: its queue is dropped, an in-flight workload of it completes silently."""
        slot = self._slot(vgpu_id)
        self.flush(vgpu_id)
        self.scheduler.remove_vgpu(vgpu_id, now_us=self._clock.now_us())
        del self._slots[slot.vgpu_id]

    def submit(self, vgpu_id: int, workload: AuditedWorkload) -> None:
        """Queue an audited workload on its engine and request a scheduling decision.

        Errors: NotFound (VGPU_NOT_FOUND), WrongState (ENGINE_HUNG: reset the engine first),
        Busy (QUEUE_FULL: more than ``max_queued`` workloads waiting for this vGPU).
        """
        slot = self._slot(vgpu_id)
        engine = workload.engine
        if engine in slot.hung:
            raise WrongState(f"engine {engine} of vGPU {vgpu_id} is hung", reason="ENGINE_HUNG")
        if slot.pending >= self._max_queued:
            raise Busy(f"vGPU {vgpu_id} has {slot.pending} workloads queued", reason="QUEUE_FULL")
        q = slot.queues.get(engine)
        if q is None:
            q = slot.queues[engine] = deque()
            slot.rr.append(engine)
        q.append(workload)
        slot.pending += 1
        self._pending += 1
        self._kicked = True

    def flush(self, vgpu_id: int, engine: int | None = None) -> int:
        """Discard the queued workloads of a vGPU (one engine or all); return how many."""
        slot = self._slot(vgpu_id)
        n = 0
        for e, q in slot.queues.items():
            if engine is None or e == engine:
                n += len(q)
                q.clear()
        slot.pending -= n
        slot.flushed += n
        self._pending -= n
        return n

    def reset_engine(self, vgpu_id: int, engine: int | None = None) -> None:
        """The guest's engine/GT reset (or a DMLR): flush the queue and clear the hang."""
        slot = self._slot(vgpu_id)
        self.flush(vgpu_id, engine)
        if engine is None:
            slot.hung.clear()
        else:
            slot.hung.discard(engine)

    def is_hung(self, vgpu_id: int, engine: int | None = None) -> bool:
        hung = self._slot(vgpu_id).hung
        return bool(hung) if engine is None else engine in hung

    def _slot(self, vgpu_id: int) -> _Slot:
        try:
            return self._slots[vgpu_id]
        except KeyError:
            raise NotFound(f"vGPU {vgpu_id} is not on this engine", reason="VGPU_NOT_FOUND") from None

    def _has_work(self, vgpu_id: int) -> bool:
        slot = self._slots.get(vgpu_id)
        return slot is not None and slot.pending > 0

    # ---- driving ------------------------------------------------------------------------------

    def step(self) -> int | None:
        """Process everything due by now and start work if the engine is free.

        Return: the clock time (µs) of the next event to call ``step()`` at, or None when
        quiescent (call again after the next ``submit()``).
        """
        now = self._clock.now_us()
        self._events(now, sleep=False)
        self._dispatch(now)
        self._events(now, sleep=False)
        return self._next_event()

    def run_for(self, duration_us: int) -> None:
        """Run the loop for ``duration_us`` of clock time (instantly on a ManualClock)."""
        now = self._clock.now_us()
        end = now + duration_us
        self._events(now, sleep=False)
        self._dispatch(now)
        self._events(end, sleep=True)
        self._clock.sleep_until(end)

    def run_until_idle(self, limit_us: int = 60_000_000) -> bool:
        """Run until quiescent or ``limit_us`` elapsed; True if quiescent."""
        end = self._clock.now_us() + limit_us
        self.run_for(0)
        while (t := self._next_event()) is not None and t <= end:
            self._events(t, sleep=True)
        return self._next_event() is None

    def _next_event(self) -> int | None:
        if self._inflight is not None:
            return min(self._next_tick, self._inflight.finish)
        if self._pending or self._kicked or not self.scheduler.quiescent():
            return self._next_tick
        return None

    def _events(self, until: int, *, sleep: bool) -> None:
        """Process ticks and completions with time <= ``until``, in time order."""
        sched, clock = self.scheduler, self._clock
        while True:
            inflight = self._inflight
            if inflight is not None and inflight.finish <= self._next_tick:
                t = inflight.finish
                if t > until:
                    return
                if sleep:
                    clock.sleep_until(t)
                self._complete(t)
            else:
                t = self._next_tick
                if t > until:
                    return
                if inflight is None and not self._pending and not self._kicked and sched.quiescent():
                    count = (until - t) // self._tick_us + 1
                    sched.skip_idle_ticks(count)
                    self._next_tick += count * self._tick_us
                    return
                if sleep:
                    clock.sleep_until(t)
                self._next_tick = t + self._tick_us
                sched.tick(t, self._has_work)
            self._dispatch(t)

    def _dispatch(self, t: int) -> None:
        """Start a workload if the engine is free, handle a pending kick, and retry once.

        The current vGPU dispatches before a kick is processed (its engine thread was woken by
        the switch), so a vGPU switched in always runs at least one workload.
        """
        self._start(t)
        if self._kicked:
            self._kicked = False
            self.scheduler.kick(t, self._has_work)
            self._start(t)

    def _start(self, t: int) -> None:
        if self._inflight is not None:
            return
        sched = self.scheduler
        vid = sched.dispatchable()
        if vid is None:
            return
        slot = self._slots[vid]
        if not slot.pending:
            return
        workload = slot.pop()
        self._pending -= 1
        sched.workload_started(vid)
        clock = self._clock
        t0 = clock.now_us()
        completion = self.executor.execute(workload, slot.memory, budget_us=self.watchdog_us)
        elapsed = clock.now_us() - t0  # real time spent executing (0 on a ManualClock)
        if elapsed > self.watchdog_us and completion.ok:
            completion = replace(
                completion, status=CompletionStatus.HUNG, interrupts=0, busy_us=self.watchdog_us
            )
        self._dispatched += 1
        self._inflight = _InFlight(slot, completion, t + max(completion.busy_us, elapsed))

    def _complete(self, t: int) -> None:
        inflight = self._inflight
        assert inflight is not None
        self._inflight = None
        slot, completion = inflight.slot, inflight.completion
        self._busy += completion.busy_us
        attached = self._slots.get(slot.vgpu_id) is slot
        if completion.ok:
            slot.completed += 1
        elif attached:  # emulate a GPU hang for this vGPU and engine: flush, mark hung
            if completion.status is CompletionStatus.HUNG:
                slot.hangs += 1
            else:
                slot.faults += 1
            slot.hung.add(completion.engine)
            self.flush(slot.vgpu_id, completion.engine)
        self.scheduler.workload_finished(slot.vgpu_id, t, completion.busy_us, self._has_work)
        if attached:
            self._on_complete(slot.vgpu_id, completion)

    def statistics(self) -> RunnerStats:
        return RunnerStats(
            self._clock.now_us(),
            self.watchdog_us,
            self._dispatched,
            self._busy,
            self.scheduler.statistics(),
            tuple(
                VgpuRunStats(
                    s.vgpu_id, s.pending, s.completed, s.hangs, s.faults, s.flushed, tuple(sorted(s.hung))
                )
                for s in self._slots.values()
            ),
        )
