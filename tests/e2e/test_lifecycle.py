"""End to end through the four real services: the path of the demo, and the CLIs around it."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import run_cli
from vgpusim.client import Stack
from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound
from vgpusim.common.paths import StackPaths
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as fe_pb

pytestmark = pytest.mark.multiprocess
PARENT = "0000:00:02.0"
TYPE_ID = "i915-GVTg_V5_4"


async def test_create_vm_attach_and_first_interrupt(detached_stack: Path) -> None:
    async with Stack.connect(detached_stack) as stack:
        before = {
            t.type_id: t.available_instances for p in await stack.bus.list_types(PARENT) for t in p.types
        }
        vgpu = str(uuid.uuid4())
        await stack.bus.create_device(vgpu, PARENT, TYPE_ID)
        after = {
            t.type_id: t.available_instances for p in await stack.bus.list_types(PARENT) for t in p.types
        }
        assert after[TYPE_ID] == before[TYPE_ID] - 1
        vm = await stack.frontend.create_vm(memory_bytes=256 << 20)
        assert len(vm.regions) >= 2  # RAM mapped around the VGA hole, as QEMU does
        containers = await stack.iommu.list_containers()
        assert [c.container_id for c in containers] == [vm.container_id]
        assert containers[0].statistics.mappings == len(vm.regions)
        await stack.frontend.attach_device(vm.vm_id, vgpu)
        assert (await stack.bus.get_device(vgpu)).owner
        await stack.frontend.start_guest(vm.vm_id, workload=fe_pb.WORKLOAD_SMOKE)
        status = await stack.frontend.wait_guest(vm.vm_id, timeout=30)
        assert status.state == fe_pb.GUEST_STATE_FINISHED, status.error
        assert status.interrupts_received >= 1
        assert status.first_irq_latency_us > 0
        pinned = (await stack.iommu.list_containers())[0].statistics.pinned_pages
        assert pinned > 0  # gfx_host read the ring by DMA through pinned pages
        await stack.frontend.destroy_vm(vm.vm_id)
        assert await stack.iommu.list_containers() == []
        assert not (await stack.bus.get_device(vgpu)).owner
        await stack.bus.remove_device(vgpu)
        with pytest.raises(NotFound):
            await stack.bus.get_device(vgpu)
    shm = StackPaths(detached_stack).shm_backing_dir
    assert sorted(p.name for p in shm.iterdir()) == []


async def test_bad_input_gets_the_right_status(detached_stack: Path) -> None:
    async with Stack.connect(detached_stack) as stack:
        with pytest.raises(InvalidArgument) as bad_uuid:
            await stack.bus.create_device("not-a-uuid", PARENT, TYPE_ID)
        assert bad_uuid.value.reason == "INVALID_UUID"
        with pytest.raises(NotFound) as parent:
            await stack.bus.create_device(str(uuid.uuid4()), "0000:99:00.0", TYPE_ID)
        assert parent.value.reason == "UNKNOWN_PARENT"
        with pytest.raises(InvalidArgument) as mdev_type:
            await stack.bus.create_device(str(uuid.uuid4()), PARENT, "i915-nope")
        assert mdev_type.value.reason == "UNKNOWN_TYPE"
        vgpu = str(uuid.uuid4())
        await stack.bus.create_device(vgpu, PARENT, TYPE_ID)
        with pytest.raises(AlreadyExists) as dup:
            await stack.bus.create_device(vgpu.upper(), PARENT, TYPE_ID)
        assert dup.value.reason == "UUID_IN_USE"
        vm = await stack.frontend.create_vm(memory_bytes=64 << 20)
        with pytest.raises(NotFound):
            await stack.frontend.attach_device(vm.vm_id, str(uuid.uuid4()))
        await stack.frontend.destroy_vm(vm.vm_id)
        await stack.bus.remove_device(vgpu)


def test_status_vgpuctl_and_down(detached_stack: Path) -> None:
    status = run_cli("vgpusim.cli.launcher", "status", "--json", state_dir=detached_stack)
    assert status.returncode == 0, status.stderr
    services = json.loads(status.stdout)["services"]
    assert {name: s["state"] for name, s in services.items()} == dict.fromkeys(services, "serving")
    assert all(s["pid"] and s["metrics_url"].startswith("http://") for s in services.values())

    types = run_cli("vgpusim.cli.vgpuctl", "types", "--dumpjson", state_dir=detached_stack)
    assert types.returncode == 0, types.stderr
    parents = {name for entry in json.loads(types.stdout) for name in entry}
    assert PARENT in parents

    vgpu = str(uuid.uuid4())
    started = run_cli(
        "vgpusim.cli.vgpuctl", "start", "-u", vgpu, "-p", PARENT, "-t", TYPE_ID, state_dir=detached_stack
    )
    assert started.returncode == 0, started.stderr
    listed = run_cli("vgpusim.cli.vgpuctl", "list", state_dir=detached_stack)
    assert f"{vgpu} {PARENT} {TYPE_ID} manual" in listed.stdout
    stopped = run_cli("vgpusim.cli.vgpuctl", "stop", "-u", vgpu, state_dir=detached_stack)
    assert stopped.returncode == 0, stopped.stderr
    assert vgpu not in run_cli("vgpusim.cli.vgpuctl", "list", state_dir=detached_stack).stdout

    down = run_cli(
        "vgpusim.cli.launcher", "down", "--state-dir", str(detached_stack), state_dir=detached_stack
    )
    assert down.returncode == 0, down.stderr
    after = json.loads(run_cli("vgpusim.cli.launcher", "status", "--json", state_dir=detached_stack).stdout)
    assert {s["state"] for s in after["services"].values()} == {"stopped"}
    assert not StackPaths(detached_stack).shm_backing_dir.exists()


def test_two_stacks_side_by_side(state_dir: Path) -> None:
    other = Path(tempfile.mkdtemp(prefix="vgs2-", dir="/tmp"))
    try:
        for d in (state_dir, other):
            up = run_cli("vgpusim.cli.launcher", "up", "--detach", "--state-dir", str(d), state_dir=d)
            assert up.returncode == 0, up.stderr
        for d in (state_dir, other):
            status = json.loads(run_cli("vgpusim.cli.launcher", "status", "--json", state_dir=d).stdout)
            assert {s["state"] for s in status["services"].values()} == {"serving"}
    finally:
        run_cli("vgpusim.cli.launcher", "down", "--state-dir", str(other), state_dir=other)
        shutil.rmtree(other, ignore_errors=True)


def test_demo_runs_clean() -> None:
    done = run_cli("vgpusim.cli.launcher", "demo", state_dir=Path("/nonexistent"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "create vGPU -> first interrupt" in done.stdout
    assert "no process, socket or shared-memory segment left behind" in done.stdout
