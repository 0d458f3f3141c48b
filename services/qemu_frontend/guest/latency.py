"""LATENCY: per-operation latencies of the fast path, measured inside the guest.

After ``init`` and one submission waited for (so the host has shadowed and pinned the GTT),
two phases of ``iterations`` operations each, every one timed on its own with
``time.perf_counter_ns``:

1. **doorbell -> interrupt**: an empty request (``STORE_SEQNO`` + ``USER_INTERRUPT``) is written
   into the ring, the clock starts immediately before the ``RING_TAIL`` write (the doorbell) and
   stops when ``env.wait_irq`` returns; the interrupt is then acknowledged (``INT_STATUS`` read,
   ``INT_ACK`` write) and the request retired outside the timed part.  A wait that times out is
   not a sample (counted in the event log); a request that never completes fails the workload.
2. **register read**: one 4-byte BAR0 read of ``PV_MAGIC_LO`` through the trap path, checked
   against the magic.

The percentiles (:class:`~.stats.LatencySummary`, microseconds) are published in the stats as
``irq_roundtrip_us`` and ``mmio_read_us`` (``GuestStatus`` of the same names) at the end of each
phase; the counters every :data:`PUBLISH_EVERY` operations (publishing costs more than a trap,
and a guest that pauses between accesses lets the host's trap thread stop spinning: the loops
stay tight).  Parameters: ``iterations`` (per phase), ``engine``.  The stop event ends a phase
early; what was measured until then is still published.

Glossary:
- round trip: doorbell write -> host audits and executes the request -> MSI -> guest wakes up.
- stale interrupt: one pending before the doorbell; drained (untimed) so it cannot end a sample.
"""

from __future__ import annotations

import time
from typing import Final

from vgpusim.common.errors import WrongState
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest.context import ParamValue, WorkloadContext
from vgpusim.qemu_frontend.guest.env import REGION_BAR0
from vgpusim.qemu_frontend.guest.stats import LatencySummary

DEFAULTS: Final[dict[str, ParamValue]] = {"iterations": 1000, "engine": "rcs"}
MAX_ITERATIONS: Final = 10_000_000
MAGIC_LO: Final = r.PVINFO_MAGIC_VALUE & 0xFFFF_FFFF
PUBLISH_EVERY: Final = 256


def _hung(what: str) -> WrongState:
    return WrongState(f"{what} did not complete", reason="LATENCY_HUNG")


def irq_roundtrips(ctx: WorkloadContext, engine: Engine, count: int) -> list[int]:
    """``count`` empty requests, each doorbell -> interrupt timed (ns); see the module docstring."""
    d = ctx.driver
    timeout = d.config.timeout_s
    now = time.perf_counter_ns
    samples: list[int] = []
    missed = done = 0
    stop = ctx.stop
    for i in range(count):
        if stop.is_set():
            break
        if i % PUBLISH_EVERY == 0:
            ctx.stats.add(iterations=done, verified=done)
            ctx.publish()
            done = 0
        seqno = d.submit(engine, b"", ring_doorbell=False)
        while d.sleep_for_interrupt(0.0):  # stale interrupts would end the sample early
            d.service_interrupt()
        t0 = now()
        d.doorbell(engine)
        got = d.sleep_for_interrupt(timeout)
        t1 = now()
        if got:
            d.service_interrupt()
        elif stop.is_set():
            break
        if not d.wait(seqno):
            raise _hung(f"empty request {seqno}")
        if got:
            samples.append(t1 - t0)
        else:
            missed += 1
        done += 1
    ctx.stats.add(iterations=done, verified=done)
    ctx.publish()
    if missed:
        ctx.stats.note(f"{missed} doorbells saw no interrupt within {timeout:g} s (not sampled)")
    return samples


def register_reads(ctx: WorkloadContext, count: int) -> list[int]:
    """``count`` trapped BAR0 reads of ``PV_MAGIC_LO``, each timed (ns)."""
    read = ctx.driver.env.port.read
    now = time.perf_counter_ns
    samples: list[int] = []
    stop, offset = ctx.stop, r.PV_MAGIC_LO
    for i in range(count):
        if stop.is_set():
            break
        if i % PUBLISH_EVERY == 0:
            ctx.publish()
        t0 = now()
        value = read(REGION_BAR0, offset, 4)
        t1 = now()
        if value != MAGIC_LO:
            raise WrongState(
                f"PV_MAGIC_LO read {value:#x}, expected {MAGIC_LO:#x}", reason="LATENCY_BAD_READ"
            )
        samples.append(t1 - t0)
    ctx.publish()
    return samples


def run_latency(ctx: WorkloadContext) -> None:
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    count = ctx.params.integer("iterations", lo=1, hi=MAX_ITERATIONS)
    if not d.wait(d.submit(engine, b"")):  # warm-up: GTT shadowed and pinned on the host
        raise _hung("the warm-up request")
    ctx.publish()
    irq = LatencySummary.of_ns(irq_roundtrips(ctx, engine, count))
    ctx.stats.set_latency(irq_roundtrip=irq)
    ctx.stats.note(f"doorbell -> interrupt: {irq.count} samples, p50 {irq.p50:.1f} us, p99 {irq.p99:.1f} us")
    if ctx.stop.is_set():
        return
    mmio = LatencySummary.of_ns(register_reads(ctx, count))
    ctx.stats.set_latency(mmio_read=mmio)
    ctx.stats.note(f"register read: {mmio.count} samples, p50 {mmio.p50:.1f} us, p99 {mmio.p99:.1f} us")
