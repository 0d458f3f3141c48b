"""Attaching a vGPU to a VM: open it on the bus, fetch its channel, describe it, wire its interrupts.

What QEMU's vfio-pci realize does for an mdev, in order (each step undone in reverse, by one
``AsyncExitStack``, on failure and on detach):

1. ``vgpu_bus.OpenDevice(uuid, owner, container)``: the vendor attaches the vGPU to the VM's
   container and answers with its fast-path channel (broker socket + token);  undo: ``CloseDevice``;
2. ``gfx_host.DescribeDevice``: flags, regions and IRQ indices (VFIO GET_INFO/REGION_INFO);
3. connect to the broker, present the token, receive the channel (segment name + eventfds) and
   attach it: the :class:`~vgpusim.common.fastpath.GuestPort` (register traps, interrupt records);
   undo: close the channel;
4. start the :class:`~.irqpath.IrqDispatcher` thread and bind MSI for the guest
   (``SET_IRQS DATA_EVENTFD|ACTION_TRIGGER`` on the MSI index, as QEMU does when the guest enables
   MSI); undo: end the WatchInterrupts streams, wait for in-flight region accesses, stop the thread.

Glossary:
- user: an in-flight region access or reset of an outside client (:meth:`AttachedDevice.use`);
  detach waits for users, so a channel is never closed under a running access.
- doorbell: a guest write of a ring tail register (device ABI: ``RING_TAIL`` = engine base + 0x14
  for the RCS, VCS and BCS blocks at 0x02000, 0x12000 and 0x22000 of BAR0).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from vgpusim.common.errors import NotFound, Unavailable, VgpusimError
from vgpusim.common.fastpath import GuestPort
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.channel import ChannelEnd, attach_channel
from vgpusim.common.shm.handover import recv_fds_async, send_fds_async
from vgpusim.qemu_frontend.clients import BusPeer, ChannelTicket, GfxPeer
from vgpusim.qemu_frontend.core.irqs import ACTION_TRIGGER, DATA_EVENTFD, IRQ_MSI, IrqController
from vgpusim.qemu_frontend.core.regions import DeviceDescription, MmioPort
from vgpusim.qemu_frontend.irqpath import InterruptStream, IrqDispatcher, IrqLatch
from vgpusim.qemu_frontend.metrics import FrontendMetrics

__all__ = ["DOORBELL_OFFSETS", "AttachedDevice", "CountingPort", "attach_device", "connect_channel"]

_log = get_logger("vgpusim.qemu_frontend.devices")
REGION_BAR0 = 0
DOORBELL_OFFSETS: frozenset[int] = frozenset({0x02014, 0x12014, 0x22014})
# every (offset, size) of a BAR0 access whose bytes include a ring tail register's first byte
_DOORBELL_ACCESSES: frozenset[tuple[int, int]] = frozenset(
    (offset, size)
    for tail in DOORBELL_OFFSETS
    for size in (1, 2, 4, 8)
    for offset in range(tail - size + 1, tail + 1)
)


class CountingPort:
    """An :class:`MmioPort` that counts traps and doorbells on their way to the device."""

    def __init__(self, port: MmioPort, metrics: FrontendMetrics) -> None:
        self._port = port
        self._reads = metrics.trap_reads
        self._writes = metrics.trap_writes
        self._doorbells = metrics.doorbells

    def read(self, region: int, offset: int, size: int) -> int:
        self._reads.inc()
        return self._port.read(region, offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self._writes.inc()
        if region == REGION_BAR0 and (offset, size) in _DOORBELL_ACCESSES:
            self._doorbells.inc()
        self._port.write(region, offset, size, value)


async def connect_channel(
    ticket: ChannelTicket, shm_dir: Path, *, timeout: float
) -> tuple[ChannelEnd, socket.socket]:
    """Fetch an opened device's channel from its broker; the channel and the kept connection.

    Errors: Unavailable (``CHANNEL_BROKER_UNAVAILABLE``: cannot connect, or the broker hung up,
    e.g. on a bad token), TimedOut, and the channel's own errors (``InvalidArgument``, ``NotFound``).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, ticket.broker)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot reach the channel broker {ticket.broker}: {exc}",
                reason="CHANNEL_BROKER_UNAVAILABLE",
                metadata={"broker": ticket.broker},
            ) from None
        await send_fds_async(sock, ticket.token.encode(), [], timeout=timeout)
        payload, fds = await recv_fds_async(sock, timeout=timeout)
    except BaseException:
        sock.close()
        raise
    return attach_channel(shm_dir, payload, fds, peer=sock), sock


