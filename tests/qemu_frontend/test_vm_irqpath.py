"""The pieces between a device and its consumers: the guest's interrupt line, the WatchInterrupts
buffer, trap counting, and the vCPU thread's states."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from vgpusim.common.errors import InvalidArgument, WrongState
from vgpusim.qemu_frontend.core.irqs import IRQ_MSI, IRQ_REQ, Interrupt
from vgpusim.qemu_frontend.core.memory import MIB, PageAllocator, ram_layout
from vgpusim.qemu_frontend.devices import CountingPort
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.irqpath import InterruptStream, IrqLatch
from vgpusim.qemu_frontend.metrics import FrontendMetrics
from vgpusim.qemu_frontend.vcpu import GuestState, Vcpu, Workload, builtin_launcher


def _irq(index: int = IRQ_MSI, seq: int = 1) -> Interrupt:
    return Interrupt(index, 0, 1, seq)


def test_latch_coalesces_and_ignores_req() -> None:
    latch = IrqLatch()
    assert not latch.wait(0)
    latch.deliver(_irq(IRQ_REQ))
    assert not latch.wait(0)
    latch.deliver(_irq())
    latch.deliver(_irq())
    assert latch.wait(0) and not latch.wait(0)  # two interrupts since the last call: one wake-up
    assert latch.received == 2


def test_latch_cancel_wakes_a_waiter_until_reset() -> None:
    latch = IrqLatch()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(latch.wait(30.0)))
    waiter.start()
    latch.cancel()
    waiter.join(10.0)
    assert results == [False]
    latch.deliver(_irq())
    assert not latch.wait(0)  # cancelled: the guest is stopping
    latch.reset()
    assert not latch.wait(0)  # reset drops what was pending
    latch.deliver(_irq())
    assert latch.wait(0)


async def test_stream_is_bounded_and_ends() -> None:
    drops: list[int] = []
    stream = InterruptStream(asyncio.get_running_loop(), 2, lambda: drops.append(1))
    thread = threading.Thread(target=lambda: [stream.deliver(_irq(seq=i)) for i in (1, 2, 3)])
    thread.start()
    thread.join(10.0)
    assert [(await stream.get()) for _ in range(2)] == [_irq(seq=1), _irq(seq=2)]
    assert stream.dropped == 1 and drops == [1]
    waiter = asyncio.create_task(stream.get())
    stream.deliver(_irq(seq=4))
    assert await waiter == _irq(seq=4)
    stream.deliver(_irq(seq=5))
    await asyncio.sleep(0)  # the threadsafe callback runs on the next loop turn
    stream.end()
    assert await stream.get() == _irq(seq=5)  # buffered items are still handed out
    assert await stream.get() is None


class _Port:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int, int]] = []

    def read(self, region: int, offset: int, size: int) -> int:
        return 7

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.writes.append((region, offset, size, value))


def test_counting_port_counts_traps_and_doorbells() -> None:
    metrics = FrontendMetrics()
    port = CountingPort(_Port(), metrics)
    port.write(0, 0x02014, 4, 1)  # RCS tail
    port.write(0, 0x22010, 8, 1)  # BCS head+tail in one qword
    port.write(0, 0x12010, 4, 1)  # VCS head: no doorbell
    port.write(2, 0x02014, 4, 1)  # the aperture, not a register
    assert port.read(7, 0, 4) == 7
    registry = metrics.registry
    assert registry.get_sample_value("vgpusim_ring_doorbells_total") == 2
    assert registry.get_sample_value("vgpusim_frontend_mmio_traps_total", {"op": "write"}) == 4
    assert registry.get_sample_value("vgpusim_frontend_mmio_traps_total", {"op": "read"}) == 1


@dataclass
class _Snapshot:
    commands_submitted: int = 3
    first_irq_latency_us: float | None = None


class _Stats:
    def snapshot(self) -> _Snapshot:
        return _Snapshot()


class _Program:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.stats = _Stats()

    def run(self, stop: threading.Event) -> None:
        if self.behaviour == "wait":
            stop.wait()
        elif self.behaviour == "domain":
            raise WrongState("the batch hung", reason="SMOKE_HUNG")
        elif self.behaviour == "bug":
            raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("behaviour", "state", "error"),
    [
        ("done", GuestState.FINISHED, ""),
        ("wait", GuestState.STOPPED, ""),
        ("domain", GuestState.FAILED, "the batch hung"),
        ("bug", GuestState.FAILED, "RuntimeError: boom"),
    ],
)
def test_vcpu_end_states(behaviour: str, state: GuestState, error: str) -> None:
    woken: list[int] = []
    vcpu = Vcpu(_Program(behaviour), Workload.SMOKE, name="vcpu-test", on_stop=lambda: woken.append(1))
    assert vcpu.status().state is GuestState.RUNNING
    vcpu.start()
    if behaviour == "wait":
        vcpu.request_stop()
        assert woken == [1]
    assert vcpu.join(10.0)
    status = vcpu.status()
    assert (status.state, status.error, status.workload) == (state, error, Workload.SMOKE)
    assert (status.commands_submitted, status.first_irq_latency_us) == (3, 0.0)


def test_builtin_launcher_checks_parameters_before_the_vcpu_starts() -> None:
    regions = ram_layout(4 * MIB)
    env = GuestEnv(
        port=_Port(), ram=memoryview(bytearray(4 * MIB)), regions=regions, alloc=PageAllocator(regions),
        wait_irq=lambda timeout: False,
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as info:
        builtin_launcher(env, Workload.COPY, {"no_such_param": "1"})
    assert info.value.reason == "BAD_WORKLOAD_PARAM"
    with pytest.raises(InvalidArgument):
        builtin_launcher(env, Workload.COPY, {"bytes": "lots"})
