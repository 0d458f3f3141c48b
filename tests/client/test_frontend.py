"""FrontendClient: a VM lifecycle, interrupts as an async iterator, waiting for the guest, errors."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vgpusim.client import Stack, frontend_pb
from vgpusim.common.errors import Busy, InvalidArgument, NotFound, TimedOut, WrongState

from .conftest import fakes

U1 = "11111111-1111-4111-8111-111111111111"
P = "0000:00:02.0"


async def test_vm_lifecycle_with_interrupt_and_screenshot(stack: Stack) -> None:
    await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    vm = await stack.frontend.create_vm(memory_bytes=256 << 20, name="guest1")
    assert (vm.name, vm.memory_bytes) == ("guest1", 256 << 20)
    vm = await stack.frontend.attach_device(vm.vm_id, U1)
    assert list(vm.devices) == [U1]
    async with contextlib.aclosing(stack.frontend.watch_interrupts(vm.vm_id, U1)) as irqs:
        status = await stack.frontend.start_guest(vm.vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
        assert status.state == frontend_pb.GUEST_STATE_RUNNING
        irq = await asyncio.wait_for(anext(irqs), 5)
    assert irq.sequence == 1
    done = await stack.frontend.wait_guest(vm.vm_id, timeout=5)
    assert (done.state, done.interrupts_received) == (frontend_pb.GUEST_STATE_FINISHED, 1)
    shot = await stack.frontend.get_screenshot(vm.vm_id)
    assert shot.png.startswith(b"\x89PNG")
    await stack.frontend.detach_device(vm.vm_id, U1)
    await stack.frontend.destroy_vm(vm.vm_id)
    assert await stack.frontend.list_vms() == []


async def test_frontend_errors(stack: Stack) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await stack.frontend.create_vm(memory_bytes=1000)
    assert bad.value.reason == "BAD_MEMORY_SIZE"
    with pytest.raises(NotFound) as missing:
        await stack.frontend.get_vm("vm-nope")
    assert missing.value.reason == "UNKNOWN_VM"
    await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    a = await stack.frontend.create_vm(memory_bytes=64 << 20)
    b = await stack.frontend.create_vm(memory_bytes=64 << 20)
    with pytest.raises(WrongState) as no_vgpu:
        await stack.frontend.start_guest(a.vm_id)
    assert no_vgpu.value.reason == "NO_VGPU"
    await stack.frontend.attach_device(a.vm_id, U1)
    with pytest.raises(Busy) as busy:
        await stack.frontend.attach_device(b.vm_id, U1)
    assert (busy.value.reason, busy.value.metadata["owner"]) == ("DEVICE_IN_USE", a.vm_id)


async def test_wait_guest_times_out(stack: Stack, frontend_fake: fakes.FakeFrontend) -> None:
    frontend_fake.guest_delay = 10.0
    await stack.bus.create_device(U1, P, "i915-GVTg_V5_4")
    vm = await stack.frontend.create_vm(memory_bytes=64 << 20)
    await stack.frontend.attach_device(vm.vm_id, U1)
    await stack.frontend.start_guest(vm.vm_id)
    with pytest.raises(TimedOut) as err:
        await stack.frontend.wait_guest(vm.vm_id, timeout=0.2)
    assert err.value.reason == "GUEST_WAIT_TIMED_OUT"
    await stack.frontend.stop_guest(vm.vm_id)
