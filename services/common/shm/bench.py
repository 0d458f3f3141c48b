"""Measurements of the shared-memory fast path, for a benchmark harness (no assertions).

:func:`measure_roundtrip` starts a peer process (``python -m vgpusim.common.shm.bench --peer``),
hands it a channel (or raw eventfds) through a UNIX socket exactly as the gfx_host broker does,
and measures: ping-pong round trips over a channel (adaptive spin, then no spin) and over two
bare eventfds (the floor the kernel sets), unpinned (the scheduler tends to put both processes on
one vCPU) and pinned to two vCPUs (the cross-vCPU wake-up regime), plus the throughput of 1 MiB
chunks through a ring.

Glossary:
- round trip: parent puts 16 bytes in ``ping``, the peer echoes them into ``pong``, the parent
  has them back; timed per iteration with ``perf_counter_ns`` after a warm-up.
- copy throughput: bytes per second of 1 MiB payloads the peer copies out with ``recv_into``
  (one copy in, one copy out), measured from the first put to the peer's final acknowledgement.

| result key | unit | what |
|---|---|---|
| ``channel_rtt_us`` | us | ``{p50, p90, p99, mean}`` over a channel, both sides spinning up to ``spin_us`` |
| ``channel_nospin_rtt_us`` | us | same with ``spin_us=0`` (block on the eventfd at once) |
| ``eventfd_rtt_us`` | us | blocking ``eventfd_read``/``eventfd_write`` ping-pong, no ring |
| ``cross_vcpu`` | | the three round trips again, parent and peer pinned to two different vCPUs |
| ``ring_copy_1mib`` | | ``{chunks, seconds, gb_per_s}`` (GB = 1e9 bytes) |

Run ``python -m vgpusim.common.shm.bench [n]`` to print the results as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from .channel import ChannelSpec, RingSpec, Side, attach_channel, create_channel
from .handover import recv_fds, send_fds
from .notify import DEFAULT_SPIN_US

__all__ = ["measure_roundtrip"]

_MODULE = "vgpusim.common.shm.bench"
_TIMEOUT = 10.0
_CHUNK = 1 << 20
_STOP = 1 << 20  # eventfd value that tells the raw peer to stop
_PINGPONG = ChannelSpec((RingSpec("ping", 64, 64, Side.OWNER), RingSpec("pong", 64, 64, Side.PEER)))
_COPY = ChannelSpec((RingSpec("data", 8, _CHUNK + 8, Side.OWNER), RingSpec("ack", 4, 64, Side.PEER)))


def _summary(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] / 1000, 2)

    return {
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "mean": round(statistics.fmean(s) / 1000, 2),
    }


@contextmanager
def _peer(directory: str, mode: str, spin_us: float, cpus: tuple[int, int] | None) -> Iterator[socket.socket]:
    """Start the peer process; yield the accepted connection; reap (or kill) the peer after."""
    path = os.path.join(directory, "bench.sock")
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(0.05)
        peer_cpu = -1 if cpus is None else cpus[1]
        cmd = [sys.executable, "-m", _MODULE, "--peer", mode, path, directory, str(spin_us), str(peer_cpu)]
        proc = subprocess.Popen(cmd)
        if cpus is not None:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {cpus[0]})
            stack.callback(os.sched_setaffinity, 0, saved)
        try:
            deadline = time.monotonic() + _TIMEOUT
            while True:  # accept, but notice a peer that failed to start
                try:
                    conn, _ = listener.accept()
                    break
                except TimeoutError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"bench peer did not connect (exit status {proc.poll()})"
                        ) from None
            conn.settimeout(None)
            yield conn
            proc.wait(_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.unlink(path)


def _channel_rtt(directory: str, n: int, spin_us: float, cpus: tuple[int, int] | None) -> dict[str, float]:
    with _peer(directory, "echo", spin_us, cpus) as conn:
        end = create_channel(directory, "bench-pingpong", _PINGPONG, spin_us=spin_us)
        with end:
            payload, fds = end.export()
            send_fds(conn, payload, fds, timeout=_TIMEOUT)
            end.watch_peer(conn)
            tx, rx = end.sender("ping"), end.receiver("pong")
            msg, samples = b"0123456789abcdef", []
            for i in range(n + n // 10):
                t0 = time.perf_counter_ns()
                tx.send_nowait(msg)
                rx.recv(timeout=_TIMEOUT)
                if i >= n // 10:
                    samples.append(time.perf_counter_ns() - t0)
            tx.send_nowait(b"")
    return _summary(samples)


def _eventfd_rtt(directory: str, n: int, cpus: tuple[int, int] | None) -> dict[str, float]:
    with _peer(directory, "eventfd", 0.0, cpus) as conn:
        ping, pong = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
        try:
            send_fds(conn, b"eventfd", [ping, pong], timeout=_TIMEOUT)
            samples = []
            for i in range(n + n // 10):
                t0 = time.perf_counter_ns()
                os.eventfd_write(ping, 1)
                os.eventfd_read(pong)
                if i >= n // 10:
                    samples.append(time.perf_counter_ns() - t0)
            os.eventfd_write(ping, _STOP)
        finally:
            os.close(ping)
            os.close(pong)
        conn.close()
    return _summary(samples)


def _copy_throughput(directory: str, chunks: int, spin_us: float) -> dict[str, float]:
    with _peer(directory, "sink", spin_us, None) as conn:
        end = create_channel(directory, "bench-copy", _COPY, spin_us=spin_us)
        with end:
            payload, fds = end.export()
            send_fds(conn, payload, fds, timeout=_TIMEOUT)
            end.watch_peer(conn)
            tx, data = end.sender("data"), os.urandom(_CHUNK)
            t0 = time.perf_counter()
            for _ in range(chunks):
                tx.send(data, timeout=_TIMEOUT)
            tx.send(b"", timeout=_TIMEOUT)
            received = int(end.receiver("ack").recv(timeout=_TIMEOUT))
            seconds = time.perf_counter() - t0
    if received != chunks * _CHUNK:
        raise RuntimeError(f"the sink received {received} bytes, not {chunks * _CHUNK}")
    return {"chunks": chunks, "seconds": round(seconds, 4), "gb_per_s": round(received / seconds / 1e9, 2)}


def measure_roundtrip(
    n: int = 10_000, *, spin_us: float = DEFAULT_SPIN_US, copy_chunks: int = 512
) -> dict[str, object]:
    """Measure channel vs raw eventfd round trips (``n`` each) and 1 MiB ring copy throughput.

    Uses a private directory under ``/dev/shm`` (removed afterwards) and a peer process.
    Return: the dict described in the module docstring, plus ``n``, ``spin_us``, ``cpus``.
    """
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = tempfile.mkdtemp(prefix="vgpusim-bench-", dir=base)
    allowed = sorted(os.sched_getaffinity(0))
    try:
        result: dict[str, object] = {
            "n": n,
            "spin_us": spin_us,
            "cpus": len(allowed),
            "channel_rtt_us": _channel_rtt(directory, n, spin_us, None),
            "channel_nospin_rtt_us": _channel_rtt(directory, n, 0.0, None),
            "eventfd_rtt_us": _eventfd_rtt(directory, n, None),
        }
        if len(allowed) >= 2:
            apart = (allowed[0], allowed[1])
            result["cross_vcpu"] = {
                "channel_rtt_us": _channel_rtt(directory, n, spin_us, apart),
                "channel_nospin_rtt_us": _channel_rtt(directory, n, 0.0, apart),
                "eventfd_rtt_us": _eventfd_rtt(directory, n, apart),
            }
        result["ring_copy_1mib"] = _copy_throughput(directory, copy_chunks, spin_us)
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run_peer(mode: str, path: str, directory: str, spin_us: float, cpu: int) -> None:
    """The peer process: connect, receive the hand-over, serve ``mode`` until told to stop."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        payload, fds = recv_fds(sock, timeout=_TIMEOUT)
        if mode == "eventfd":
            ping, pong = fds
            while os.eventfd_read(ping) < _STOP:
                os.eventfd_write(pong, 1)
            os.close(ping)
            os.close(pong)
            return
        with attach_channel(directory, payload, fds, peer=sock.dup(), spin_us=spin_us) as end:
            if mode == "echo":
                rx, tx = end.receiver("ping"), end.sender("pong")
                while msg := rx.recv(timeout=_TIMEOUT):
                    tx.send_nowait(msg)
            else:
                rx, buf, total = end.receiver("data"), bytearray(_CHUNK + 8), 0
                while n := rx.recv_into(buf, timeout=_TIMEOUT):
                    total += n
                end.sender("ack").send(str(total).encode(), timeout=_TIMEOUT)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--peer"]:
        _run_peer(argv[1], argv[2], argv[3], float(argv[4]), int(argv[5]))
    else:
        print(json.dumps(measure_roundtrip(int(argv[0]) if argv else 10_000), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
