"""The baselines of ``vgpusim bench``, measured in the same run as the figures they divide.

- :func:`eventfd_rtt_ns`: the raw cross-process round trip through two eventfds (write, the peer
  reads and writes back, read), the floor of any doorbell -> interrupt or trap -> reply path.
  Pinned to two different vCPUs (``cpus``) it is the cross-vCPU wake-up regime (~50 us on the
  reference machines); unpinned the scheduler mostly puts both on one vCPU (~7-10 us).
- :class:`EchoServer` + :func:`echo_rtt_ns`: a bare ``grpc.aio`` server (uvloop, the project's
  server options, no interceptor, no protobuf: identity (de)serializers) in its own process on a
  UNIX socket, and unary echo round trips of a payload of a given size from this process: the
  floor of a control RPC of that size.

The DMA figure's baseline, a raw copy between the very bytes the engine copies, lives beside the
engine measurement in :mod:`.bench_dma`.

Run ``python -m vgpusim.cli.bench_baselines echo-server SOCKET`` to serve the echo (the bench
starts it itself); it prints ``ready`` once listening and stops on SIGTERM.

Glossary:
- RTT: round trip time, in nanoseconds from ``time.perf_counter_ns``.
- warm-up: the first tenth of the samples, dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "EchoServer",
    "echo_rtt_ns",
    "eventfd_rtt_ns",
    "percentile",
    "two_cpus",
]

_STOP = 1 << 20  # an eventfd value that tells the peer to stop
_PEER_SCRIPT = (
    "import os, sys\n"
    "r, w, cpu = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "if cpu >= 0:\n"
    "    os.sched_setaffinity(0, {cpu})\n"
    f"while os.eventfd_read(r) < {_STOP}:\n"
    "    os.eventfd_write(w, 1)\n"
)
_ECHO_SERVICE = "vgpusim.bench.v1.EchoService"
ECHO_METHOD = f"/{_ECHO_SERVICE}/Echo"
_START_TIMEOUT_S = 20.0


def percentile(samples: list[float] | list[int], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by the nearest-rank method."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))])


def two_cpus() -> tuple[int, int] | None:
    """Two distinct CPUs this process may run on, or None on a single-CPU machine."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def eventfd_rtt_ns(n: int, *, cpus: tuple[int, int] | None = None) -> list[int]:
    """``n`` raw eventfd round trips with a peer process (after ``n // 10`` dropped), in ns.

    ``cpus``: pin this thread to the first and the peer to the second for the measurement (the
    cross-vCPU regime); None leaves both to the scheduler.
    """
    if n < 1:
        raise ValueError("n must be positive")
    ping, pong = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    peer_cpu = -1 if cpus is None else cpus[1]
    peer = subprocess.Popen(
        [sys.executable, "-S", "-c", _PEER_SCRIPT, str(ping), str(pong), str(peer_cpu)],
        pass_fds=(ping, pong),
    )
    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    samples: list[int] = []
    try:
        warm = n // 10
        for i in range(n + warm):
            t0 = time.perf_counter_ns()
            os.eventfd_write(ping, 1)
            os.eventfd_read(pong)
            if i >= warm:
                samples.append(time.perf_counter_ns() - t0)
        os.eventfd_write(ping, _STOP)
        peer.wait(timeout=_START_TIMEOUT_S)
    finally:
        os.sched_setaffinity(0, saved)
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        os.close(ping)
        os.close(pong)
    return samples


class EchoServer:
    """The raw gRPC echo in its own process, on a UNIX socket in ``directory``.

    Use as ``with EchoServer(dir) as server: await echo_rtt_ns(server.target, ...)``.
    """

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "bench-echo.sock"
        self.target = f"unix:{self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EchoServer:
        argv = [sys.executable, "-m", "vgpusim.cli.bench_baselines", "echo-server", str(self.socket)]
        self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening (or has died)
        if line.strip() != b"ready":
            self.__exit__(None, None, None)
            raise RuntimeError(f"the gRPC echo server did not start (exit status {proc.poll()})")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def echo_callable(channel: Any) -> Any:
    """The unary Echo method on ``channel`` (bytes in, bytes out)."""

    def ident(data: bytes) -> bytes:
        return data

    return channel.unary_unary(ECHO_METHOD, request_serializer=ident, response_deserializer=ident)


async def echo_rtt_ns(target: str, sizes: tuple[int, ...], n: int) -> list[int]:
    """``n`` rounds of one echo per payload size in ``sizes`` (a round is timed as a whole), in ns."""
    import grpc

    from vgpusim.common.rpc import CHANNEL_OPTIONS

    payloads = [os.urandom(size) for size in sizes]
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        echo = echo_callable(channel)
        samples: list[int] = []
        warm = max(1, n // 10)
        for i in range(n + warm):
            t0 = time.perf_counter_ns()
            for payload in payloads:
                await echo(payload, timeout=10.0)
            if i >= warm:
                samples.append(time.perf_counter_ns() - t0)
    return samples


async def _serve_echo(socket_path: str) -> None:
    import grpc

    from vgpusim.common.rpc import SERVER_OPTIONS

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    def ident(data: bytes) -> bytes:
        return data

    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=ident, response_serializer=ident)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(_ECHO_SERVICE, {"Echo": handler})])
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str]) -> int:
    """``echo-server SOCKET``: serve the raw echo until SIGTERM."""
    if len(argv) != 2 or argv[0] != "echo-server":
        print("usage: python -m vgpusim.cli.bench_baselines echo-server SOCKET", file=sys.stderr)
        return 2
    import uvloop

    uvloop.run(_serve_echo(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
