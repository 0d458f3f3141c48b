"""VM life cycle of the frontend against the in-memory peers: RAM segment, container, maps, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vgpusim.common.errors import AlreadyExists, Exhausted, InvalidArgument, NotFound, Unavailable
from vgpusim.qemu_frontend.core.memory import MIB, ram_layout
from vgpusim.qemu_frontend.fakes import FakePeers, fake_frontend
from vgpusim.qemu_frontend.frontend import Frontend
from vgpusim.qemu_frontend.metrics import FrontendMetrics
from vgpusim.qemu_frontend.vcpu import GuestState

GIB = 1 << 30


@pytest.fixture
async def fe(tmp_path: Path) -> AsyncIterator[tuple[Frontend, FakePeers]]:
    async with fake_frontend(tmp_path, max_vm_memory_bytes=8 * GIB, max_total_memory_bytes=10 * GIB) as pair:
        yield pair


async def test_create_vm_maps_ram_at_iova_equal_gpa(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await frontend.create_vm("guest1", 4 * GIB, hardware_iommu=True)
    assert vm.name == "guest1" and vm.memory_bytes == 4 * GIB and vm.guest_state is GuestState.STOPPED
    assert vm.ram_segment == f"ram-{vm.vm_id}" and vm.devices == ()
    segment = frontend.shm_dir / vm.ram_segment
    assert segment.stat().st_size == 4 * GIB and segment.stat().st_mode & 0o777 == 0o600
    ctr = peers.iommu.containers[vm.container_id]
    assert (ctr.owner, ctr.hardware) == ("fe-test", True)
    assert ctr.segments == {vm.ram_segment: 4 * GIB}
    assert [r for _, r in ctr.mappings] == list(ram_layout(4 * GIB)) == list(vm.regions)
    # below 4 GiB up to lowmem (3 GiB), the rest relocated above 4 GiB: three regions around the holes
    assert [(r.gpa, r.offset) for r in vm.regions] == [(0, 0), (0x100000, 0x100000), (4 * GIB, 3 * GIB)]
    assert frontend.get_vm(vm.vm_id) == vm
    assert frontend.list_vms() == [vm]


async def test_destroy_vm_releases_everything(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await frontend.create_vm("guest1", 64 * MIB, hardware_iommu=False)
    await frontend.destroy_vm(vm.vm_id)
    assert not (frontend.shm_dir / vm.ram_segment).exists()
    assert vm.container_id not in peers.iommu.containers
    with pytest.raises(NotFound) as info:
        frontend.get_vm(vm.vm_id)
    assert info.value.reason == "UNKNOWN_VM"
    with pytest.raises(NotFound):
        await frontend.destroy_vm(vm.vm_id)
    again = await frontend.create_vm("guest1", 64 * MIB, hardware_iommu=False)  # the name is free again
    assert again.vm_id != vm.vm_id


async def test_names_are_unique_and_generated(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, _ = fe
    await frontend.create_vm("a", 2 * MIB, hardware_iommu=False)
    with pytest.raises(AlreadyExists) as info:
        await frontend.create_vm("a", 2 * MIB, hardware_iommu=False)
    assert info.value.reason == "VM_EXISTS"
    unnamed = await frontend.create_vm("", 2 * MIB, hardware_iommu=False)
    assert unnamed.name == unnamed.vm_id
    with pytest.raises(InvalidArgument) as bad:
        await frontend.create_vm(" padded ", 2 * MIB, hardware_iommu=False)
    assert bad.value.reason == "BAD_VM_NAME"


@pytest.mark.parametrize("size", [0, 3 * MIB, 9 * GIB])
async def test_bad_memory_sizes(fe: tuple[Frontend, FakePeers], size: int) -> None:
    frontend, peers = fe
    with pytest.raises(InvalidArgument) as info:
        await frontend.create_vm("x", size, hardware_iommu=False)
    assert info.value.reason == "BAD_MEMORY_SIZE"
    assert peers.iommu.containers == {} and frontend.list_vms() == []


async def test_total_memory_limit(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, _ = fe
    first = await frontend.create_vm("big", 8 * GIB, hardware_iommu=False)
    with pytest.raises(Exhausted) as info:
        await frontend.create_vm("more", 4 * GIB, hardware_iommu=False)
    assert info.value.reason == "GUEST_MEMORY_EXHAUSTED"
    await frontend.destroy_vm(first.vm_id)
    await frontend.create_vm("more", 4 * GIB, hardware_iommu=False)


async def test_failed_map_unwinds_in_reverse(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    peers.iommu.fail["map_ram"] = Unavailable("mapper restarting")
    with pytest.raises(Unavailable):
        await frontend.create_vm("x", 64 * MIB, hardware_iommu=False)
    assert peers.iommu.containers == {}
    assert not any(p.name.startswith("ram-") for p in frontend.shm_dir.iterdir())
    await frontend.create_vm("x", 64 * MIB, hardware_iommu=False)  # name and memory were released


async def test_destroy_survives_a_failing_mapper(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    vm = await frontend.create_vm("x", 64 * MIB, hardware_iommu=False)
    peers.iommu.fail["unmap_all"] = Unavailable("mapper down")
    peers.iommu.fail["destroy_container"] = Unavailable("mapper down")
    await frontend.destroy_vm(vm.vm_id)  # logged, not raised: the KeepAlive still holds the container
    assert not (frontend.shm_dir / vm.ram_segment).exists()
    assert frontend.list_vms() == []


async def test_close_destroys_every_vm_and_drops_the_keepalive(tmp_path: Path) -> None:
    async with fake_frontend(tmp_path) as (frontend, peers):
        vms = [await frontend.create_vm(f"vm{i}", 16 * MIB, hardware_iommu=False) for i in range(3)]
        assert "fe-test" in peers.iommu.held
        await frontend.close()
        assert peers.iommu.containers == {}
        assert "fe-test" not in peers.iommu.held
        assert not any((frontend.shm_dir / vm.ram_segment).exists() for vm in vms)


async def test_keepalive_reconnects_after_the_mapper_restarts(fe: tuple[Frontend, FakePeers]) -> None:
    frontend, peers = fe
    await frontend.create_vm("x", 16 * MIB, hardware_iommu=False)
    assert peers.iommu.holds == 1
    peers.iommu.drop("fe-test")
    await peers.iommu.wait_holds(2)
    assert "fe-test" in peers.iommu.held
    assert peers.iommu.containers == {}  # the restarted mapper forgot them


async def test_vm_gauge(tmp_path: Path) -> None:
    metrics = FrontendMetrics()
    async with fake_frontend(tmp_path, metrics=metrics) as (frontend, _):
        await frontend.create_vm("x", 16 * MIB, hardware_iommu=False)
        assert metrics.registry.get_sample_value("vgpusim_frontend_vms") == 1.0
        assert metrics.registry.get_sample_value("vgpusim_frontend_guest_commands_total") == 0.0
