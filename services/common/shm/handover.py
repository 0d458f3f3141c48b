"""Hand-over of a payload plus file descriptors over an ``AF_UNIX`` stream socket (``SCM_RIGHTS``).

``gfx_host``'s channel broker accepts a connection from ``qemu_frontend``, checks its token and
sends it one frame: the channel's description (segment name, ring names) and its eventfds.  The
connection then stays open, silent, as the :class:`~.notify.PeerWatch` of both sides.  This module
is the framing: one frame = a 12-byte header, then the payload; the descriptors travel as
``SCM_RIGHTS`` ancillary data on the frame's first bytes (the kernel delivers them with the first
read of those bytes, so a short first read still receives them all; they arrive close-on-exec).

Glossary:
- frame: header + payload, sent with one ``sendmsg`` (a short send is completed with ``send``).
- descriptor passing: the kernel installs a duplicate of each sent fd in the receiver; the
  sender keeps its own and still closes it itself.

Frame (little endian, version 1):

| offset | size | field |
|---|---|---|
| 0 | 4 | magic ``0x44464856`` (bytes ``VHFD``) |
| 4 | 2 | version (1) |
| 6 | 2 | descriptor count (0..``MAX_FDS``), must equal the count received |
| 8 | 4 | payload length (0..``MAX_PAYLOAD``) |
| 12 | length | payload |

Both directions accept blocking and non-blocking sockets: every operation is tried with
``MSG_DONTWAIT`` and the helpers wait for readiness themselves (``poll`` in :func:`send_fds`/
:func:`recv_fds`, the running loop in the ``*_async`` twins), bounded by ``timeout``.  On any error
the received descriptors are closed and the connection is out of sync: close it.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import select
import socket
import struct
import time
from collections.abc import Generator, Sequence

from vgpusim.common.errors import InvalidArgument, TimedOut, TooBig

from .errors import PEER_CLOSED, PeerGone

__all__ = ["MAX_FDS", "MAX_PAYLOAD", "recv_fds", "recv_fds_async", "send_fds", "send_fds_async"]

MAGIC = 0x44464856
VERSION = 1
MAX_FDS = 64
MAX_PAYLOAD = 64 << 10
_HDR = struct.Struct("<IHHI")
# Python 3.11's socket.send_fds/recv_fds drop their ``flags``: use sendmsg/recvmsg directly so that
# MSG_DONTWAIT holds and received descriptors are close-on-exec (MSG_CMSG_CLOEXEC).
_RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC

# A step generator yields the poll event it needs (POLLIN/POLLOUT) and returns its result.
_Steps = Generator[int, None, "tuple[bytes, list[int]] | None"]


def _check_sock(sock: socket.socket) -> socket.socket:
    if sock.family != socket.AF_UNIX:
        raise InvalidArgument("descriptors can only be handed over an AF_UNIX socket")
    return sock


def _check_out(payload: bytes, fds: Sequence[int]) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise TooBig(f"hand-over payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if len(fds) > MAX_FDS:
        raise TooBig(f"cannot hand over {len(fds)} descriptors (at most {MAX_FDS})")
    return _HDR.pack(MAGIC, VERSION, len(fds), len(payload)) + payload


def _send_steps(sock: socket.socket, frame: bytes, fds: Sequence[int]) -> _Steps:
    sent = 0
    try:
        while True:
            try:
                sent = sock.sendmsg([frame], [_rights(fds)], socket.MSG_DONTWAIT)
                break
            except BlockingIOError:
                yield select.POLLOUT
        view = memoryview(frame)[sent:]
        while view:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                yield select.POLLOUT
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerGone("the peer closed the hand-over connection", reason=PEER_CLOSED) from exc
    return None


def _recv_exact(sock: socket.socket, n: int, acc: bytes) -> Generator[int, None, bytes]:
    buf = bytearray(acc)
    while len(buf) < n:
        try:
            data = sock.recv(n - len(buf), socket.MSG_DONTWAIT)
        except BlockingIOError:
            yield select.POLLIN
            continue
        if not data:
            raise PeerGone("the peer closed the connection in the middle of a frame", reason=PEER_CLOSED)
        buf += data
    return bytes(buf)


def _recv_steps(sock: socket.socket, maxfds: int) -> _Steps:
    fds: list[int] = []
    try:
        while True:
            try:
                msg, anc, flags, _ = sock.recvmsg(_HDR.size, _anc_space(maxfds), _RECV_FLAGS)
                break
            except BlockingIOError:
                yield select.POLLIN
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        if flags & socket.MSG_CTRUNC:
            raise TooBig(f"the peer sent more than {maxfds} descriptors", reason="TOO_MANY_FDS")
        if not msg:
            raise PeerGone("the peer closed the hand-over connection", reason=PEER_CLOSED)
        header = yield from _recv_exact(sock, _HDR.size, msg)
        magic, version, nfds, length = _HDR.unpack(header)
        if magic != MAGIC or version != VERSION:
            raise InvalidArgument(f"bad hand-over frame (magic {magic:#x}, version {version})")
        if nfds != len(fds):
            raise InvalidArgument(f"frame announces {nfds} descriptors, {len(fds)} arrived")
        if length > MAX_PAYLOAD:
            raise TooBig(f"hand-over payload of {length} bytes exceeds {MAX_PAYLOAD}")
        payload = yield from _recv_exact(sock, length, b"")
        return payload, fds
    except (ConnectionResetError, BrokenPipeError) as exc:
        _close_all(fds)
        raise PeerGone("the peer reset the hand-over connection", reason=PEER_CLOSED) from exc
    except BaseException:
        _close_all(fds)
        raise


def _rights(fds: Sequence[int]) -> tuple[int, int, array.array[int]]:
    return socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)


def _anc_space(maxfds: int) -> int:
    return socket.CMSG_SPACE(maxfds * 4)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


def _run(steps: _Steps, sock: socket.socket, timeout: float | None) -> tuple[bytes, list[int]] | None:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        event = next(steps)
        while True:
            poller = select.poll()
            poller.register(sock.fileno(), event)
            wait_ms = None if deadline is None else math.ceil(max(0.0, deadline - time.monotonic()) * 1000)
            if not poller.poll(wait_ms) and deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(f"hand-over did not complete within {timeout} s", reason="HANDOVER_TIMED_OUT")
            event = steps.send(None)
    except StopIteration as stop:
        result: tuple[bytes, list[int]] | None = stop.value
        return result
    except TimeoutError as exc:  # a socket with its own timeout
        raise TimedOut("hand-over socket timed out", reason="HANDOVER_TIMED_OUT") from exc
    finally:
        steps.close()


async def _run_async(
    steps: _Steps, sock: socket.socket, timeout: float | None
) -> tuple[bytes, list[int]] | None:
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    try:
        async with asyncio.timeout(timeout):
            try:
                event = next(steps)
                while True:
                    ready = loop.create_future()

                    def wake(f: asyncio.Future[None] = ready) -> None:
                        if not f.done():
                            f.set_result(None)

                    if event == select.POLLIN:
                        loop.add_reader(fd, wake)
                    else:
                        loop.add_writer(fd, wake)
                    try:
                        await ready
                    finally:
                        if event == select.POLLIN:
                            loop.remove_reader(fd)
                        else:
                            loop.remove_writer(fd)
                    event = steps.send(None)
            except StopIteration as stop:
                result: tuple[bytes, list[int]] | None = stop.value
                return result
    except TimeoutError as exc:
        raise TimedOut(f"hand-over did not complete within {timeout} s", reason="HANDOVER_TIMED_OUT") from exc
    finally:
        steps.close()


def send_fds(sock: socket.socket, payload: bytes, fds: Sequence[int], *, timeout: float | None) -> None:
    """Send one frame: ``payload`` plus duplicates of ``fds`` (which stay ours to close).

    Errors: ``TooBig`` (payload > ``MAX_PAYLOAD``, more than ``MAX_FDS``), ``PeerGone``, ``TimedOut``.
    """
    _run(_send_steps(_check_sock(sock), _check_out(payload, fds), fds), sock, timeout)


def recv_fds(sock: socket.socket, maxfds: int = MAX_FDS, *, timeout: float | None) -> tuple[bytes, list[int]]:
    """Receive one frame; return its payload and the descriptors (now the caller's to close).

    Errors: ``PeerGone`` (EOF, reset), ``TimedOut``, ``InvalidArgument`` (bad frame, descriptor
    count mismatch), ``TooBig`` (more than ``maxfds`` descriptors, oversized payload).
    """
    result = _run(_recv_steps(_check_sock(sock), maxfds), sock, timeout)
    assert result is not None
    return result


async def send_fds_async(
    sock: socket.socket, payload: bytes, fds: Sequence[int], *, timeout: float | None
) -> None:
    """:func:`send_fds` on the running loop (the socket may be non-blocking)."""
    await _run_async(_send_steps(_check_sock(sock), _check_out(payload, fds), fds), sock, timeout)


async def recv_fds_async(
    sock: socket.socket, maxfds: int = MAX_FDS, *, timeout: float | None
) -> tuple[bytes, list[int]]:
    """:func:`recv_fds` on the running loop (the socket may be non-blocking)."""
    result = await _run_async(_recv_steps(_check_sock(sock), maxfds), sock, timeout)
    assert result is not None
    return result
