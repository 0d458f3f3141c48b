"""The busy-guest figures of ``vgpusim bench``: scheduler fairness, scale-out and the leak check.

- ``fairness_max_error_points``: 7 vGPUs on one parent, weights :data:`FAIR_WEIGHTS` set through
  ``gfx_host.SetScheduler`` (policy WEIGHTED, GVT-g's tbs), each guest running the spin load;
  after a warm-up, every vGPU's ``busy_seconds_total`` (``GetScheduler``) is read at the start and
  end of the window (10 s, 3 s with ``--quick``).  Achieved share = a vGPU's busy time / all
  vGPUs' busy time; configured share = weight / sum of weights; value = the largest difference,
  in percentage points.
- ``scale_throughput_ratio``: the aggregate command rate (``commands_submitted`` of every guest,
  read at the start and end of a window) of 28 busy guests, 7 on each of the 4 parents, divided by
  the rate of 1 busy guest alone (the baseline, in commands/s), both running the busy load.
  Then :func:`leak_cycles`: create/remove cycles with resource samples of every service
  (:mod:`.bench_leaks`); any leak is a problem of the figure (its goal says how many cycles ran).

Glossary:
- spin load (fairness): :data:`SPIN_WORKLOAD` with :data:`SPIN_PARAMS`: the built-in ``hang``
  workload with a spin far below the host watchdog and no end, i.e. a guest that keeps asking for
  2 ms of GPU time (each request ending with a store it verifies), two requests queued at a time
  (``depth``: the next is queued while the guest handles a completion, so its vGPU never runs
  dry), until StopGuest.  GPU time, not the guests' CPU, is what the arbiter shares, so the load
  is GPU-bound.
- busy load (scale): :data:`BUSY_WORKLOAD` with :data:`BUSY_PARAMS`: ``compute`` over 4 KiB
  (3 commands per submission, each result verified), as fast as the guest can: the per-command
  cost of the whole stack (traps, doorbells, audit, execution, MSIs) is what is measured.
- cycle: CreateDevice + RemoveDevice on the bus; every :data:`VM_EVERY`-th cycle also creates a
  VM, attaches the vGPU, runs the smoke guest (so GTT pages are pinned and an interrupt raised)
  and destroys the VM in between (the whole open/pin/release path).
- leak: growth between the sample after the warm-up cycles (which also start every lazily
  created thread pool) and the final one.
"""

from __future__ import annotations

import asyncio
import time
import uuid as _uuid
from contextlib import AsyncExitStack

from vgpusim.cli.bench_context import BenchContext
from vgpusim.cli.bench_guest import ALL, PARENTS, TYPE_ID, guest_vm
from vgpusim.cli.bench_leaks import Sample, compare, sample
from vgpusim.cli.bench_report import Figure, with_goal_text
from vgpusim.client import GUEST_DONE, Stack, frontend_pb, gfx_pb

__all__ = [
    "BUSY_PARAMS",
    "BUSY_WORKLOAD",
    "FAIR_WEIGHTS",
    "SPIN_PARAMS",
    "SPIN_WORKLOAD",
    "VM_EVERY",
    "fairness",
    "leak_cycles",
    "scale",
]

FAIR_WEIGHTS = (2, 4, 8, 16, 2, 4, 8)
SPIN_WORKLOAD = frontend_pb.WORKLOAD_HANG
SPIN_PARAMS = {"spin_us": "2000", "timeout_ms": "1000", "iterations": "0", "depth": "2"}
BUSY_WORKLOAD = frontend_pb.WORKLOAD_COMPUTE
BUSY_PARAMS = {"bytes": "4096", "iterations": "0"}
VM_EVERY = 10
WARMUP_S = 1.0


async def _start(
    stack: Stack, vm_ids: list[str], workload: frontend_pb.Workload.ValueType, params: dict[str, str]
) -> None:
    for vm_id in vm_ids:
        await stack.frontend.start_guest(vm_id, workload=workload, params=params)


async def _check_running(stack: Stack, vm_ids: list[str]) -> list[frontend_pb.GuestStatus]:
    statuses = list(await asyncio.gather(*(stack.frontend.get_guest_status(v) for v in vm_ids)))
    for vm_id, status in zip(vm_ids, statuses, strict=True):
        if status.state in GUEST_DONE:
            state = frontend_pb.GuestState.Name(status.state)
            raise RuntimeError(f"busy guest of {vm_id} ended {state}: {status.error or 'no error'}")
    return statuses


