"""``vgpusim demo``: the end-to-end path on a private stack, narrated.

1. start the four services as local processes in a fresh state dir (the embedded default host:
   two simulated GPUs, which gfx_host registers as mdev parents with vgpu_bus);
2. create a vGPU on the GVT-g-like parent (resources reserved in gfx_host);
3. create a VM (guest RAM in shared memory, a container in iommu_type2, RAM mapped at IOVA = GPA)
   and attach the vGPU (opened through vgpu_bus; the fast-path channel handed over);
4. run the guest driver's smoke workload: it programs GTT, ring and interrupts, writes a command
   into the ring in guest RAM and rings the doorbell through shared memory; gfx_host reads it by
   DMA through pinned pages, executes it and raises an MSI that the guest sees;
5. tear everything down and check that no process, socket or segment is left.

Exit status 0 when every step worked and nothing leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid as _uuid
from pathlib import Path

from vgpusim.cli.supervisor import SERVICE_ORDER, Supervisor
from vgpusim.client import Stack
from vgpusim.common.errors import VgpusimError
from vgpusim.common.paths import StackPaths
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as fe_pb

PARENT = "0000:00:02.0"
TYPE_ID = "i915-GVTg_V5_4"
MIB = 1 << 20


def _say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


async def _scenario(paths: StackPaths) -> float:
    """The user-visible path; returns the create-to-first-interrupt time in ms."""
    async with Stack.connect(paths.state_dir) as stack:
        parents = await stack.bus.list_parents()
        for parent in parents:
            types = ", ".join(f"{t.type_id}({t.available_instances})" for t in parent.types)
            _say("bus", f"parent {parent.name} ({parent.driver}): {types}")
        vgpu_uuid = str(_uuid.uuid4())
        t0 = time.perf_counter()
        device = await stack.bus.create_device(vgpu_uuid, PARENT, TYPE_ID)
        _say("bus", f"created vGPU {device.uuid} ({device.type_id}) on {device.parent}")
        vm = await stack.frontend.create_vm(memory_bytes=256 * MIB, name="demo")
        regions = ", ".join(f"{r.gpa:#x}+{r.size:#x}" for r in vm.regions)
        _say("frontend", f"VM {vm.vm_id}: RAM segment {vm.ram_segment}, container {vm.container_id}")
        _say("iommu", f"RAM mapped at IOVA=GPA: {regions}")
        await stack.frontend.attach_device(vm.vm_id, vgpu_uuid)
        _say("frontend", f"vGPU attached to {vm.vm_id}: opened through vgpu_bus, channel handed over")
        first_irq: asyncio.Future[fe_pb.WatchInterruptsResponse] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            async for irq in stack.frontend.watch_interrupts(vm.vm_id, vgpu_uuid):
                if not first_irq.done():
                    first_irq.set_result(irq)

        watcher = asyncio.create_task(watch())
        try:
            await stack.frontend.start_guest(vm.vm_id, workload=fe_pb.WORKLOAD_SMOKE)
            status = await stack.frontend.wait_guest(vm.vm_id, timeout=30)
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if status.state != fe_pb.GUEST_STATE_FINISHED:
                raise RuntimeError(
                    f"the guest did not finish: {fe_pb.GuestState.Name(status.state)} {status.error}"
                )
            _say(
                "guest",
                f"smoke workload done: {status.commands_submitted} commands, {status.interrupts_received} "
                f"interrupt(s); doorbell -> MSI {status.first_irq_latency_us:.0f} us",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    irq = await first_irq
                    _say(
                        "frontend",
                        f"first interrupt seen by the VFIO API: index {irq.index} (MSI), seq {irq.sequence}",
                    )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        _say("demo", f"create vGPU -> first interrupt: {elapsed_ms:.1f} ms")
        await stack.frontend.destroy_vm(vm.vm_id)
        _say("frontend", f"VM {vm.vm_id} destroyed: vGPU released, pins and mappings gone, RAM unlinked")
        await stack.bus.remove_device(vgpu_uuid)
        _say("bus", f"vGPU {vgpu_uuid} removed; resources returned")
        return elapsed_ms


def _leftovers(paths: StackPaths, pids: list[int]) -> list[str]:
    found = [f"process {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
    found += [f"socket {paths.socket(n)}" for n in SERVICE_ORDER if paths.socket(n).exists()]
    if paths.chan_socket.exists():
        found.append(f"socket {paths.chan_socket}")
    backing = paths.shm_backing_dir
    if backing.exists():
        found += [f"segment {p}" for p in backing.iterdir()] or [f"directory {backing}"]
    return found


async def _demo(paths: StackPaths) -> int:
    supervisor = Supervisor(paths, config=None, restart=False)
    _say("stack", f"starting {', '.join(SERVICE_ORDER)} in {paths.state_dir}")
    pids: list[int] = []
    try:
        await supervisor.start_all()
        pids = [s.process.pid for s in supervisor.services.values() if s.process is not None]
        _say("stack", "every service reports SERVING; gfx_host registered its GPUs with vgpu_bus")
        await _scenario(paths)
    except (VgpusimError, RuntimeError) as exc:
        print(f"vgpusim demo: FAILED: {exc}", flush=True)
        return 1
    finally:
        await supervisor.stop_all()
    left = _leftovers(paths, pids)
    if left:
        print("vgpusim demo: FAILED: left behind: " + ", ".join(left), flush=True)
        return 1
    _say("stack", "stopped; no process, socket or shared-memory segment left behind")
    return 0


def run_demo(*, keep_state: bool = False) -> int:
    state = Path(tempfile.mkdtemp(prefix="vgpusim-demo-"))
    os.chmod(state, 0o700)
    try:
        return asyncio.run(_demo(StackPaths(state)))
    finally:
        if keep_state:
            print(f"state dir kept: {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
