"""Benchmark of the iommu_type2 hot paths through gRPC, next to a raw gRPC echo of the same sizes.

:func:`measure` drives a running service (``target``; its segments live in ``shm_dir``) with
sequential calls, one in flight at a time, and times:

- ``MapDmaBatch`` of ``batch`` one-page mappings per call (each batch unmapped again untimed);
- ``PinPages`` then ``UnpinPages`` of ``npage`` pages (512: ``VFIO_PIN_PAGES_MAX_ENTRIES``) per call,
  walking a mapped range, for a device registered with ``WatchUnmap``;
- a raw grpc.aio echo service, started in this process, answering requests of the same
  serialized sizes with responses of the same sizes: the floor the transport and grpc.aio set.

It returns plain numbers (seconds per call, items per second, message sizes) and asserts
nothing: the machines are shared and noisy, so timings are reported, never tested. Command line:
``python -m vgpusim.iommu_type2.bench --state-dir DIR`` (a service running there) or
``--in-process`` (a server started in this process: client and server share one CPU).

Glossary:
- call time: wall time of one awaited call, averaged over the calls of a phase.
- echo ratio: service call time / echo call time of the same message sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import uvloop

import vgpusim
from vgpusim.common.clients import open_channel
from vgpusim.common.paths import StackPaths
from vgpusim.common.rpc import SERVER_OPTIONS
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.config import IommuServiceConfig
from vgpusim.iommu_type2.server import running_iommu

__all__ = ["main", "measure"]

PAGE = 4096
_ECHO = "/vgpusim.bench.v1.Echo/Echo"
_RW = pb.Prot(read=True, write=True)
_IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(vgpusim.__file__)))
"""Where ``vgpusim`` is imported from (``src``), for the echo child process."""


def _ident(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: Any) -> bytes:
    """The answer is as many bytes as the request's first four say."""
    return bytes(int.from_bytes(request[:4], "little"))


async def _serve_echo(target: str, stop: asyncio.Event | None = None) -> None:
    """Serve the raw echo on ``target`` until ``stop`` is set (or SIGTERM, without one)."""
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_ident, response_serializer=_ident
    )
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("vgpusim.bench.v1.Echo", {"Echo": handler})]
    )
    server.add_insecure_port(target)
    await server.start()
    if stop is None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(None)


@asynccontextmanager
async def _echo_channel(where: str) -> AsyncIterator[grpc.aio.Channel]:
    """A raw echo server on a temporary UNIX socket, ``where`` = ``process`` (a child process,
    as a real service runs) or ``inline`` (a task of this loop), and a channel to it."""
    with tempfile.TemporaryDirectory(prefix="vgs-bench-") as folder:
        target = f"unix:{folder}/echo.sock"
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            if where == "process":
                group.create_task(_echo_process(target, stop))
            else:
                group.create_task(_serve_echo(target, stop))
            try:
                async with open_channel(target) as channel:
                    await channel.unary_unary(_ECHO)(bytes(4), timeout=30, wait_for_ready=True)
                    yield channel
            finally:
                stop.set()


