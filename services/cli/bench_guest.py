"""The guest-path figures of ``vgpusim bench``: lifecycle, IRQ round trip and MMIO trap latency.

All three go through the real stack as a client sees it: vGPUs created on ``vgpu_bus``, VMs and
guests of ``qemu_frontend``, the built-in guest driver in the frontend's vCPU thread talking to
``gfx_host`` over the shared-memory channel.

- ``lifecycle_p50_ms``: CreateDevice -> CreateVm -> AttachDevice -> StartGuest(SMOKE) -> its first
  interrupt delivered to a ``WatchInterrupts`` stream (the VFIO API's view of the MSI the guest
  gets); p50 over cycles, each torn down (untimed) before the next.  The 2 ms given to the stream
  to reach the frontend before the guest starts are part of the time.
- ``irq_roundtrip_p50_ratio`` / ``_p99_ratio`` and ``mmio_trap_p50_ratio``: per-operation
  latencies recorded *inside the guest* by the frontend's latency workload (doorbell write ->
  command executed -> MSI seen by the guest; one BAR0 register read through the trap path),
  divided by the raw eventfd round trip between two processes on two different vCPUs
  (:func:`~.bench_baselines.eventfd_rtt_ns`, measured before and after, samples pooled).  The
  workload is :data:`LATENCY_WORKLOAD` and reports its percentiles in ``GuestStatus`` fields
  :data:`LATENCY_FIELDS`; until the frontend offers them these figures fail, saying so.

Glossary:
- cycle: one vGPU + VM + guest brought up and torn down.
- latency workload: probe, init, one warm-up submission (GTT shadowed and pinned), then N empty
  submissions each waited for, and N register reads, each timed with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as _uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vgpusim.cli.bench_baselines import eventfd_rtt_ns, percentile, two_cpus
from vgpusim.cli.bench_context import BenchContext, MissingService
from vgpusim.cli.bench_report import Figure
from vgpusim.client import Stack, frontend_pb

__all__ = [
    "ALL",
    "GUEST_RAM",
    "LATENCY_FIELDS",
    "LATENCY_WORKLOAD",
    "PARENTS",
    "TYPE_ID",
    "guest_vm",
    "irq_roundtrip",
    "lifecycle",
    "mmio_trap",
]

PARENTS = ("0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0")
TYPE_ID = "i915-GVTg_V5_8"
GUEST_RAM = 128 << 20
ALL = ("iommu_type2", "vgpu_bus", "gfx_host", "qemu_frontend")
LATENCY_WORKLOAD = "WORKLOAD_LATENCY"
LATENCY_FIELDS = ("irq_roundtrip_us", "mmio_read_us")
WATCH_SETTLE_S = 0.002


@contextlib.asynccontextmanager
async def guest_vm(stack: Stack, parent: str, name: str) -> AsyncIterator[tuple[str, str]]:
    """A vGPU on ``parent`` attached to a fresh VM; yields (vm_id, uuid); all removed after."""
    uuid = str(_uuid.uuid4())
    await stack.bus.create_device(uuid, parent, TYPE_ID)
    try:
        vm = await stack.frontend.create_vm(memory_bytes=GUEST_RAM, name=name)
        try:
            await stack.frontend.attach_device(vm.vm_id, uuid)
            yield vm.vm_id, uuid
        finally:
            await stack.frontend.destroy_vm(vm.vm_id)
    finally:
        await stack.bus.remove_device(uuid)


async def _first_irq(stack: Stack, vm_id: str, uuid: str, *, timeout: float = 30.0) -> float:
    """Start the smoke guest; the ``perf_counter`` time its first interrupt reached a client.

    The interrupt is watched with WatchInterrupts (opened, and given :data:`WATCH_SETTLE_S` to
    reach the frontend, before the guest starts) rather than by polling the guest's status,
    which would load the frontend's loop while the guest initialises.
    """
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        async with contextlib.aclosing(stack.frontend.watch_interrupts(vm_id, uuid)) as irqs:
            async for _ in irqs:
                if not first.done():
                    first.set_result(time.perf_counter())
                return

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(WATCH_SETTLE_S)
        await stack.frontend.start_guest(vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
        waiters: set[asyncio.Future[Any]] = {first, watcher}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            return first.result()
        if watcher in done:
            watcher.result()  # the stream's error, if it failed
        status = await stack.frontend.get_guest_status(vm_id)
        state = frontend_pb.GuestState.Name(status.state)
        raise RuntimeError(
            f"no interrupt reached WatchInterrupts within {timeout:.0f} s (guest {state}, "
            f"{status.interrupts_received} interrupts seen by the guest) {status.error}".rstrip()
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def lifecycle(ctx: BenchContext) -> list[Figure]:
    """``lifecycle_p50_ms`` (see the module docstring)."""
    stack = ctx.require(*ALL)
    cycles = ctx.pick(20, 6)
    totals: list[float] = []
    steps: dict[str, list[float]] = {"create vGPU": [], "create VM": [], "attach": [], "start -> IRQ": []}
    first_doorbell: list[float] = []  # the guest's own first doorbell -> first interrupt, ms
    ctx.say(f"lifecycle: {cycles} cycles of create vGPU -> create VM -> attach -> first IRQ")
    for i in range(cycles):
        uuid = str(_uuid.uuid4())
        t0 = time.perf_counter()
        await stack.bus.create_device(uuid, PARENTS[0], TYPE_ID)
        t1 = time.perf_counter()
        vm_id = ""
        try:
            vm = await stack.frontend.create_vm(memory_bytes=GUEST_RAM, name=f"bench-life-{i}")
            vm_id = vm.vm_id
            t2 = time.perf_counter()
            await stack.frontend.attach_device(vm_id, uuid)
            t3 = time.perf_counter()
            t4 = await _first_irq(stack, vm_id, uuid)
            status = await stack.frontend.wait_guest(vm_id, timeout=30, poll_interval=0.01)
            first_doorbell.append(status.first_irq_latency_us / 1000)
        finally:
            if vm_id:
                await stack.frontend.destroy_vm(vm_id)
            await stack.bus.remove_device(uuid)
        totals.append((t4 - t0) * 1000)
        for key, (a, b) in zip(steps, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
            steps[key].append((b - a) * 1000)
    breakdown = ", ".join(f"{k} {percentile(v, 0.5):.1f}" for k, v in steps.items())
    return [
        Figure(
            "lifecycle_p50_ms",
            percentile(totals, 0.5),
            unit="ms",
            notes=(
                f"{cycles} cycles; p90 {percentile(totals, 0.9):.1f} ms, max {max(totals):.1f} ms; "
                f"median steps (ms): {breakdown} (of which the guest's first doorbell -> first "
                f"interrupt {percentile(first_doorbell, 0.5):.1f})",
            ),
        )
    ]


@dataclass(frozen=True, slots=True)
class _Latencies:
    irq_p50: float
    irq_p99: float
    trap_p50: float
    count: int
    base_p50: float
    base_p99: float
    same_cpu_p50: float


def _summary(status: object, name: str) -> tuple[float, float, int]:
    summary = getattr(status, name)
    return float(summary.p50), float(summary.p99), int(summary.count)


async def _latency_run(ctx: BenchContext) -> _Latencies:
    """Run the latency workload once (shared by the IRQ and trap figures)."""
    cached = ctx.cache.get("latency")
    if isinstance(cached, _Latencies):
        return cached
    stack = ctx.require(*ALL)
    fields = frontend_pb.GuestStatus.DESCRIPTOR.fields_by_name
    workloads = frontend_pb.Workload.DESCRIPTOR.values_by_name
    if LATENCY_WORKLOAD not in workloads or any(f not in fields for f in LATENCY_FIELDS):
        raise MissingService(
            "needs the frontend's latency workload, which does not exist yet: a Workload "
            f"{LATENCY_WORKLOAD} (params: iterations) whose GuestStatus reports per-operation "
            f"percentiles in fields {', '.join(LATENCY_FIELDS)} ({{count, p50, p90, p99}} in us): "
            "doorbell write -> MSI seen by the guest for an empty submission, and one BAR0 register "
            "read through the trap path (docs/performance.md, 'What the bench needs')"
        )
    n = ctx.pick(5_000, 1_000)
    cpus = two_cpus()
    ctx.say(f"irq/trap: raw eventfd round trips ({n}, cross-vCPU {cpus})")
    base = eventfd_rtt_ns(n, cpus=cpus)
    same = eventfd_rtt_ns(n)
    async with guest_vm(stack, PARENTS[0], "bench-latency") as (vm_id, _):
        ctx.say(f"irq/trap: latency workload, {n} doorbell -> MSI round trips and {n} register reads")
        workload = frontend_pb.Workload.Value(LATENCY_WORKLOAD)
        await stack.frontend.start_guest(vm_id, workload=workload, params={"iterations": str(n)})
        status = await stack.frontend.wait_guest(vm_id, timeout=120, poll_interval=0.1)
        if status.state != frontend_pb.GUEST_STATE_FINISHED:
            state = frontend_pb.GuestState.Name(status.state)
            raise RuntimeError(f"the latency workload ended {state}: {status.error}")
    base += eventfd_rtt_ns(n, cpus=cpus)
    irq_p50, irq_p99, count = _summary(status, LATENCY_FIELDS[0])
    trap_p50, _, _ = _summary(status, LATENCY_FIELDS[1])
    result = _Latencies(
        irq_p50,
        irq_p99,
        trap_p50,
        count,
        percentile(base, 0.5) / 1000,
        percentile(base, 0.99) / 1000,
        percentile(same, 0.5) / 1000,
    )
    ctx.cache["latency"] = result
    return result


async def irq_roundtrip(ctx: BenchContext) -> list[Figure]:
    """``irq_roundtrip_p50_ratio`` and ``irq_roundtrip_p99_ratio``."""
    lat = await _latency_run(ctx)
    note = (
        f"{lat.count} guest round trips vs raw eventfd RTT across two vCPUs "
        f"(same-vCPU eventfd p50 {lat.same_cpu_p50:.1f} us, for reference)"
    )
    return [
        Figure(
            "irq_roundtrip_p50_ratio",
            lat.irq_p50 / lat.base_p50,
            unit="us",
            measured=lat.irq_p50,
            baseline=lat.base_p50,
            notes=(note,),
        ),
        Figure(
            "irq_roundtrip_p99_ratio",
            lat.irq_p99 / lat.base_p99,
            unit="us",
            measured=lat.irq_p99,
            baseline=lat.base_p99,
        ),
    ]


async def mmio_trap(ctx: BenchContext) -> list[Figure]:
    """``mmio_trap_p50_ratio``."""
    lat = await _latency_run(ctx)
    return [
        Figure(
            "mmio_trap_p50_ratio",
            lat.trap_p50 / lat.base_p50,
            unit="us",
            measured=lat.trap_p50,
            baseline=lat.base_p50,
            notes=("guest BAR0 register reads vs raw eventfd RTT across two vCPUs",),
        )
    ]
