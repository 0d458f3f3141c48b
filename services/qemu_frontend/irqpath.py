"""The interrupt path of an attached vGPU: from the channel's irq ring to the guest and to gRPC streams.

gfx_host posts each interrupt the device raises as a record in the channel's ``irq`` ring.  One
:class:`IrqDispatcher` thread per device takes them off the ring (sleeping on the ring's eventfd
in between) and feeds the device's :class:`~vgpusim.qemu_frontend.core.irqs.IrqController`,
which applies the SET_IRQS state (bound, INTx automask) and calls its sinks:

- :class:`IrqLatch`: the guest's interrupt line; the built-in guest driver's ``wait_irq`` waits on it;
- :class:`InterruptStream`: one per ``WatchInterrupts`` call, a bounded buffer filled from the
  dispatcher thread through ``loop.call_soon_threadsafe`` and drained by the stream's coroutine.

Fast path: a guest waiting for an interrupt first takes the records off the ring *itself*, on
its vCPU thread, spinning for up to an adaptive budget (``fastpath.AdaptiveSpin``, at most
:data:`GUEST_SPIN_US`) while gfx_host is not asked to signal the eventfd; the records go through
the same ``IrqController``, so every sink sees them as usual.  Only when the spin ends without
an interrupt does the guest sleep on the latch, with the dispatcher thread on duty.  So an
interrupt that follows a doorbell closely reaches the guest with no thread hand-off and no
eventfd.  The two consumers take turns under ``GuestPort.irq_lock``.

Stopping: the dispatcher sleeps in ``poll`` on the ring's eventfd and on the broker connection
(the channel's peer watch).  ``stop`` shuts that connection down (``shutdown(2)``), which wakes the
sleeper at once with ``PeerGone``; gfx_host sees the same hang-up and ends its trap thread.

Glossary:
- record: one ``IrqRecord`` (VFIO index, vector, raised_ns, sequence) from gfx_host.
- lost: the ring ended while nobody asked for it (gfx_host released or died): the device is gone.
- on duty: the consumer that will take the next record; the dispatcher thread when no guest spins.
- spin budget: how long the next guest wait may spin (the policy of ``vgpusim.common.shm.notify``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from vgpusim.common.errors import VgpusimError
from vgpusim.common.fastpath import AdaptiveSpin, GuestPort, IrqRecord
from vgpusim.common.logs import get_logger
from vgpusim.qemu_frontend.core.irqs import IRQ_REQ, NUM_IRQS, Interrupt, IrqController
from vgpusim.qemu_frontend.metrics import FrontendMetrics

__all__ = ["InterruptStream", "IrqDispatcher", "IrqLatch"]

_log = get_logger("vgpusim.qemu_frontend.irqpath")
JOIN_TIMEOUT_S = 5.0
GUEST_SPIN_US = 300.0  # above an idle GPU's doorbell -> MSI, well below a real workload

GuestPoll = Callable[[float, Callable[[], bool]], None]


class IrqLatch:
    """The guest's interrupt line, as ``GuestEnv.wait_irq`` promises it: ``wait`` returns True once
    an interrupt arrived since the previous call (interrupts in between coalesce, as a guest's
    pending-interrupt bit does) and False on timeout.

    Thread-safe; the dispatcher thread delivers, the vCPU thread waits.  ``cancel`` (guest stop)
    makes every wait return False at once until ``reset`` (next guest start).  With a ``poll``
    (:meth:`IrqDispatcher.poll_for_guest`, set by :meth:`use_poll`) a wait first lets the waiting
    thread take interrupts off the channel itself (module docstring).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = 0
        self._cancelled = False
        self._poll: GuestPoll | None = None
        self.received = 0

    def use_poll(self, poll: GuestPoll | None) -> None:
        """Let waits call ``poll(timeout, ready)`` first, on the waiting thread (None: never)."""
        self._poll = poll

    def _ready(self) -> bool:
        return self._pending > 0 or self._cancelled

    def deliver(self, irq: Interrupt) -> None:
        """Sink of the device's IrqController (REQ is for the VMM, not the guest)."""
        if irq.index == IRQ_REQ:
            return
        with self._cond:
            self._pending += 1
            self.received += 1
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s for an interrupt, clearing the pending ones; False on timeout/cancel."""
        poll = self._poll
        if poll is not None and not self._ready():
            poll(math.inf if timeout is None else timeout, self._ready)
        with self._cond:
            if not self._ready():
                self._cond.wait_for(self._ready, timeout)
            if self._pending and not self._cancelled:
                self._pending = 0
                return True
            return False

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._pending = 0
            self._cancelled = False


class InterruptStream:
    """The interrupts one WatchInterrupts call has yet to send: bounded, newest dropped when full.

    ``deliver`` may be called from any thread; ``get`` and ``end`` run in the stream's loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, on_drop: Callable[[], None]) -> None:
        self._loop = loop
        self._limit = limit
        self._on_drop = on_drop
        self._items: deque[Interrupt] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self.dropped = 0

    def deliver(self, irq: Interrupt) -> None:
        """Sink of the IrqController (dispatcher thread, or the loop for loopback triggers)."""
        try:
            self._loop.call_soon_threadsafe(self._put, irq)
        except RuntimeError:  # the loop is closed: the server is gone
            self._on_drop()

    def _put(self, irq: Interrupt) -> None:
        if self._ended:
            return
        if len(self._items) >= self._limit:
            self.dropped += 1
            self._on_drop()
            return
        self._items.append(irq)
        self._wakeup.set()

    def end(self) -> None:
        """No more interrupts (device detached): ``get`` returns None once the buffer is empty."""
        self._ended = True
        self._wakeup.set()

    async def get(self) -> Interrupt | None:
        """The next interrupt, or None when the stream has ended."""
        while not self._items:
            if self._ended:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