async def _stop(stack: Stack, vm_ids: list[str]) -> None:
    for vm_id in vm_ids:
        await stack.frontend.stop_guest(vm_id)


async def fairness(ctx: BenchContext) -> list[Figure]:
    """``fairness_max_error_points`` (see the module docstring)."""
    stack = ctx.require(*ALL)
    seconds = ctx.pick(10.0, 3.0)
    parent = PARENTS[0]
    async with AsyncExitStack() as guests:
        pairs = [
            await guests.enter_async_context(guest_vm(stack, parent, f"bench-fair-{i}"))
            for i in range(len(FAIR_WEIGHTS))
        ]
        vm_ids = [vm for vm, _ in pairs]
        weights = {uuid: w for (_, uuid), w in zip(pairs, FAIR_WEIGHTS, strict=True)}
        await stack.gfx.set_scheduler(parent, policy=gfx_pb.SCHEDULER_POLICY_WEIGHTED, weights=weights)
        ctx.say(f"fairness: {len(pairs)} busy guests on {parent}, weights {FAIR_WEIGHTS}, {seconds:g} s")
        await _start(stack, vm_ids, SPIN_WORKLOAD, SPIN_PARAMS)
        try:
            await asyncio.sleep(WARMUP_S)
            before = await stack.gfx.get_scheduler(parent)
            await asyncio.sleep(seconds)
            after = await stack.gfx.get_scheduler(parent)
            await _check_running(stack, vm_ids)
        finally:
            await _stop(stack, vm_ids)
    start = {e.uuid: e.busy_seconds_total for e in before.entries}
    busy = {e.uuid: e.busy_seconds_total - start.get(e.uuid, 0.0) for e in after.entries if e.uuid in weights}
    total_busy = sum(busy.values())
    if total_busy <= 0:
        raise RuntimeError("the busy guests used no GPU time")
    total_weight = sum(weights.values())
    errors = {u: 100 * busy[u] / total_busy - 100 * w / total_weight for u, w in weights.items()}
    worst = max(errors.values(), key=abs)
    shares = ", ".join(
        f"w{weights[u]} {100 * busy[u] / total_busy:.1f}% (want {100 * weights[u] / total_weight:.1f}%)"
        for u in weights
    )
    return [
        Figure(
            "fairness_max_error_points",
            abs(worst),
            unit="points",
            notes=(f"{seconds:g} s window, GPU busy {100 * total_busy / seconds:.0f}% of it; {shares}",),
        )
    ]


async def _rate(stack: Stack, vm_ids: list[str], seconds: float) -> float:
    """Aggregate commands/s of the guests over a window of ``seconds``."""
    t0 = time.perf_counter()
    first = await _check_running(stack, vm_ids)
    await asyncio.sleep(seconds)
    t1 = time.perf_counter()
    last = await _check_running(stack, vm_ids)
    done = sum(b.commands_submitted - a.commands_submitted for a, b in zip(first, last, strict=True))
    return done / (t1 - t0)


async def _busy_rate(ctx: BenchContext, stack: Stack, count: int, seconds: float) -> float:
    async with AsyncExitStack() as guests:
        vm_ids = [
            (
                await guests.enter_async_context(
                    guest_vm(stack, PARENTS[i % len(PARENTS)], f"bench-scale-{i}")
                )
            )[0]
            for i in range(count)
        ]
        ctx.say(f"scale: {count} busy guest(s) on {min(count, len(PARENTS))} parent(s) for {seconds:g} s")
        await _start(stack, vm_ids, BUSY_WORKLOAD, BUSY_PARAMS)
        try:
            await asyncio.sleep(WARMUP_S)
            return await _rate(stack, vm_ids, seconds)
        finally:
            await _stop(stack, vm_ids)


