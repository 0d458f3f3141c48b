"""vGPU attach/detach, the interrupt path and the guest's vCPU, over real shared-memory channels.

The peers are the in-memory fakes, but each attached vGPU gets a real channel from a real broker
socket, served by a trap thread of the fake gfx_host: register accesses, doorbells and interrupts
cross shared memory exactly as against gfx_host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vgpusim.common.errors import Busy, NotFound, WrongState
from vgpusim.qemu_frontend.core.irqs import ACTION_TRIGGER, DATA_EVENTFD, IRQ_INTX, IRQ_MSI
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.devices import DOORBELL_OFFSETS
from vgpusim.qemu_frontend.fakes import FakePeers, fake_frontend
from vgpusim.qemu_frontend.frontend import Frontend
from vgpusim.qemu_frontend.metrics import FrontendMetrics
from vgpusim.qemu_frontend.vcpu import GuestState, Workload
from vgpusim.qemu_frontend.vm import VmInfo

UUID = "0b1f5e0e-7d62-4c0e-9a39-4a0f2d3c1b01"
OTHER = "0b1f5e0e-7d62-4c0e-9a39-4a0f2d3c1b02"


@pytest.fixture
def metrics() -> FrontendMetrics:
    return FrontendMetrics()


@pytest.fixture
async def fe(tmp_path: Path, metrics: FrontendMetrics) -> AsyncIterator[tuple[Frontend, FakePeers]]:
    async with fake_frontend(tmp_path, metrics=metrics) as (frontend, peers):
        peers.bus.add(UUID)
        peers.bus.add(OTHER)
        yield frontend, peers


async def _vm(frontend: Frontend, name: str = "g") -> VmInfo:
    return await frontend.create_vm(name, 32 * MIB, hardware_iommu=False)


def sample(metrics: FrontendMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_attach_traps_registers_and_detach_closes(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    info = await frontend.attach_device(vm.vm_id, UUID.upper())
    assert info.devices == (UUID,)
    assert peers.bus.owners[UUID] == "fe-test"
    device = frontend.device(vm.vm_id, UUID)
    await asyncio.to_thread(device.port.write, 0, 0x100, 4, 0xDEADBEEF)
    assert await asyncio.to_thread(device.port.read, 0, 0x100, 4) == 0xDEADBEEF
    assert device.description.num_regions == 9
    assert device.irqs.is_bound(IRQ_MSI)  # bound for the guest at attach
    await frontend.detach_device(vm.vm_id, UUID)
    assert peers.bus.closed == [UUID] and peers.bus.owners[UUID] is None
    assert not (frontend.shm_dir / f"chan-{UUID}").exists()
    assert frontend.get_vm(vm.vm_id).devices == ()
    with pytest.raises(NotFound) as info_err:
        await frontend.detach_device(vm.vm_id, UUID)
    assert info_err.value.reason == "NOT_ATTACHED"


async def test_one_vgpu_per_vm_and_bus_errors_pass_through(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, _ = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    with pytest.raises(WrongState) as has:
        await frontend.attach_device(vm.vm_id, OTHER)
    assert has.value.reason == "VM_HAS_VGPU"
    second = await _vm(frontend, "h")
    with pytest.raises(Busy) as busy:
        await frontend.attach_device(second.vm_id, UUID)
    assert busy.value.reason == "DEVICE_IN_USE" and busy.value.metadata["owner"] == "fe-test"
    with pytest.raises(NotFound) as unknown:
        await frontend.attach_device(second.vm_id, "0b1f5e0e-7d62-4c0e-9a39-4a0f2d3c1bff")
    assert unknown.value.reason == "UNKNOWN_DEVICE"
    with pytest.raises(NotFound) as no_vm:
        await frontend.attach_device("vm-nope", OTHER)
    assert no_vm.value.reason == "UNKNOWN_VM"


async def test_interrupts_reach_watchers_and_metrics(
    fe: tuple[Frontend, FakePeers], metrics: FrontendMetrics
) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    device = frontend.device(vm.vm_id, UUID)
    async with device.watch() as stream:
        peers.gfx.raise_irq(UUID, IRQ_MSI, vector=3)
        irq = await asyncio.wait_for(stream.get(), 5.0)
        assert irq is not None and (irq.index, irq.vector) == (IRQ_MSI, 3)
        # INTx is not bound: dropped (the MSI after it proves the dispatcher got past it)
        peers.gfx.raise_irq(UUID, IRQ_INTX)
        peers.gfx.raise_irq(UUID, IRQ_MSI)
        irq = await asyncio.wait_for(stream.get(), 5.0)
        assert irq is not None and irq.index == IRQ_MSI
        # bound: delivered once, then automasked until UNMASK
        device.irqs.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_INTX, 0, 1, b"\x01")
        peers.gfx.raise_irq(UUID, IRQ_INTX)
        peers.gfx.raise_irq(UUID, IRQ_INTX)
        peers.gfx.raise_irq(UUID, IRQ_MSI)
        got = [await asyncio.wait_for(stream.get(), 5.0) for _ in range(2)]
        assert [(i.index if i else None) for i in got] == [IRQ_INTX, IRQ_MSI]
    await frontend.detach_device(vm.vm_id, UUID)  # joins the dispatcher: its counting is done
    assert sample(metrics, "vgpusim_irq_delivered_total", kind="msi") == 3
    assert sample(metrics, "vgpusim_irq_delivered_total", kind="intx") == 1
    assert sample(metrics, "vgpusim_irq_dropped_total", reason="unbound") == 1
    assert sample(metrics, "vgpusim_irq_dropped_total", reason="masked") == 1
    assert sample(metrics, "vgpusim_irq_delivery_seconds_count") == 4


async def test_detach_ends_interrupt_streams(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, _ = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    device = frontend.device(vm.vm_id, UUID)
    async with device.watch() as stream:
        waiter = asyncio.create_task(stream.get())
        await frontend.detach_device(vm.vm_id, UUID)
        assert await asyncio.wait_for(waiter, 5.0) is None


async def test_guest_rings_doorbells_and_gets_its_interrupts(
    fe: tuple[Frontend, FakePeers], metrics: FrontendMetrics
) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    with pytest.raises(WrongState) as no_vgpu:
        await frontend.start_guest(vm.vm_id, Workload.SMOKE, {})
    assert no_vgpu.value.reason == "NO_VGPU"
    await frontend.attach_device(vm.vm_id, UUID)
    status = await frontend.start_guest(vm.vm_id, Workload.COPY, {"batches": "5"})
    assert status.state is GuestState.RUNNING and status.workload is Workload.COPY
    vcpu = frontend.vm(vm.vm_id).vcpu
    assert vcpu is not None and await asyncio.to_thread(vcpu.join, 10.0)
    done = frontend.guest_status(vm.vm_id)
    assert (done.state, done.commands_submitted, done.interrupts_received) == (GuestState.FINISHED, 5, 5)
    assert sample(metrics, "vgpusim_ring_doorbells_total") == 5
    assert sample(metrics, "vgpusim_frontend_mmio_traps_total", op="write") == 5
    assert sample(metrics, "vgpusim_frontend_guest_commands_total") == 5
    assert min(DOORBELL_OFFSETS) in {t.offset for t in peers.gfx.vgpus[UUID].writes}


async def test_guest_running_stop_and_restart(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, _ = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    await frontend.start_guest(vm.vm_id, Workload.IDLE, {})
    with pytest.raises(WrongState) as running:
        await frontend.start_guest(vm.vm_id, Workload.SMOKE, {})
    assert running.value.reason == "GUEST_RUNNING"
    assert frontend.get_vm(vm.vm_id).guest_state is GuestState.RUNNING
    stopped = await frontend.stop_guest(vm.vm_id)
    assert stopped.state is GuestState.STOPPED
    await frontend.start_guest(vm.vm_id, Workload.SMOKE, {})
    vcpu = frontend.vm(vm.vm_id).vcpu
    assert vcpu is not None and await asyncio.to_thread(vcpu.join, 10.0)
    assert frontend.guest_status(vm.vm_id).state is GuestState.FINISHED


async def test_detach_and_destroy_stop_a_running_guest(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    await frontend.start_guest(vm.vm_id, Workload.COPY, {"batches": "0"})  # until stopped
    await frontend.destroy_vm(vm.vm_id)
    assert peers.bus.closed == [UUID]
    assert vm.container_id not in peers.iommu.containers


async def test_release_request_hot_unplugs(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    await frontend.start_guest(vm.vm_id, Workload.IDLE, {})
    peers.bus.request_release(UUID)
    await peers.bus.wait_close_calls(1)
    assert peers.bus.owners[UUID] is None
    assert frontend.get_vm(vm.vm_id).devices == ()
    assert frontend.guest_status(vm.vm_id).state is GuestState.STOPPED


async def test_lost_channel_hot_unplugs(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await _vm(frontend)
    await frontend.attach_device(vm.vm_id, UUID)
    peers.gfx.release(UUID)  # the vendor closes the channel behind the frontend's back
    peers.bus.owners[UUID] = None
    await peers.bus.wait_close_calls(1)  # the hot-unplug's CloseDevice (refused: NOT_OPEN, logged)
    assert frontend.get_vm(vm.vm_id).devices == ()
    await frontend.attach_device(vm.vm_id, UUID)  # and the VM can take it again
