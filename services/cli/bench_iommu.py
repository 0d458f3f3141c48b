"""The iommu_type2 figures of ``vgpusim bench``: map RPC latency, map and pin throughput.

All three go through the running ``iommu_type2`` process over its UNIX socket, one call in flight
at a time (as the frontend maps RAM and gfx_host pins GTT pages), with the generated stub and
deadlines, on a container of the bench's own over a sparse segment of the stack's shm dir:

- ``map_rpc_ratio``: a ``MapDma`` of one 2 MiB region followed by the ``UnmapDma`` of that range,
  against two raw gRPC echoes (:mod:`.bench_baselines`) whose payloads are exactly the serialized
  sizes of those two requests, over the same kind of socket.  Blocks of map/unmap pairs and of
  echo pairs alternate so that the drift of a shared machine hits both alike; value = p50 / p50.
- ``map_throughput_per_s`` and ``pin_throughput_pages_per_s``: the iommu_type2 engineers' own
  :func:`vgpusim.iommu_type2.bench.measure` (run once for both): ``MapDmaBatch`` calls of
  :data:`MAP_BATCH` 4 KiB mappings (each batch unmapped again, untimed), and ``PinPages`` of 512
  fresh pages (each unpinned again, untimed) for a device attached and watching unmap events, as
  gfx_host's is.

Glossary:
- pair: one MapDma + one UnmapDma (or one echo of each size), timed as a whole.
- window: 2 MiB = 512 pages, what one pin call covers.
"""

from __future__ import annotations

import contextlib
import time
import uuid as _uuid
from collections.abc import AsyncIterator

import grpc

from vgpusim.cli.bench_baselines import EchoServer, echo_rtt_ns, percentile
from vgpusim.cli.bench_context import BenchContext
from vgpusim.cli.bench_report import Figure
from vgpusim.common.rpc import CHANNEL_OPTIONS
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc

__all__ = ["MAP_BATCH", "map_rpc", "map_throughput", "pin_throughput"]