async def scale(ctx: BenchContext) -> list[Figure]:
    """``scale_throughput_ratio`` and the leak check (see the module docstring)."""
    stack = ctx.require(*ALL)
    seconds = ctx.pick(10.0, 3.0)
    start = sample(ctx.pids, ctx.shm_dir)
    error = None
    single = many = 0.0
    try:
        single = await _busy_rate(ctx, stack, 1, seconds)
        many = await _busy_rate(ctx, stack, 28, seconds)
        if single <= 0:
            raise RuntimeError("a single busy guest submitted no command")
    except RuntimeError as exc:  # a guest failed under load: still run the leak check
        error = f"throughput not measured: {exc}"
        ctx.say(f"scale: {error}")
    cycles = ctx.pick(10_000, 1_000)
    leaks, notes = await leak_cycles(ctx, stack, cycles)
    notes.insert(0, f"resources before the busy guests: {start.describe()}")
    figure = Figure(
        "scale_throughput_ratio",
        None if error else many / single,
        unit="cmd/s",
        measured=None if error else many,
        baseline=None if error else single,
        notes=(f"28 guests on 4 parents vs 1 guest, {seconds:g} s windows", *notes),
        problems=tuple(leaks),
        error=error,
    )
    return [with_goal_text(figure, f">= 0.8x, no leak after {cycles:,} create/remove cycles")]


async def _cycle(stack: Stack, parent: str, index: int) -> None:
    uuid = str(_uuid.uuid4())
    await stack.bus.create_device(uuid, parent, TYPE_ID)
    try:
        if index % VM_EVERY == 0:
            vm = await stack.frontend.create_vm(memory_bytes=64 << 20, name=f"bench-cycle-{index}")
            try:
                await stack.frontend.attach_device(vm.vm_id, uuid)
                await stack.frontend.start_guest(vm.vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
                status = await stack.frontend.wait_guest(vm.vm_id, timeout=30, poll_interval=0.01)
                if status.state != frontend_pb.GUEST_STATE_FINISHED:
                    state = frontend_pb.GuestState.Name(status.state)
                    raise RuntimeError(f"cycle {index}: the smoke guest ended {state}: {status.error}")
            finally:
                await stack.frontend.destroy_vm(vm.vm_id)
    finally:
        await stack.bus.remove_device(uuid)


async def _cycles(stack: Stack, first: int, count: int) -> None:
    """``count`` cycles, one worker per parent."""

    async def worker(k: int) -> None:
        for index in range(first + k, first + count, len(PARENTS)):
            await _cycle(stack, PARENTS[k], index)

    async with asyncio.TaskGroup() as tg:
        for k in range(len(PARENTS)):
            tg.create_task(worker(k))


async def _settled(ctx: BenchContext, before: Sample, timeout: float = 5.0) -> Sample:
    """A sample once asynchronous clean-up (threads ending, segments unlinked) had time to finish."""
    deadline = time.monotonic() + timeout
    while True:
        now = sample(ctx.pids, ctx.shm_dir)
        if not compare(before, now) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


async def leak_cycles(ctx: BenchContext, stack: Stack, cycles: int) -> tuple[list[str], list[str]]:
    """Run ``cycles`` create/remove cycles; (leaks found, notes)."""
    warm = max(len(PARENTS) * VM_EVERY, cycles // 10)
    ctx.say(f"leaks: {warm} warm-up cycles")
    await _cycles(stack, 0, warm)
    before = sample(ctx.pids, ctx.shm_dir)
    ctx.say(f"leaks: after warm-up: {before.describe()}")
    t0 = time.perf_counter()
    done, chunk = 0, max(len(PARENTS), cycles // 10)
    while done < cycles:
        n = min(chunk, cycles - done)
        await _cycles(stack, warm + done, n)
        done += n
        ctx.say(f"leaks: {done:,}/{cycles:,} cycles ({done / (time.perf_counter() - t0):.0f}/s)")
    after = await _settled(ctx, before)
    ctx.say(f"leaks: at the end: {after.describe()}")
    leaks = compare(before, after)
    notes = [
        f"{cycles:,} create/remove cycles after {warm} warm-up ones (every {VM_EVERY}th with a VM "
        f"created, attached, a smoke guest run and the VM destroyed), "
        f"{cycles / (time.perf_counter() - t0):.0f} cycles/s",
        f"resources after warm-up: {before.describe()}",
        f"resources at the end: {after.describe()}",
    ]
    return leaks, notes