class IrqDispatcher:
    """The thread moving a device's interrupt records from its channel into its IrqController."""

    def __init__(
        self,
        port: GuestPort,
        peer: socket.socket,
        irqs: IrqController,
        metrics: FrontendMetrics,
        *,
        name: str,
        on_lost: Callable[[str], None],
    ) -> None:
        self._port = port
        self._peer = peer
        self._irqs = irqs
        self._metrics = metrics
        self._on_lost = on_lost
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.spin = AdaptiveSpin(GUEST_SPIN_US)
        self.records = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wake the thread (shut the broker connection down) and join it; blocking.

        Once it returns no thread touches the channel's irq ring any more (a guest spinning on
        it finishes its spin first), so the channel may be closed.
        """
        with self._port.irq_lock:
            self._stopping.set()
        try:
            self._peer.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected: the thread is waking up anyway
        if self._thread.ident is None:
            return
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            _log.error("IRQ dispatcher %s did not stop within %.0f s", self._thread.name, JOIN_TIMEOUT_S)

    def poll_for_guest(self, timeout: float, ready: Callable[[], bool]) -> None:
        """Take interrupt records off the ring on the calling (vCPU) thread until ``ready()``,
        spinning for up to the spin budget and ``timeout`` s (module docstring).

        Returns at once if the dispatcher thread is draining (it delivers then).  Never raises:
        a ring that ended is the dispatcher thread's to report.
        """
        port = self._port
        if not port.irq_lock.acquire(blocking=False):
            return
        try:
            if self._stopping.is_set():
                return
            port.want_irq_signal(False)
            try:

                def caught() -> bool:
                    self._drain()
                    return ready()

                self.spin.spin(caught, int(min(timeout, 3600.0) * 1e9))
            finally:
                if port.want_irq_signal(True):
                    self._drain()  # arrived while the flag was off: the dispatcher would sleep on
        except VgpusimError:
            pass
        finally:
            port.irq_lock.release()

    def _drain(self) -> int:
        """Dispatch every record waiting (caller holds the port's ``irq_lock``); how many."""
        take, total = self._port.take_irqs, 0
        while records := take():
            total += len(records)
            self.records += len(records)
            for record in records:
                self._dispatch(record)
        return total

    def _run(self) -> None:
        port = self._port
        try:
            while True:
                with port.irq_lock:
                    if self._stopping.is_set():
                        return
                    self._drain()
                    if port.want_irq_signal(True):
                        continue  # arrived (or the ring ended) before the flag was seen
                port.sleep_irq_signal(None)
        except VgpusimError as exc:  # PeerGone: gfx_host closed the channel, or we stopped
            if not self._stopping.is_set():
                self._on_lost(str(exc))

    def _dispatch(self, record: IrqRecord) -> None:
        if not 0 <= record.index < NUM_IRQS:
            self._metrics.dropped("bad_index")
            return
        unbound_before = self._irqs.stats.dropped_unbound
        if self._irqs.raise_irq(record.index, record.vector, record.raised_ns):
            self._metrics.delivered(record.index, (time.monotonic_ns() - record.raised_ns) / 1e9)
        else:
            unbound = self._irqs.stats.dropped_unbound > unbound_before
            self._metrics.dropped("unbound" if unbound else "masked")