async def _echo_process(target: str, stop: asyncio.Event) -> None:
    """Run the echo server in a child process until ``stop`` is set."""
    path = os.pathsep.join(filter(None, [_IMPORT_ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vgpusim.iommu_type2.bench", "--echo-server", target, env=env
    )
    try:
        await stop.wait()
    finally:
        child.terminate()
        await child.wait()


async def _echo_call_s(
    channel: grpc.aio.Channel, request_bytes: int, response_bytes: int, calls: int
) -> float:
    echo = channel.unary_unary(_ECHO)
    payload = response_bytes.to_bytes(4, "little") + bytes(max(0, request_bytes - 4))
    await echo(payload, timeout=10)
    start = time.perf_counter()
    for _ in range(calls):
        await echo(payload, timeout=10)
    return (time.perf_counter() - start) / calls


async def _watch(stub: pb_grpc.IommuType2ServiceStub, cid: str, device: str) -> Any:
    call = stub.WatchUnmap()
    register = pb.UnmapRegistration(container_id=cid, device=device)
    await call.write(pb.WatchUnmapRequest(register=register))
    await call.read()
    return call


async def measure(
    target: str,
    shm_dir: str | os.PathLike[str],
    *,
    batch: int = 1000,
    batches: int = 20,
    npage: int = 512,
    pin_calls: int = 500,
    echo: str = "process",
) -> dict[str, float]:
    """Time MapDmaBatch and PinPages/UnpinPages against the service at ``target`` (see module doc).

    Creates (and removes) a segment ``bench-<pid>`` in ``shm_dir`` and a container owned by
    ``bench-<pid>``. Returns seconds per call, mappings/pages per second, the message sizes and
    the echo call times of the same sizes; ``echo`` is where the echo server runs: ``process``
    (a child process, to compare with a service in its own process), ``inline`` (this event
    loop, to compare with a server started in this process) or ``off``.
    """
    name = f"bench-{os.getpid()}"
    window = 16 * npage  # pages the pin phase walks over
    size = max(batch, window) * PAGE
    out: dict[str, float] = {"map_batch_size": batch, "map_batch_calls": batches, "npage": npage}
    async with AsyncExitStack() as stack:
        segment = Segment.create(shm_dir, name, size)
        stack.callback(segment.unlink, missing_ok=True)
        stack.callback(segment.close)
        channel = await stack.enter_async_context(open_channel(target))
        stub = pb_grpc.IommuType2ServiceStub(channel)
        created = await stub.CreateContainer(
            pb.CreateContainerRequest(owner=name, mode=pb.IOMMU_MODE_EMULATED), timeout=10
        )
        cid = created.container_id
        stack.push_async_callback(_destroy, stub, cid)
        await stub.RegisterSegment(
            pb.RegisterSegmentRequest(container_id=cid, segment=name, size=size), timeout=10
        )

        mappings = [
            pb.DmaMapping(iova=i * PAGE, size=PAGE, segment=name, offset=i * PAGE, prot=_RW)
            for i in range(batch)
        ]
        map_request = pb.MapDmaBatchRequest(container_id=cid, mappings=mappings)
        unmap_all = pb.UnmapDmaRequest(container_id=cid, all=pb.UnmapAll())
        elapsed = 0.0
        for _ in range(batches):
            start = time.perf_counter()
            await stub.MapDmaBatch(map_request, timeout=60)
            elapsed += time.perf_counter() - start
            await stub.UnmapDma(unmap_all, timeout=60)
        out["map_batch_call_s"] = elapsed / batches
        out["mappings_per_s"] = batch * batches / elapsed
        out["map_batch_request_bytes"] = map_request.ByteSize()

        mapping = pb.DmaMapping(iova=0, size=window * PAGE, segment=name, offset=0, prot=_RW)
        await stub.MapDma(pb.MapDmaRequest(container_id=cid, mapping=mapping), timeout=10)
        await stub.AttachDevice(pb.AttachDeviceRequest(container_id=cid, device=name), timeout=10)
        watch = await _watch(stub, cid, name)
        stack.callback(watch.cancel)
        pin = pb.PinPagesRequest(container_id=cid, device=name, npage=npage, prot=_RW)
        unpin = pb.UnpinPagesRequest(container_id=cid, device=name, npage=npage)
        pin_s = unpin_s = 0.0
        reply = pb.PinPagesResponse()
        for i in range(pin_calls):
            pin.iova = unpin.iova = (i % (window // npage)) * npage * PAGE
            start = time.perf_counter()
            reply = await stub.PinPages(pin, timeout=10)
            middle = time.perf_counter()
            await stub.UnpinPages(unpin, timeout=10)
            pin_s += middle - start
            unpin_s += time.perf_counter() - middle
        out["pin_calls"] = pin_calls
        out["pin_call_s"] = pin_s / pin_calls
        out["unpin_call_s"] = unpin_s / pin_calls
        out["pinned_pages_per_s"] = npage * pin_calls / pin_s
        out["unpinned_pages_per_s"] = npage * pin_calls / unpin_s
        out["pin_request_bytes"] = pin.ByteSize()
        out["pin_response_bytes"] = reply.ByteSize()

    if echo != "off":
        async with _echo_channel(echo) as echo_channel:
            out["echo_map_batch_call_s"] = await _echo_call_s(
                echo_channel, int(out["map_batch_request_bytes"]), 2, batches
            )
            out["echo_pin_call_s"] = await _echo_call_s(
                echo_channel, int(out["pin_request_bytes"]), int(out["pin_response_bytes"]), pin_calls
            )
        out["map_batch_echo_ratio"] = out["map_batch_call_s"] / out["echo_map_batch_call_s"]
        out["pin_echo_ratio"] = out["pin_call_s"] / out["echo_pin_call_s"]
    return out


async def _destroy(stub: pb_grpc.IommuType2ServiceStub, cid: str) -> None:
    await stub.DestroyContainer(pb.DestroyContainerRequest(container_id=cid), timeout=30)


async def _in_process(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vgs-bench-") as state:
        config = IommuServiceConfig(state_dir=Path(state), log_format="text", metrics_port=-1)
        try:
            async with running_iommu(config) as (_, handle):
                return await _run(args, handle.target, config.paths.shm_dir, echo="inline")
        finally:
            config.paths.remove_shm_dir()


async def _run(
    args: argparse.Namespace, target: str, shm_dir: Path, *, echo: str = "process"
) -> dict[str, float]:
    return await measure(
        target,
        shm_dir,
        batch=args.batch,
        batches=args.batches,
        npage=args.npage,
        pin_calls=args.pin_calls,
        echo=echo,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`measure`'s numbers as JSON."""
    parser = argparse.ArgumentParser(prog="python -m vgpusim.iommu_type2.bench", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", help="state dir of a running stack (its iommu_type2 socket)")
    where.add_argument("--in-process", action="store_true", help="start a server in this process")
    where.add_argument("--echo-server", metavar="TARGET", help=argparse.SUPPRESS)  # the echo child
    parser.add_argument("--batch", type=int, default=1000, help="mappings per MapDmaBatch call")
    parser.add_argument("--batches", type=int, default=20, help="MapDmaBatch calls")
    parser.add_argument("--npage", type=int, default=512, help="pages per PinPages/UnpinPages call")
    parser.add_argument("--pin-calls", type=int, default=500, help="PinPages (and UnpinPages) calls")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.echo_server:
            runner.run(_serve_echo(args.echo_server))
            return 0
        if args.in_process:
            result = runner.run(_in_process(args))
        else:
            paths = StackPaths.from_state_dir(args.state_dir)
            result = runner.run(_run(args, paths.target("iommu_type2"), paths.shm_dir))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
