"""When the frontend goes away (closes its end, or its process dies) the vGPU's trap thread ends
quietly and the service carries on: the vGPU can be released, reopened and used again.

A crash of the trap thread would fail these tests on its own: pytest turns an unhandled thread
exception into an error (warnings are errors here).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from pathlib import Path

from tests.gfx_host.service.conftest import U1, Dirs, OpenVgpu
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import HWS_IOVA, GuestDriver, connect
from vgpusim.common.shm.segment import Segment
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.vgpu import VgpuState
from vgpusim.gfx_host.host import HostService
from vgpusim.iommu_type2.core import Container

REPO = Path(__file__).resolve().parents[3]
FRONTEND = """
import sys
from pathlib import Path
from tests.gfx_host.service.guest import connect
port = connect(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
port.read(0, 0x100, 4)
print("attached", flush=True)
sys.stdin.read()
"""


def trap_threads(uuid: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"trap-{uuid[:8]}"]


async def wait_trap_thread_gone(uuid: str, timeout: float = 5.0) -> None:
    for thread in trap_threads(uuid):
        await asyncio.to_thread(thread.join, timeout)
    assert trap_threads(uuid) == []


async def run_one_workload(
    service: HostService, container: Container, dirs: Dirs, ram: Segment, seqno: int
) -> None:
    """Open U1 again, attach a new frontend, run a workload and get its MSI."""
    token = await service.open_device(U1, container.container_id)
    port = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    view = ram.buf[:]
    try:
        guest = GuestDriver(port, view)
        await asyncio.to_thread(guest.bring_up)
        await asyncio.to_thread(guest.submit, c.pack(c.store_seqno(seqno), c.user_interrupt()))
        await asyncio.to_thread(port.recv_irq, timeout=5.0)
        assert guest.ram_dword(HWS_IOVA) == seqno
    finally:
        view.release()
        port.close()


async def test_the_trap_thread_ends_when_the_frontend_closes(
    opened: OpenVgpu, service: HostService, container: Container, dirs: Dirs, ram: Segment, fake: FakeIommu
) -> None:
    await asyncio.to_thread(opened.guest.probe)
    assert len(trap_threads(U1)) == 1

    opened.port.close()
    await wait_trap_thread_gone(U1)

    assert service.host.find_vgpu(U1).state is VgpuState.OPEN  # the bus closes it, not gfx_host
    await service.release(U1)
    assert fake.of("DetachDevice", U1)
    await run_one_workload(service, container, dirs, ram, seqno=11)


async def test_the_trap_thread_ends_when_the_frontend_process_dies(
    service: HostService, container: Container, dirs: Dirs, ram: Segment
) -> None:
    service.create(U1, "0000:00:02.0", "i915-GVTg_V5_4")
    token = await service.open_device(U1, container.container_id)
    frontend = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FRONTEND,
        str(service.broker.path),
        token,
        str(dirs.shm),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert frontend.stdout is not None
        async with asyncio.timeout(30):
            line = await frontend.stdout.readline()
        assert line == b"attached\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            frontend.kill()
        await frontend.wait()

    await wait_trap_thread_gone(U1)

    await service.release(U1)
    await run_one_workload(service, container, dirs, ram, seqno=12)


async def test_a_frontend_that_never_attaches_does_not_block_release(
    service: HostService, container: Container
) -> None:
    service.create(U1, "0000:00:02.0", "i915-GVTg_V5_4")
    await service.open_device(U1, container.container_id)

    async with asyncio.timeout(2.0):
        await service.release(U1)

    await wait_trap_thread_gone(U1, timeout=0.5)
