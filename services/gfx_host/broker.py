"""The channel broker: hands an opened vGPU's shared-memory channel to the frontend that opened it.

``OpenInstance`` returns the broker's socket path and a one-time token.  The frontend connects,
sends the token in a hand-over frame, and receives the channel description with its eventfds
(``SCM_RIGHTS``).  The connection then stays open, silent, as each side's peer watch: when the
frontend dies, gfx_host's trap thread wakes with ``PeerGone`` instead of sleeping forever.

Glossary:
- token: 128 random bits, valid once, for :data:`TOKEN_TTL_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.errors import PermissionDenied, VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.channel import ChannelEnd
from vgpusim.common.shm.handover import recv_fds_async, send_fds_async

_log = get_logger("vgpusim.gfx_host.broker")
TOKEN_TTL_S = 60.0
HANDOVER_TIMEOUT_S = 5.0


@dataclass
class _Offer:
    end: ChannelEnd
    expires: float


class ChannelBroker:
    """A UNIX-socket server giving each token's channel to the first client presenting it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offers: dict[str, _Offer] = {}
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._accept(), name="channel-broker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._clients):
            task.cancel()
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def offer(self, end: ChannelEnd) -> str:
        """Register ``end`` for hand-over; the token to give the opener."""
        now = time.monotonic()
        for token in [t for t, o in self._offers.items() if o.expires < now]:
            del self._offers[token]
        token = secrets.token_hex(16)
        self._offers[token] = _Offer(end, now + TOKEN_TTL_S)
        return token

    def withdraw(self, end: ChannelEnd) -> None:
        for token in [t for t, o in self._offers.items() if o.end is end]:
            del self._offers[token]

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            task = loop.create_task(self._serve(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            payload, fds = await recv_fds_async(conn, 0, timeout=HANDOVER_TIMEOUT_S)
            for fd in fds:
                os.close(fd)
            offer = self._offers.pop(payload.decode(errors="replace"), None)
            if offer is None or offer.expires < time.monotonic():
                raise PermissionDenied("unknown or expired channel token", reason="BAD_CHANNEL_TOKEN")
            data, channel_fds = offer.end.export()
            await send_fds_async(conn, data, channel_fds, timeout=HANDOVER_TIMEOUT_S)
            offer.end.watch_peer(conn)
            _log.info("channel handed over", extra={"channel": offer.end.name})
        except (VgpusimError, OSError) as exc:
            _log.warning("channel hand-over failed: %s", exc)
            conn.close()
