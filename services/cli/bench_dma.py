"""The DMA copy figure of ``vgpusim bench``: gfx_host's COPY through pinned GTT pages vs memcpy.

DESIGN.md §5: "a 1 MiB guest-to-guest copy command executed by gfx_host through pinned GTT pages,
vs a raw memcpy of 1 MiB in the same process".  Both sides must run in one process, so the bench
process hosts the gfx_host code path itself, over the real stack:

1. a guest RAM segment in the stack's shm dir, an ``iommu_type2`` container mapping it at IOVA 0,
   and a device attached and watching unmap events (what a VM and an open vGPU have);
2. a GVT-g-sized GM partition whose GTT (:class:`~vgpusim.gfx_host.core.gtt.Gtt`, the shadow
   gfx_host keeps per vGPU) maps 1 MiB of source, 1 MiB of destination, a ring page and a status
   page to guest pages; ``apply_pending`` pins them through the running ``iommu_type2``
   (``PinPages``, 512 pages a call, exactly gfx_host's :class:`~vgpusim.gfx_host.clients.GrpcPinner`);
3. a ring holding one ``COPY dst, src, 1 MiB`` audited by gfx_host's
   :class:`~vgpusim.gfx_host.core.engine.audit.CommandAuditor` and executed by its
   :class:`~vgpusim.gfx_host.core.engine.executor.Executor` against
   :class:`~vgpusim.gfx_host.core.gmem.GttGraphicsMemory` (translate -> segment views -> memmove),
   in timed batches alternating with batches of a raw ``memoryview`` copy between the very same
   host bytes (pairing cancels the drift of a noisy machine).

value = median over rounds of (engine GB/s / raw GB/s).  The audit, done once per doorbell, is
reported beside it; the doorbell and interrupt are the IRQ figure's business.

Glossary:
- GM: graphics memory address space of the vGPU; GTT entry i maps GM page i to a guest page.
- GB/s: 1e9 bytes per second.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid as _uuid

import grpc

from vgpusim.cli.bench_context import BenchContext
from vgpusim.cli.bench_report import Figure
from vgpusim.common.rpc import CHANNEL_OPTIONS
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.gfx_host.clients import IommuClient, SegmentCache
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.audit import CommandAuditor
from vgpusim.gfx_host.core.engine.executor import Executor
from vgpusim.gfx_host.core.engine.workload import RingState
from vgpusim.gfx_host.core.gmem import GttGraphicsMemory
from vgpusim.gfx_host.core.gtt import GTT_PRESENT, PAGE_SIZE, Gtt
from vgpusim.gfx_host.core.resources import Extent, Partition

__all__ = ["COPY_SIZE", "dma_copy"]

COPY_SIZE = 1 << 20
LOW_GM = Extent(0x0800_0000, 64 << 20)  # where GVT-g puts a V5_8 vGPU's aperture share
HIGH_GM = Extent(0x4000_0000, 384 << 20)
RAM = 8 << 20
_TIMEOUT = 30.0


def _layout() -> dict[str, tuple[int, int]]:
    """name -> (GM address, guest-physical address): src, dst, ring and status page."""
    gm, mib = LOW_GM.start, 1 << 20
    return {
        "src": (gm, 1 * mib),
        "dst": (gm + COPY_SIZE, 3 * mib),
        "ring": (gm + 2 * COPY_SIZE, 5 * mib),
        "hws": (gm + 2 * COPY_SIZE + PAGE_SIZE, 5 * mib + PAGE_SIZE),
    }


def _map_gtt(gtt: Gtt, gm: int, gpa: int, size: int) -> None:
    """Write the guest's GTT entries: GM pages ``[gm, gm+size)`` -> guest pages from ``gpa``."""
    for page in range(size // PAGE_SIZE):
        index = (gm >> 12) + page
        gtt.write(index * 8, 8, (gpa + page * PAGE_SIZE) | GTT_PRESENT)


async def dma_copy(ctx: BenchContext) -> list[Figure]:
    """``dma_copy_ratio`` (see the module docstring)."""
    ctx.require("iommu_type2")
    rounds, iterations = ctx.pick(41, 21), 20
    name = f"bench-dma-{_uuid.uuid4().hex[:12]}"
    device = f"bench-dma-{_uuid.uuid4()}"
    layout = _layout()
    segment = Segment.create(ctx.shm_dir, name, RAM)
    memory = SegmentCache(ctx.shm_dir)
    try:
        async with grpc.aio.insecure_channel(ctx.paths.target("iommu_type2"), options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.IommuType2ServiceStub(ch)
            cid = (
                await stub.CreateContainer(
                    pb.CreateContainerRequest(owner=name, mode=pb.IOMMU_MODE_EMULATED), timeout=_TIMEOUT
                )
            ).container_id
            try:
                await stub.RegisterSegment(
                    pb.RegisterSegmentRequest(container_id=cid, segment=name, size=RAM), timeout=_TIMEOUT
                )
                rw = pb.Prot(read=True, write=True)
                mapping = pb.DmaMapping(iova=0, size=RAM, segment=name, offset=0, prot=rw)
                await stub.MapDma(pb.MapDmaRequest(container_id=cid, mapping=mapping), timeout=_TIMEOUT)
                await stub.AttachDevice(
                    pb.AttachDeviceRequest(container_id=cid, device=device), timeout=_TIMEOUT
                )
                watch = stub.WatchUnmap()
                try:
                    register = pb.UnmapRegistration(container_id=cid, device=device)
                    await watch.write(pb.WatchUnmapRequest(register=register))
                    first = await watch.read()
                    if first is grpc.aio.EOF or not first.HasField("registered"):
                        raise RuntimeError("WatchUnmap did not register the bench device")
                    gtt = Gtt((LOW_GM, HIGH_GM))
                    gtt.pinner = IommuClient(ch).pinner(cid, device)
                    try:
                        return await _measure(ctx, gtt, memory, segment, layout, rounds, iterations)
                    finally:
                        await gtt.reset()
                finally:
                    watch.cancel()
            finally:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.DestroyContainer(
                        pb.DestroyContainerRequest(container_id=cid), timeout=_TIMEOUT
                    )
    finally:
        memory.close()
        segment.close()
        segment.unlink(missing_ok=True)


async def _measure(
    ctx: BenchContext,
    gtt: Gtt,
    memory: SegmentCache,
    segment: Segment,
    layout: dict[str, tuple[int, int]],
    rounds: int,
    iterations: int,
) -> list[Figure]:
    (src_gm, src_gpa), (dst_gm, dst_gpa) = layout["src"], layout["dst"]
    (ring_gm, ring_gpa), (hws_gm, hws_gpa) = layout["ring"], layout["hws"]
    _map_gtt(gtt, src_gm, src_gpa, COPY_SIZE)
    _map_gtt(gtt, dst_gm, dst_gpa, COPY_SIZE)
    _map_gtt(gtt, ring_gm, ring_gpa, PAGE_SIZE)
    _map_gtt(gtt, hws_gm, hws_gpa, PAGE_SIZE)
    t0 = time.perf_counter()
    await gtt.apply_pending()
    pin_ms = (time.perf_counter() - t0) * 1000
    stats = gtt.statistics()
    ctx.say(
        f"dma: {stats.pages_pinned} guest pages pinned in {stats.pin_calls_total} PinPages ({pin_ms:.1f} ms)"
    )
    ram = segment.buf
    ram[src_gpa : src_gpa + COPY_SIZE] = os.urandom(COPY_SIZE)
    command = c.pack(c.copy(dst_gm, src_gm, COPY_SIZE))
    ram[ring_gpa : ring_gpa + len(command)] = command
    gm_memory = GttGraphicsMemory(gtt, memory, Partition(1, "GVTg_V5_8", LOW_GM, HIGH_GM, Extent(0, 4)))
    auditor = CommandAuditor(gm_memory)
    ring = RingState(0, ring_gm, PAGE_SIZE, 0, len(command), hws_gm)
    workload = auditor.audit(ring).unwrap()
    executor = Executor()
    raw_src = ram[src_gpa : src_gpa + COPY_SIZE]
    raw_dst = ram[dst_gpa : dst_gpa + COPY_SIZE]

    def raw() -> float:
        t = time.perf_counter_ns()
        for _ in range(iterations):
            raw_dst[:] = raw_src
        return (time.perf_counter_ns() - t) / iterations

    def engine() -> float:
        t = time.perf_counter_ns()
        for _ in range(iterations):
            executor.execute(workload, gm_memory)
        return (time.perf_counter_ns() - t) / iterations

    ctx.say(f"dma: {rounds} paired rounds of {iterations} x 1 MiB (engine COPY vs raw copy)")
    raws: list[float] = []
    engines: list[float] = []
    for k in range(rounds):
        pair = (engine, raw) if k % 2 else (raw, engine)
        first, second = pair[0](), pair[1]()
        if k % 2:
            engines.append(first)
            raws.append(second)
        else:
            raws.append(first)
            engines.append(second)
    t = time.perf_counter_ns()
    for _ in range(100):
        auditor.audit(ring)
    audit_us = (time.perf_counter_ns() - t) / 100 / 1000
    raw_dst[:] = bytes(COPY_SIZE)
    executor.execute(workload, gm_memory)
    if raw_dst != raw_src:
        raise RuntimeError("the engine's COPY did not produce the source bytes at the destination")
    ratio = statistics.median(r / e for r, e in zip(raws, engines, strict=True))
    raw_ns, engine_ns = statistics.median(raws), statistics.median(engines)
    return [
        Figure(
            "dma_copy_ratio",
            ratio,
            unit="GB/s",
            measured=COPY_SIZE / engine_ns,
            baseline=COPY_SIZE / raw_ns,
            notes=(
                f"median over {rounds} paired rounds: engine COPY {engine_ns / 1000:.1f} us, raw copy "
                f"{raw_ns / 1000:.1f} us per MiB; audit of the ring {audit_us:.1f} us per doorbell; "
                "run in the bench process on gfx_host's GTT/audit/executor over pages pinned by the "
                "stack's iommu_type2",
            ),
        )
    ]
