"""Micro-benchmarks of the command engine (DESIGN.md §5): DMA copy ratio and scheduler fairness.

- :func:`copy_ratio`: a 1 MiB ``COPY`` executed by the :class:`~.executor.Executor` through a
  :class:`~.memory.FakeGraphicsMemory` whose pages are contiguous in one host buffer, against a
  raw ``memoryview`` copy of 1 MiB measured in the same run (goal: ratio >= 0.7).
- :func:`fairness`: 7 always-busy vGPUs of mixed weights for 10 simulated seconds on a
  :class:`~.runner.EngineRunner` with a :class:`~.runner.ManualClock`; achieved share of busy
  time vs configured share (goal: max error <= 3 points).

Run: ``python -m vgpusim.gfx_host.core.engine.bench`` (prints JSON).  Figures are ratios against
a baseline of the same run, never absolute times (the machines are shared and noisy).

Glossary:
- ratio: raw copy time / engine copy time (1.0 = the engine adds nothing).
- share: a vGPU's busy time over the sum of all vGPUs' busy time; error in percentage points.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.audit import CommandAuditor
from vgpusim.gfx_host.core.engine.executor import Executor
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE, FakeGraphicsMemory, GmPartition, GmRange
from vgpusim.gfx_host.core.engine.runner import EngineRunner, ManualClock
from vgpusim.gfx_host.core.engine.scheduler import SchedConfig, SchedPolicy, Scheduler
from vgpusim.gfx_host.core.engine.testing import spin_workload
from vgpusim.gfx_host.core.engine.workload import Completion, RingState

MiB = 1 << 20
LOW_BASE, HIGH_BASE = 0x0800_0000, 0x4000_0000  # a vGPU's low/high GM, as GVT-g lays them out


@dataclass(frozen=True, slots=True)
class CopyBench:
    size: int
    iterations: int  # copies per timed batch
    rounds: int  # paired (raw, engine) batches
    raw_us: float  # median per raw copy
    engine_us: float  # median per executed COPY workload (translations, dispatch, completion)
    audit_us: float  # median audit of the one-command ring (done once per doorbell)
    ratio: float  # median over rounds of raw time / engine time


@dataclass(frozen=True, slots=True)
class FairnessBench:
    policy: str
    seconds: float
    weights: tuple[int, ...]
    target: tuple[float, ...]  # configured shares, percent
    achieved: tuple[float, ...]  # percent of all vGPU busy time
    max_error_points: float
    utilisation: float  # busy time / elapsed time


def copy_ratio(size: int = MiB, *, iterations: int = 20, rounds: int = 41) -> CopyBench:
    """Engine COPY vs raw copy between the same host bytes, in paired batches (order alternating).

    The raw baseline copies the very host regions the fake maps the source and destination to,
    so the ratio is the engine's overhead alone; pairing cancels the drift of a noisy machine.
    """
    part = GmPartition(GmRange(LOW_BASE, 4 * size), GmRange(HIGH_BASE, PAGE_SIZE))
    mem = FakeGraphicsMemory(part, 4 * size + PAGE_SIZE)
    mem.map_partition()
    src, dst, ring = LOW_BASE, LOW_BASE + 2 * size, LOW_BASE + size
    mem.write(src, random.Random(1).randbytes(size))
    cmd = c.pack(c.copy(dst, src, size))
    mem.write(ring, cmd)
    auditor = CommandAuditor(mem)
    state = RingState(0, ring, 64 * 1024, 0, len(cmd), HIGH_BASE)
    workload = auditor.audit(state).unwrap()
    executor = Executor()
    host = memoryview(mem.host)
    hs, hd = mem.host_offset(src), mem.host_offset(dst)
    raw_src, raw_dst = host[hs : hs + size], host[hd : hd + size]

    def raw() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            raw_dst[:] = raw_src
        return (time.perf_counter_ns() - t0) / iterations / 1000

    def engine() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            executor.execute(workload, mem)
        return (time.perf_counter_ns() - t0) / iterations / 1000

    raws: list[float] = []
    engines: list[float] = []
    for k in range(rounds):
        if k % 2:
            engines.append(engine())
            raws.append(raw())
        else:
            raws.append(raw())
            engines.append(engine())
    t0 = time.perf_counter_ns()
    for _ in range(100):
        auditor.audit(state)
    audit_us = (time.perf_counter_ns() - t0) / 100 / 1000
    mem.host[hd : hd + size] = bytes(size)
    executor.execute(workload, mem)
    if mem.read(dst, size) != mem.read(src, size):
        raise AssertionError("engine copy produced wrong bytes")
    ratio = statistics.median(r / e for r, e in zip(raws, engines, strict=True))
    return CopyBench(
        size, iterations, rounds, statistics.median(raws), statistics.median(engines), audit_us, ratio
    )


def fairness(
    weights: Sequence[int] = (2, 4, 8, 16, 2, 4, 8),
    *,
    seconds: float = 10.0,
    policy: SchedPolicy = SchedPolicy.WEIGHTED,
    min_us: int = 200,
    max_us: int = 3_000,
    seed: int = 1,
) -> FairnessBench:
    """Busy vGPUs (each resubmits on completion, workloads of random length) for ``seconds``."""
    clock = ManualClock()
    rngs = {vid: random.Random(seed * 1000 + vid) for vid in range(1, len(weights) + 1)}
    runner: EngineRunner

    def on_complete(vgpu_id: int, completion: Completion) -> None:
        runner.submit(vgpu_id, spin_workload(0, rngs[vgpu_id].randint(min_us, max_us)))

    runner = EngineRunner(
        clock=clock, on_complete=on_complete, scheduler=Scheduler(SchedConfig(policy=policy))
    )
    part = GmPartition(GmRange(LOW_BASE, PAGE_SIZE), GmRange(HIGH_BASE, PAGE_SIZE))
    for vid, w in enumerate(weights, start=1):
        runner.add_vgpu(vid, FakeGraphicsMemory(part, 2 * PAGE_SIZE), weight=w)
        for _ in range(2):
            runner.submit(vid, spin_workload(0, rngs[vid].randint(min_us, max_us)))
    elapsed = int(seconds * 1_000_000)
    runner.run_for(elapsed)
    busy = {v.vgpu_id: v.busy_us for v in runner.statistics().scheduler.vgpus}
    total_busy = sum(busy.values())
    if policy in (SchedPolicy.EQUAL_SHARE, SchedPolicy.BEST_EFFORT):
        target = [100.0 / len(weights)] * len(weights)
    else:
        denom = sum(weights) if policy is SchedPolicy.WEIGHTED else max(sum(weights), 16)
        target = [100.0 * w / denom for w in weights]
    achieved = [
        100.0 * busy[vid] / (total_busy if policy is not SchedPolicy.FIXED_SHARE else elapsed)
        for vid in range(1, len(weights) + 1)
    ]
    err = max(abs(a - t) for a, t in zip(achieved, target, strict=True))
    return FairnessBench(
        str(policy), seconds, tuple(weights), tuple(target), tuple(achieved), err, total_busy / elapsed
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print both figures as JSON; exit status 1 if a goal is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size", type=int, default=MiB, help="COPY size in bytes (default 1 MiB)")
    p.add_argument("--rounds", type=int, default=41, help="paired timing rounds (default 41)")
    p.add_argument("--seconds", type=float, default=10.0, help="simulated fairness run (default 10)")
    p.add_argument("--policy", choices=[str(x) for x in SchedPolicy], default=str(SchedPolicy.WEIGHTED))
    args = p.parse_args(argv)
    copy = copy_ratio(args.size, rounds=args.rounds)
    fair = fairness(seconds=args.seconds, policy=SchedPolicy(args.policy))
    print(json.dumps({"copy": asdict(copy), "fairness": asdict(fair)}, indent=2))
    return 0 if copy.ratio >= 0.7 and fair.max_error_points <= 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
