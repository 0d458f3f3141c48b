"""The built-in guest workloads, run by name in the VM's vCPU thread: :func:`run_workload`.

Every workload probes the device, reads PVINFO and initialises the driver, runs, and shuts the
driver down (rings and interrupts off).  Progress is published into a :class:`WorkloadStats`
after every step; the stop event ends looping workloads between steps.

=========  ====================================================================================
workload   what it does (parameters, defaults)
=========  ====================================================================================
smoke      one batch: ``STORE_DWORD`` of ``value`` into the scratch buffer + the completion; waits
           for the interrupt and checks the value in guest RAM (``value``=0xC0FFEE01, ``engine``)
render     animated frames on the display plane (``frames``=0 forever, ``interval_ms``=16,
           ``engine``); see ``render``
copy       ``COPY`` of ``bytes`` between two guest buffers per request, verified byte for byte
           (``bytes``=1 MiB, ``iterations``=0 forever, ``engine``=bcs)
compute    ``COMPUTE`` CRC32 / SUM32 / XOR32 of ``bytes`` of random data, checked against
           ``zlib.crc32`` and the CPU's sums (``bytes``=256 KiB, ``iterations``=0, ``op``=all)
idle       initialise, then wait for the stop event
hang       ``SPIN`` for ``spin_us`` (past the host watchdog), detect the hang within
           ``timeout_ms``, reset the engine, prove it works again (``iterations``=1); with
           ``depth`` > 1 (default 1) a busy GPU load: see :func:`_spin_queue`
hostile    escape attempts, each recorded as contained or not; see ``hostile``
latency    doorbell -> interrupt and register-read latencies (``iterations``=1000 each,
           ``engine``); see ``latency``
=========  ====================================================================================

Errors: a bad parameter raises ``InvalidArgument`` (BAD_WORKLOAD_PARAM) before the device is
touched.  A domain error during the run ends it FAILED with ``error`` set; any other exception is
a bug: it is recorded and re-raised.

Glossary:
- step: one request (or frame) and its verification.
- scratch: the driver's small data buffer (result dwords).
- depth: how many requests a workload keeps submitted and not yet retired.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Final

from vgpusim.common.errors import VgpusimError, WrongState
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.commands import ComputeOp
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.core.memory import PageAllocator
from vgpusim.qemu_frontend.guest import hostile, latency, render
from vgpusim.qemu_frontend.guest.context import Params, ParamValue, WorkloadContext
from vgpusim.qemu_frontend.guest.driver import DriverConfig, GuestDriver
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.guest.stats import Workload, WorkloadSnapshot, WorkloadStats

MIB: Final = 1 << 20
MAX_DEPTH: Final = 64
MAX_SURFACE: Final = 36 * MIB  # the audit's max_surface_size
COMPUTE_OPS: Final = {"crc32": ComputeOp.CRC32, "sum32": ComputeOp.SUM32, "xor32": ComputeOp.XOR32}


def _failed(what: str, reason: str) -> WrongState:
    return WrongState(what, reason=reason)


def _smoke(ctx: WorkloadContext) -> None:
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    value = ctx.params.integer("value", hi=0xFFFF_FFFF)
    assert d.scratch is not None
    seqno = d.submit_batch(engine, c.pack(c.store_dword(d.scratch.gm, value)))
    if not d.wait(seqno):
        raise _failed("the smoke batch hung", "SMOKE_HUNG")
    if d.statistics().interrupts_received == 0 and not d.wait_interrupt():
        raise _failed("the smoke batch completed but no interrupt arrived", "NO_INTERRUPT")
    got = d.env.read_u32(d.scratch.gpa)
    if got != value:
        raise _failed(f"the GPU stored {got:#x}, expected {value:#x}", "SMOKE_MISMATCH")
    ctx.stats.add(iterations=1, verified=1)
    ctx.stats.note(f"stored {value:#x} at GM {d.scratch.gm:#x} (GPA {d.scratch.gpa:#x}), seqno {seqno}")


def _idle(ctx: WorkloadContext) -> None:
    ctx.driver.init()
    ctx.publish()
    ctx.stop.wait()


def _pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _copy(ctx: WorkloadContext) -> None:
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    size = ctx.params.integer("bytes", lo=8, hi=MAX_SURFACE)
    src, dst = d.map_buffer("copy-src", size), d.map_buffer("copy-dst", size)
    base = bytearray(_pattern(size, size))
    for i in ctx.loop(ctx.params.integer("iterations")):
        base[:8] = i.to_bytes(8, "little")  # every copy differs from the previous one
        d.env.write_ram(src.gpa, base)
        if not d.wait(d.submit(engine, c.pack(c.copy(dst.gm, src.gm, size)))):
            raise _failed(f"copy {i} hung", "COPY_HUNG")
        if d.env.ram_view(dst.gpa, size) != base:
            raise _failed(f"copy {i}: destination differs from source", "COPY_MISMATCH")
        ctx.stats.add(bytes_copied=size, iterations=1, verified=1)


def cpu_compute(op: ComputeOp, data: bytes) -> int:
    """What ``COMPUTE`` with ``op`` must produce for ``data`` (the guest's reference)."""
    if op is ComputeOp.CRC32:
        return zlib.crc32(data)
    words = struct.unpack(f"<{len(data) // 4}I", data)
    return sum(words) & 0xFFFF_FFFF if op is ComputeOp.SUM32 else reduce(xor, words, 0)


def _compute(ctx: WorkloadContext) -> None:
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    size = ctx.params.integer("bytes", lo=4, hi=MAX_SURFACE)
    if size % 4:
        raise ctx.params.invalid("bytes", size, "must be a multiple of 4")
    name = ctx.params.text("op", choices=("all", *COMPUTE_OPS))
    ops = list(COMPUTE_OPS.values()) if name == "all" else [COMPUTE_OPS[name]]
    src = d.map_buffer("compute-src", size)
    assert d.scratch is not None
    rng = random.Random(size)
    for i in ctx.loop(ctx.params.integer("iterations")):
        data = rng.randbytes(size)
        d.env.write_ram(src.gpa, data)
        cmds = [c.compute(d.scratch.gm + 4 * k, src.gm, size, op) for k, op in enumerate(ops)]
        if not d.wait(d.submit(engine, c.pack(*cmds))):
            raise _failed(f"compute {i} hung", "COMPUTE_HUNG")
        for k, op in enumerate(ops):
            got, want = d.env.read_u32(d.scratch.gpa + 4 * k), cpu_compute(op, data)
            if got != want:
                raise _failed(f"compute {i}: {op.name} is {got:#x}, expected {want:#x}", "COMPUTE_MISMATCH")
        ctx.stats.add(iterations=1, verified=len(ops))


def _hang(ctx: WorkloadContext) -> None:
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    spin_us = ctx.params.integer("spin_us", lo=1, hi=0xFFFF_FFFF)
    timeout = ctx.params.number("timeout_ms", lo=1.0) / 1000
    depth = ctx.params.integer("depth", lo=1, hi=MAX_DEPTH)
    assert d.scratch is not None
    if depth > 1:
        _spin_queue(ctx, engine, spin_us, timeout, depth)
        return
    for i in ctx.loop(ctx.params.integer("iterations")):
        if d.wait(d.submit(engine, c.pack(c.spin(spin_us))), timeout):
            ctx.stats.note(f"spin {i} of {spin_us} us completed: no hang")
        else:
            ctx.stats.note(f"spin {i}: hang detected, {engine.name} reset")
        _check_engine(d, engine, 0x4A_0000 + i, timeout)
        ctx.stats.add(iterations=1, verified=1)


def _check_engine(d: GuestDriver, engine: Engine, marker: int, timeout: float) -> None:
    """Store ``marker`` through ``engine`` and read it back; WrongState ``ENGINE_DEAD`` otherwise."""
    assert d.scratch is not None
    if not d.wait(d.submit(engine, c.pack(c.store_dword(d.scratch.gm, marker))), timeout):
        raise _failed(f"the {engine.name} engine does not work after its reset", "ENGINE_DEAD")
    if d.env.read_u32(d.scratch.gpa) != marker:
        raise _failed("the store after the reset did not land", "ENGINE_DEAD")


def _spin_queue(ctx: WorkloadContext, engine: Engine, spin_us: int, timeout: float, depth: int) -> None:
    """``hang`` with ``depth`` > 1: keep ``depth`` requests submitted, so the GPU never waits for us.

    Each iteration is one request, ``SPIN`` + a ``STORE_DWORD`` of its marker into its own scratch
    dword (``i % depth``); the oldest is retired (and its marker checked) before the next is
    submitted, so while the guest handles one completion the next request is already queued.  A
    request that hangs is detected as in ``hang`` (the engine is reset, the requests queued
    behind it are lost and not counted), then a store proves the engine works again.  At the end
    the requests in flight are waited for; after a stop they are left to the driver's shutdown.
    """
    d = ctx.driver
    scratch = d.scratch
    assert scratch is not None
    spin = c.spin(spin_us)
    inflight: deque[tuple[int, int]] = deque()  # (iteration, seqno), oldest first

    def retire() -> None:
        i, seqno = inflight.popleft()
        marker, slot = (0x4A_0000 + i) & 0xFFFF_FFFF, 4 * (i % depth)
        if d.wait(seqno, timeout):
            if d.env.read_u32(scratch.gpa + slot) != marker:
                raise _failed(f"spin {i}: its store did not land", "STORE_MISMATCH")
            ctx.stats.add(iterations=1, verified=1)
            return
        ctx.stats.note(f"spin {i}: hang detected, {engine.name} reset, {len(inflight)} queued lost")
        inflight.clear()  # lost with the reset
        _check_engine(d, engine, 0x4A_0000 + i, timeout)
        ctx.stats.add(iterations=1, verified=1)

    for i in ctx.loop(ctx.params.integer("iterations")):
        if len(inflight) >= depth:
            retire()
        marker = (0x4A_0000 + i) & 0xFFFF_FFFF
        inflight.append(
            (i, d.submit(engine, c.pack(spin, c.store_dword(scratch.gm + 4 * (i % depth), marker))))
        )
    while inflight and not ctx.stop.is_set():
        retire()
    ctx.publish()


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A workload's body and its parameters with their defaults (which fix their types)."""

    body: Callable[[WorkloadContext], None]
    defaults: Mapping[str, ParamValue]


SPECS: Final[Mapping[Workload, WorkloadSpec]] = {
    Workload.SMOKE: WorkloadSpec(_smoke, {"value": 0xC0FFEE01, "engine": "rcs"}),
    Workload.RENDER: WorkloadSpec(render.run_render, render.DEFAULTS),
    Workload.COPY: WorkloadSpec(_copy, {"bytes": MIB, "iterations": 0, "engine": "bcs"}),
    Workload.COMPUTE: WorkloadSpec(
        _compute, {"bytes": 256 * 1024, "iterations": 0, "op": "all", "engine": "rcs"}
    ),
    Workload.IDLE: WorkloadSpec(_idle, {}),
    Workload.HANG: WorkloadSpec(
        _hang,
        {"spin_us": 10_000_000, "timeout_ms": 1000.0, "iterations": 1, "depth": 1, "engine": "rcs"},
    ),
    Workload.HOSTILE: WorkloadSpec(hostile.run_hostile, hostile.DEFAULTS),
    Workload.LATENCY: WorkloadSpec(latency.run_latency, latency.DEFAULTS),
}


def validate_params(workload: Workload | str, params: Mapping[str, ParamValue] | None) -> Params:
    """Check ``params`` for ``workload`` without running it (InvalidArgument BAD_WORKLOAD_PARAM)."""
    kind = workload if isinstance(workload, Workload) else Workload.parse(workload)
    return Params(params, SPECS[kind].defaults)


def run_workload(
    workload: Workload | str,
    env: GuestEnv,
    params: Mapping[str, ParamValue] | None = None,
    *,
    stop: threading.Event | None = None,
    stats: WorkloadStats | None = None,
    config: DriverConfig | None = None,
    fresh_memory: bool = True,
) -> WorkloadSnapshot:
    """Run ``workload`` on the vGPU behind ``env`` until it ends or ``stop`` is set; the final snapshot.

    Blocking: call it from the vCPU thread.  ``stats`` (created if None) is updated throughout and
    can be read from other threads.  Each run is a boot of the guest driver: with ``fresh_memory``
    its pages come from a new ``PageAllocator`` over ``env.regions`` (the previous run shut its
    driver down, so guest RAM is free again), else from ``env.alloc``.

    Errors: InvalidArgument (UNKNOWN_WORKLOAD, BAD_WORKLOAD_PARAM) before the run starts; domain
    errors during the run end it FAILED (``snapshot.error``).
    """
    kind = workload if isinstance(workload, Workload) else Workload.parse(workload)
    parsed = validate_params(kind, params)
    stats = stats if stats is not None else WorkloadStats()
    if fresh_memory:
        env = dataclasses.replace(env, alloc=PageAllocator(env.regions))
    driver = GuestDriver(env, config)
    ctx = WorkloadContext(driver, parsed, stop if stop is not None else threading.Event(), stats)
    stats.begin(kind)
    try:
        SPECS[kind].body(ctx)
    except VgpusimError as exc:
        stats.fail(str(exc))
    except Exception as exc:
        stats.fail(f"internal error: {exc!r}")
        raise
    else:
        stats.finish()
    finally:
        if driver.running:
            try:
                driver.shutdown()
            except VgpusimError as exc:
                stats.note(f"shutdown failed: {exc}")
        ctx.publish()
    return stats.snapshot()
