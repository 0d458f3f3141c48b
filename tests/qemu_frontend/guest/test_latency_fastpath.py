"""The latency fast path: a waiting guest takes its interrupts off the channel itself (no timings).

A real channel pair in one process: gfx_host's :class:`HostPort` raises interrupts, the frontend's
:class:`IrqDispatcher` thread and a guest waiting on its :class:`IrqLatch` take turns consuming them.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vgpusim.common.fastpath import CHANNEL_SPEC, AdaptiveSpin, GuestPort, HostPort
from vgpusim.common.shm.channel import attach_channel, create_channel
from vgpusim.qemu_frontend.core.irqs import ACTION_TRIGGER, DATA_EVENTFD, IRQ_MSI, Interrupt, IrqController
from vgpusim.qemu_frontend.irqpath import IrqDispatcher, IrqLatch
from vgpusim.qemu_frontend.metrics import FrontendMetrics


@dataclass
class Wired:
    host: HostPort
    guest: GuestPort
    dispatcher: IrqDispatcher
    latch: IrqLatch
    seen: list[Interrupt]
    lost: list[str]


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    owner = create_channel(tmp_path, f"chan-{uuid.uuid4().hex[:8]}", CHANNEL_SPEC)
    payload, fds = owner.export()
    ours, theirs = socket.socketpair()
    peer = attach_channel(tmp_path, payload, [os.dup(fd) for fd in fds], peer=ours)
    host, guest = HostPort(owner), GuestPort(peer)
    irqs = IrqController()
    irqs.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x01")
    latch = IrqLatch()
    seen: list[Interrupt] = []
    lost: list[str] = []
    irqs.add_sink(latch.deliver)
    irqs.add_sink(seen.append)  # what a WatchInterrupts stream would get
    dispatcher = IrqDispatcher(guest, ours, irqs, FrontendMetrics(), name="irq-test", on_lost=lost.append)
    latch.use_poll(dispatcher.poll_for_guest)
    dispatcher.start()
    try:
        yield Wired(host, guest, dispatcher, latch, seen, lost)
    finally:
        dispatcher.stop()
        guest.close()
        host.close()
        theirs.close()


def _raise(w: Wired, n: int = 1) -> None:
    for _ in range(n):
        w.host.raise_irq(IRQ_MSI, 0, 1)


def test_a_waiting_guest_gets_every_interrupt_exactly_once(wired: Wired) -> None:
    done = threading.Event()

    def host() -> None:
        for _ in range(300):
            _raise(wired)
            done.wait(0.0002)

    t = threading.Thread(target=host)
    t.start()
    got = 0
    for _ in range(10_000):
        got += wired.latch.wait(0.05)
        if not t.is_alive() and wired.dispatcher.records == 300:
            break
    t.join()
    assert wired.dispatcher.records == 300
    assert len(wired.seen) == 300  # every sink saw every record once, whoever took it
    assert [irq.sequence for irq in wired.seen] == list(range(1, 301))
    assert 1 <= got <= 300  # the latch coalesces what arrived between two waits
    assert wired.lost == []


def test_the_dispatcher_delivers_while_no_guest_waits(wired: Wired) -> None:
    _raise(wired, 3)
    pause = threading.Event()
    for _ in range(500):
        if len(wired.seen) == 3:
            break
        pause.wait(0.01)
    assert len(wired.seen) == 3 and wired.dispatcher.records == 3
    assert wired.latch.wait(0.0) is True  # pending from the dispatcher's delivery
    assert wired.latch.wait(0.0) is False


def test_a_guest_wait_times_out_and_can_be_cancelled(wired: Wired) -> None:
    assert wired.latch.wait(0.01) is False
    wired.latch.cancel()
    _raise(wired)
    assert wired.latch.wait(1.0) is False  # cancelled: returns at once
    wired.latch.reset()


def test_after_stop_the_guest_no_longer_touches_the_ring(wired: Wired) -> None:
    _raise(wired)
    assert wired.latch.wait(1.0) is True
    wired.dispatcher.stop()
    _raise(wired)
    assert wired.latch.wait(0.01) is False  # nobody consumes any more
    assert wired.lost == []  # a stop is not a loss
    assert wired.guest.irqs.ring.has_data()


def test_a_closed_producer_is_reported_lost(wired: Wired) -> None:
    wired.host.close()
    pause = threading.Event()
    for _ in range(500):
        if wired.lost:
            break
        pause.wait(0.01)
    assert wired.lost and wired.latch.wait(0.01) is False


def test_adaptive_spin_halves_on_misses_and_resets_on_a_catch() -> None:
    spin = AdaptiveSpin(8.0)
    assert spin.budget_us == 8.0
    assert spin.spin(lambda: False) is False
    assert spin.budget_us == 4.0
    assert spin.spin(lambda: False, limit_ns=0) is False
    assert spin.budget_us == 4.0  # ended by the caller's limit: no evidence, no penalty
    for _ in range(3):
        spin.spin(lambda: False)
    assert spin.budget_us == 0.0
    calls: list[int] = []

    def ready() -> bool:
        calls.append(1)
        return True

    assert spin.spin(ready) is True  # always checks at least once
    assert calls == [1] and spin.budget_us == 8.0