class AttachedDevice:
    """An attached vGPU: its port, description, interrupt state and consumers."""

    def __init__(
        self,
        uuid: str,
        end: ChannelEnd,
        sock: socket.socket,
        description: DeviceDescription,
        metrics: FrontendMetrics,
        *,
        queue_size: int,
        on_lost: Callable[[str], None],
    ) -> None:
        self.uuid = uuid
        self.description = description
        self.channel = GuestPort(end)
        self.port = CountingPort(self.channel, metrics)
        self.irqs = IrqController()
        self.guest_irqs = IrqLatch()
        self.irqs.add_sink(self.guest_irqs.deliver)
        self._metrics = metrics
        self._queue_size = queue_size
        self._streams: set[InterruptStream] = set()
        self._users = 0
        self._idle = asyncio.Condition()
        self.closing = False
        self.lost_reason = ""
        self.dispatcher = IrqDispatcher(
            self.channel, sock, self.irqs, metrics, name=f"irq-{uuid[:8]}", on_lost=on_lost
        )
        self.guest_irqs.use_poll(self.dispatcher.poll_for_guest)  # the guest's interrupt fast path

    def _not_attached(self) -> NotFound:
        return NotFound(
            f"vGPU {self.uuid} is being detached", reason="NOT_ATTACHED", metadata={"uuid": self.uuid}
        )

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[AttachedDevice]:
        """Hold the device attached during one outside access (NotFound ``NOT_ATTACHED`` if leaving)."""
        if self.closing:
            raise self._not_attached()
        self._users += 1
        try:
            yield self
        finally:
            self._users -= 1
            async with self._idle:
                self._idle.notify_all()

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[InterruptStream]:
        """A WatchInterrupts subscription for the duration of the block."""
        if self.closing:
            raise self._not_attached()
        stream = InterruptStream(
            asyncio.get_running_loop(), self._queue_size, lambda: self._metrics.dropped("queue_full")
        )
        remove = self.irqs.add_sink(stream.deliver)
        self._streams.add(stream)
        try:
            yield stream
        finally:
            remove()
            self._streams.discard(stream)

    async def quiesce(self) -> None:
        """Refuse new users, end the interrupt streams, wait for in-flight accesses, stop the thread."""
        self.closing = True
        for stream in list(self._streams):
            stream.end()
        async with self._idle:
            await self._idle.wait_for(lambda: self._users == 0)
        await asyncio.to_thread(self.dispatcher.stop)


async def _close_on_bus(bus: BusPeer, uuid: str, owner: str) -> None:
    try:
        await bus.close_device(uuid, owner)
    except VgpusimError as exc:  # the bus revoked it already, or is down: nothing left to undo here
        _log.warning("CloseDevice of %s failed: %s", uuid, exc, extra={"uuid": uuid, "reason": exc.reason})


async def attach_device(
    *,
    bus: BusPeer,
    gfx: GfxPeer,
    uuid: str,
    owner: str,
    container_id: str,
    shm_dir: Path,
    metrics: FrontendMetrics,
    queue_size: int,
    timeout: float,
    on_lost: Callable[[str], None],
) -> tuple[AttachedDevice, AsyncExitStack]:
    """Attach ``uuid`` (steps in the module doc); the device and the stack that detaches it."""
    stack = AsyncExitStack()
    try:
        ticket = await bus.open_device(uuid, owner, container_id)
        stack.push_async_callback(_close_on_bus, bus, uuid, owner)
        description = await gfx.describe_device(uuid)
        end, sock = await connect_channel(ticket, shm_dir, timeout=timeout)
        stack.callback(end.close)
        device = AttachedDevice(uuid, end, sock, description, metrics, queue_size=queue_size, on_lost=on_lost)
        device.dispatcher.start()
        stack.push_async_callback(device.quiesce)
        device.irqs.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x01")
    except BaseException:
        await stack.aclose()
        raise
    return device, stack
