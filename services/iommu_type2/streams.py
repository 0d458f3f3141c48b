"""The two long-lived calls of iommu_type2: ``WatchUnmap`` (a device's unmap callback) and
``KeepAlive`` (an owner's hold on its containers).

:class:`UnmapStream` is the :class:`~vgpusim.iommu_type2.core.UnmapListener` of one
``WatchUnmap`` call. The core calls :meth:`UnmapStream.notify_unmap` (from the task of the
``UnmapDma``/``DestroyContainer`` RPC that unmaps); it numbers an ``UnmapEvent``, queues it for
the stream's own task to write, and waits for the ``UnmapAck`` with that sequence, which the
stream's reader task delivers. The deadline is the core's (``notify_timeout_s``): a late ack is
ignored. Only the call's handler task writes to the call; the reader only reads. The call ends
when the client half-closes or cancels it, or when the device is detached (its registration is
gone with it): the server then ends the stream with OK.

:class:`KeepAlives` counts the open ``KeepAlive`` calls of each owner; when the last one of an
owner ends, :meth:`~vgpusim.iommu_type2.core.Mapper.destroy_owner` destroys its containers (by
force: a crashed owner leaves no mappings and no pins behind). Counting, rather than destroying
when any call ends, lets an owner reconnect before its old call is noticed as gone.

Glossary:
- sequence: the number of an event within one stream, from 1; its ack carries it back.
- outbox: the queue of messages the handler task writes; ``None`` ends the stream.
- protocol error: a client message that is neither a first ``register`` nor a later ``ack``;
  it ends the call with that ``InvalidArgument``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vgpusim.common.errors import VgpusimError
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.iommu_type2 import convert
from vgpusim.iommu_type2.core import Mapper

__all__ = ["KeepAlives", "UnmapStream"]


class UnmapStream:
    """One device's ``WatchUnmap`` call, seen by the core as its unmap listener."""

    def __init__(self) -> None:
        self._outbox: asyncio.Queue[pb.WatchUnmapResponse | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._sequence = 0
        self._closed = False
        self._error: VgpusimError | None = None

    async def notify_unmap(self, iova: int, size: int) -> None:
        """Send an ``UnmapEvent`` and return once the device acked it (or the stream ended)."""
        if self._closed:
            return  # the device's pins are dropped with its registration
        self._sequence += 1
        sequence = self._sequence
        acked = asyncio.get_running_loop().create_future()
        self._pending[sequence] = acked
        event = pb.UnmapEvent(sequence=sequence, iova=iova, size=size)
        self._outbox.put_nowait(pb.WatchUnmapResponse(event=event))
        try:
            await acked
        finally:
            del self._pending[sequence]

    def ack(self, sequence: int) -> None:
        """The device unpinned the range of event ``sequence`` (unknown or late acks are ignored)."""
        acked = self._pending.get(sequence)
        if acked is not None and not acked.done():
            acked.set_result(None)

    async def run(self, context: Any) -> None:
        """Write queued events and read acks until the client half-closes or cancels the call, or
        :meth:`close` is called (the device was detached). Raises the protocol error of a bad
        client message.
        """
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(self._read(context))
            while (message := await self._outbox.get()) is not None:
                await context.write(message)
            reader.cancel()
        if self._error is not None:
            raise self._error

    async def _read(self, context: Any) -> None:
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                self.ack(convert.watch_message_in(message))
        except VgpusimError as error:
            self._error = error
        finally:
            self._outbox.put_nowait(None)

    def close(self) -> None:
        """The registration is over: later notifications return at once, waiting ones are
        released, and :meth:`run` returns (the call ends with OK)."""
        self._closed = True
        for acked in self._pending.values():
            if not acked.done():
                acked.set_result(None)
        self._outbox.put_nowait(None)


class KeepAlives:
    """Open ``KeepAlive`` calls per owner; ``released(owner)`` runs after an owner's teardown."""

    def __init__(self, mapper: Mapper, released: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._mapper = mapper
        self._released = released
        self._open: Counter[str] = Counter()

    def count(self, owner: str) -> int:
        """The open ``KeepAlive`` calls of ``owner``."""
        return self._open[owner]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str) -> AsyncIterator[None]:
        """Hold ``owner``'s containers for the block; the last hold to end destroys them.

        The teardown runs when the block ends by cancellation (the client went away) too; it is
        only cut short if the task is cancelled again meanwhile (the server stopping).
        """
        self._open[owner] += 1
        try:
            yield
        finally:
            self._open[owner] -= 1
            if not self._open[owner]:
                del self._open[owner]
                await self._mapper.destroy_owner(owner)
                if self._released is not None:
                    await self._released(owner)