PAGE = 4096
WINDOW = 512 * PAGE
MAP_BATCH = 1_000
_RW = pb.Prot(read=True, write=True)
_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def _container(
    ctx: BenchContext, size: int
) -> AsyncIterator[tuple[pb_grpc.IommuType2ServiceStub, str, str]]:
    """A container of the bench with a registered sparse segment of ``size`` bytes; removed after."""
    ctx.require("iommu_type2")
    name = f"bench-{_uuid.uuid4().hex[:12]}"
    segment = Segment.create(ctx.shm_dir, name, size)
    try:
        async with grpc.aio.insecure_channel(ctx.paths.target("iommu_type2"), options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.IommuType2ServiceStub(ch)
            created = await stub.CreateContainer(
                pb.CreateContainerRequest(owner=name, mode=pb.IOMMU_MODE_EMULATED), timeout=_TIMEOUT
            )
            cid = created.container_id
            try:
                await stub.RegisterSegment(
                    pb.RegisterSegmentRequest(container_id=cid, segment=name, size=size), timeout=_TIMEOUT
                )
                yield stub, cid, name
            finally:
                await stub.DestroyContainer(pb.DestroyContainerRequest(container_id=cid), timeout=_TIMEOUT)
    finally:
        segment.close()
        segment.unlink(missing_ok=True)


async def map_rpc(ctx: BenchContext) -> list[Figure]:
    """``map_rpc_ratio``: MapDma + UnmapDma vs two raw echoes of the same sizes (p50 / p50)."""
    pairs, blocks = ctx.pick(300, 100), ctx.pick(6, 4)
    async with _container(ctx, 4 * WINDOW) as (stub, cid, seg):
        mapping = pb.DmaMapping(iova=WINDOW, size=WINDOW, segment=seg, offset=0, prot=_RW)
        map_req = pb.MapDmaRequest(container_id=cid, mapping=mapping)
        unmap_req = pb.UnmapDmaRequest(container_id=cid, range=pb.UnmapRange(iova=WINDOW, size=WINDOW))
        sizes = (map_req.ByteSize(), unmap_req.ByteSize())
        ctx.say(f"map: {blocks} x {pairs} MapDma+UnmapDma pairs vs echoes of {sizes[0]} + {sizes[1]} bytes")

        async def map_pairs(n: int) -> list[int]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await stub.MapDma(map_req, timeout=_TIMEOUT)
                reply = await stub.UnmapDma(unmap_req, timeout=_TIMEOUT)
                out.append(time.perf_counter_ns() - t0)
                if reply.unmapped_bytes != WINDOW:
                    raise RuntimeError(f"UnmapDma unmapped {reply.unmapped_bytes} bytes, not {WINDOW}")
            return out

        await map_pairs(max(10, pairs // 10))  # warm-up
        real: list[int] = []
        echo: list[int] = []
        with EchoServer(ctx.paths.run_dir) as server:
            for block in range(blocks):
                if block % 2:
                    echo += await echo_rtt_ns(server.target, sizes, pairs)
                    real += await map_pairs(pairs)
                else:
                    real += await map_pairs(pairs)
                    echo += await echo_rtt_ns(server.target, sizes, pairs)
    p50, base = percentile(real, 0.5) / 1000, percentile(echo, 0.5) / 1000
    return [
        Figure(
            "map_rpc_ratio",
            p50 / base,
            unit="us",
            measured=p50,
            baseline=base,
            notes=(
                f"p50 of {len(real)} MapDma(2 MiB)+UnmapDma pairs vs {len(echo)} raw echo pairs of "
                f"{sizes[0]}+{sizes[1]} bytes; p99 {percentile(real, 0.99) / 1000:.0f} us vs "
                f"{percentile(echo, 0.99) / 1000:.0f} us",
            ),
        )
    ]


async def _hot_paths(ctx: BenchContext) -> dict[str, float]:
    """MapDmaBatch and PinPages rates from :func:`vgpusim.iommu_type2.bench.measure` (run once)."""
    cached = ctx.cache.get("iommu_hot_paths")
    if isinstance(cached, dict):
        return cached
    ctx.require("iommu_type2")
    from vgpusim.iommu_type2.bench import measure

    batches, pin_calls = ctx.pick(60, 20), ctx.pick(2_000, 500)
    ctx.say(
        f"iommu: {batches} MapDmaBatch calls of {MAP_BATCH} mappings, {pin_calls} PinPages calls of 512 pages"
    )
    result = await measure(
        ctx.paths.target("iommu_type2"),
        ctx.shm_dir,
        batch=MAP_BATCH,
        batches=batches,
        npage=512,
        pin_calls=pin_calls,
        echo="off",
    )
    ctx.cache["iommu_hot_paths"] = result
    return result


async def map_throughput(ctx: BenchContext) -> list[Figure]:
    """``map_throughput_per_s``: MapDmaBatch of :data:`MAP_BATCH` 4 KiB mappings, one call at a time."""
    r = await _hot_paths(ctx)
    return [
        Figure(
            "map_throughput_per_s",
            r["mappings_per_s"],
            unit="/s",
            notes=(
                f"{int(r['map_batch_calls'])} MapDmaBatch calls of {int(r['map_batch_size'])} 4 KiB "
                f"mappings ({int(r['map_batch_request_bytes']):,} bytes each), one in flight, "
                f"{r['map_batch_call_s'] * 1000:.1f} ms per call",
            ),
        )
    ]


async def pin_throughput(ctx: BenchContext) -> list[Figure]:
    """``pin_throughput_pages_per_s``: PinPages of 512 fresh pages, one call at a time."""
    r = await _hot_paths(ctx)
    return [
        Figure(
            "pin_throughput_pages_per_s",
            r["pinned_pages_per_s"],
            unit="pages/s",
            notes=(
                f"{int(r['pin_calls'])} PinPages calls of {int(r['npage'])} fresh pages (each unpinned "
                f"again, untimed), one in flight, {r['pin_call_s'] * 1e6:.0f} us per call",
            ),
        )
    ]
