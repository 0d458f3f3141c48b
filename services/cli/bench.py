"""``vgpusim bench``: measure the figures of DESIGN.md §5 on a private stack and compare them with goals.

``run_bench(quick=, as_json=, only=)`` starts the four services in a fresh state dir with the
scale host config (four GVT-g-like parents, :data:`SCALE_HOST_CONFIG`), runs each selected
measurement, stops the stack, removes the state dir, and prints one row per figure (measured,
baseline, ratio, goal, result) or, with ``as_json``, one JSON object (:mod:`.bench_report`).
Progress goes to stderr while it runs.

Each measurement is independent (``--only NAME``, a group or a figure key) and fails on its own:
one that cannot run (a service missing, an unfinished guest path) is reported as ``FAIL`` with
the reason, never replaced by a number from somewhere else.  Every ratio divides by a baseline
measured in the same run (the machines are shared and noisy).

Exit status: 0 every selected figure was measured and met its goal, 1 otherwise, 2 usage error.

Glossary:
- group: one measurement (``dma``, ``irq``, ``trap``, ``map``, ``map_throughput``, ``pin``,
  ``lifecycle``, ``fairness``, ``scale``), see :data:`~.bench_report.GROUPS`.
- quick: smaller sample counts, shorter runs and 1,000 instead of 10,000 create/remove cycles
  (the output says so); under two minutes on the reference machines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import uvloop

from vgpusim.cli.bench_context import BenchContext, MissingService
from vgpusim.cli.bench_report import (
    Collected,
    Figure,
    failed,
    machine_info,
    render_json,
    render_table,
    select,
)
from vgpusim.cli.supervisor import SERVICE_ORDER, Supervisor, probe_serving
from vgpusim.client import Stack
from vgpusim.common.errors import VgpusimError
from vgpusim.common.paths import StackPaths

__all__ = ["MEASUREMENTS", "SCALE_HOST_CONFIG", "run_bench"]

Measurement = Callable[[BenchContext], Awaitable[list[Figure]]]

SCALE_HOST_CONFIG = Path(__file__).resolve().parent.parent / "gfx_host" / "hosts" / "scale-4gpu.toml"
"""The host config of the bench stack: four GVT-g-like parents (7 vGPUs each, 28 in all)."""


async def _dma(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_dma import dma_copy

    return await dma_copy(ctx)


async def _irq(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_guest import irq_roundtrip

    return await irq_roundtrip(ctx)


async def _trap(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_guest import mmio_trap

    return await mmio_trap(ctx)


async def _map(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_iommu import map_rpc

    return await map_rpc(ctx)


async def _map_throughput(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_iommu import map_throughput

    return await map_throughput(ctx)


async def _pin(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_iommu import pin_throughput

    return await pin_throughput(ctx)


async def _lifecycle(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_guest import lifecycle

    return await lifecycle(ctx)


async def _fairness(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_sched import fairness

    return await fairness(ctx)


async def _scale(ctx: BenchContext) -> list[Figure]:
    from vgpusim.cli.bench_sched import scale

    return await scale(ctx)


MEASUREMENTS: dict[str, tuple[Measurement, float]] = {
    "dma": (_dma, 120),
    "irq": (_irq, 180),
    "trap": (_trap, 180),
    "map": (_map, 180),
    "map_throughput": (_map_throughput, 180),
    "pin": (_pin, 180),
    "lifecycle": (_lifecycle, 180),
    "fairness": (_fairness, 180),
    "scale": (_scale, 480),
}
"""Group -> (measurement, time limit in seconds, beyond which it fails as timed out)."""


async def _start_stack(ctx: BenchContext, supervisor: Supervisor) -> None:
    """Start the services; remember which serve (a partial stack still serves some figures)."""
    ctx.say(f"starting {', '.join(SERVICE_ORDER)} in {ctx.paths.state_dir}")
    try:
        await supervisor.start_all()
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ctx.say(f"the stack did not fully start: {first_line}")
        failed_name = next((n for n in SERVICE_ORDER if str(exc).startswith(n)), None)
        if failed_name is not None:
            ctx.down[failed_name] = first_line
    for name in SERVICE_ORDER:
        svc = supervisor.services.get(name)
        proc = svc.process if svc is not None else None
        if proc is None or proc.returncode is not None:
            ctx.down.setdefault(name, "not started (a service it depends on did not start)")
        elif await probe_serving(ctx.paths.socket(name)):
            ctx.pids[name] = proc.pid
        else:
            ctx.down.setdefault(name, "not serving")
    ctx.stack = Stack.connect(ctx.paths.state_dir)
    await ctx.stack.open()


async def _measure(ctx: BenchContext, group: str) -> list[Figure]:
    measurement, limit = MEASUREMENTS[group]
    ctx.say(f"{group}: starting")
    try:
        async with asyncio.timeout(limit):
            figures = await measurement(ctx)
    except MissingService as exc:
        ctx.say(f"{group}: FAILED: {exc}")
        return failed(group, str(exc))
    except TimeoutError:
        ctx.say(f"{group}: FAILED: took more than {limit:.0f} s")
        return failed(group, f"the measurement took more than {limit:.0f} s and was stopped")
    except Exception as exc:
        ctx.say(f"{group}: FAILED: {type(exc).__name__}: {exc}")
        ctx.say("".join(traceback.format_exception(exc)).rstrip())
        return failed(group, f"{type(exc).__name__}: {exc}")
    for f in figures:
        ctx.say(f"{group}: {f.key} = {f.value if f.value is None else f'{f.value:.4g}'} ({f.status})")
        for line in (*f.notes, *(f"PROBLEM: {p}" for p in f.problems)):
            ctx.say(f"{group}:   {line}")
    return figures


async def _run(groups: Sequence[str], keys: list[str], ctx: BenchContext) -> list[Figure]:
    collected = Collected(keys, ctx.figures)
    supervisor = Supervisor(ctx.paths, config=SCALE_HOST_CONFIG, restart=False)
    try:
        if not SCALE_HOST_CONFIG.is_file():
            raise RuntimeError(f"the bench host config {SCALE_HOST_CONFIG} is missing")
        await _start_stack(ctx, supervisor)
        for group in groups:
            collected.add(await _measure(ctx, group))
    finally:
        ctx.say("stopping the stack")
        if ctx.stack is not None:
            await ctx.stack.close()
        try:
            await supervisor.stop_all()
        except VgpusimError as exc:  # the services are stopped; only the clean-up failed
            ctx.say(f"stack clean-up failed ({exc}); removing its shared-memory folder")
            ctx.paths.remove_shm_dir()
    return collected.figures


def _keep_logs(ctx: BenchContext) -> None:
    """Move the services' logs out of the state dir (about to be removed) and say where."""
    logs = ctx.paths.logs_dir
    if not logs.is_dir():
        return
    kept = Path(tempfile.mkdtemp(prefix="vgpusim-bench-logs-"))
    for log in logs.iterdir():
        shutil.move(str(log), kept / log.name)
    ctx.say(f"a figure failed: the services' logs are kept in {kept}")


def run_bench(*, quick: bool = False, as_json: bool = False, only: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    try:
        groups, keys = select(only)
    except ValueError as exc:
        print(f"vgpusim bench: {exc}", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="vgpusim-bench-"))
    os.chmod(state, 0o700)
    ctx = BenchContext(StackPaths(state), quick=quick)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            figures = runner.run(_run(groups, keys, ctx))
    except RuntimeError as exc:
        print(f"vgpusim bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if any(f.error or f.problems for f in ctx.figures):
            _keep_logs(ctx)
        shutil.rmtree(state, ignore_errors=True)
    machine = machine_info(quick=quick)
    print(render_json(figures, machine) if as_json else render_table(figures, machine), flush=True)
    return 0 if figures and all(f.met for f in figures) else 1
