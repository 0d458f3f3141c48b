"""The qemu_frontend process: its config, start-up failures, and a real process on faked peers.

The multi-process test runs ``python -m vgpusim.qemu_frontend.server`` against gRPC fakes of
iommu_type2, vgpu_bus and gfx_host served from the test process (``fakes_grpc``): the device
channel crosses the process boundary through the fake broker, and SIGTERM must leave nothing
behind (containers destroyed, device closed, guest RAM unlinked).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from vgpusim.client import FrontendClient
from vgpusim.common import clients
from vgpusim.common.config import load_config
from vgpusim.common.errors import InvalidArgument
from vgpusim.common.paths import StackPaths
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.fakes import FakePeers
from vgpusim.qemu_frontend.fakes_grpc import serve_fake_peers
from vgpusim.qemu_frontend.server import SERVICE, main

REPO = Path(__file__).resolve().parents[2]
UUID = "3f0c9d7e-2a51-4c7b-8e0d-9b6a5f4e3d21"


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state dir (UNIX socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vfe-", dir="/tmp"))
    try:
        yield path
    finally:
        StackPaths(path).remove_shm_dir()
        shutil.rmtree(path, ignore_errors=True)


def test_config_defaults_targets_and_flags(state_dir: Path) -> None:
    config = load_config(FrontendConfig, SERVICE, ["--state-dir", str(state_dir)], environ={})
    assert config.target_of("iommu_type2") == f"unix:{state_dir}/run/iommu_type2.sock"
    assert config.target_of("gfx_host") == f"unix:{state_dir}/run/gfx_host.sock"
    assert (config.max_vm_memory_bytes, config.irq_queue_size) == (4 << 30, 1024)
    tuned = load_config(
        FrontendConfig,
        SERVICE,
        [
            "--state-dir",
            str(state_dir),
            "--bus-target",
            "localhost:5000",
            "--max-vm-memory-bytes",
            "1073741824",
        ],
        environ={"VGPUSIM_QEMU_FRONTEND_PREALLOC_RAM": "yes"},
    )
    assert tuned.target_of("vgpu_bus") == "localhost:5000"
    assert (tuned.max_vm_memory_bytes, tuned.prealloc_ram) == (1 << 30, True)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-vm-memory-bytes", "3145728"),
        ("--max-total-memory-bytes", "2097152"),
        ("--irq-queue-size", "0"),
        ("--peer-timeout-s", "0"),
        ("--memlock-limit-bytes", "-1"),
    ],
)
def test_bad_config_values(state_dir: Path, flag: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_config(FrontendConfig, SERVICE, ["--state-dir", str(state_dir), flag, value], environ={})
    assert info.value.reason == "BAD_CONFIG"
    assert info.value.metadata["source"] == f"flag {flag}"


def test_main_refuses_a_bad_config(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(state_dir), "--irq-queue-size", "0"]) == 2
    assert "irq_queue_size" in capsys.readouterr().err


async def _frontend(state_dir: Path, *extra: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGPUSIM_")}
    env["PYTHONPATH"] = str(REPO / "src")
    argv = ["-m", "vgpusim.qemu_frontend.server", "--state-dir", str(state_dir), "--log-format", "text"]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        *extra,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def process(state_dir: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await _frontend(state_dir, "--metrics-port", "-1")
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.multiprocess
async def test_start_up_fails_without_peers(state_dir: Path) -> None:
    proc = await _frontend(state_dir, "--metrics-port", "-1", "--dependency-timeout-s", "0.5")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    assert "iommu_type2" in err.decode() and "NOT_SERVING" in err.decode()


@pytest.mark.multiprocess
async def test_process_serves_and_cleans_up_on_sigterm(
    state_dir: Path, process: asyncio.subprocess.Process
) -> None:
    paths = StackPaths(state_dir)
    fakes = FakePeers(paths.run_dir, paths.ensure_shm_dir())
    fakes.bus.add(UUID)
    async with serve_fake_peers(state_dir, fakes):
        async with clients.open_channel(paths.target(SERVICE)) as channel:
            await clients.wait_for_serving(channel, timeout=30)
            client = FrontendClient(channel, target=paths.target(SERVICE))
            vm = await client.create_vm(memory_bytes=64 << 20, name="p")
            await client.attach_device(vm.vm_id, UUID)
            await client.write_region(vm.vm_id, UUID, offset=0x100, data=b"\x2a\x00\x00\x00")
            assert await client.read_region(vm.vm_id, UUID, offset=0x100, size=4) == b"\x2a\x00\x00\x00"
            assert (paths.shm_backing_dir / vm.ram_segment).exists()
            owner = fakes.iommu.containers[vm.container_id].owner
            assert owner.startswith("qemu_frontend-") and fakes.bus.owners[UUID] == owner
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert fakes.bus.closed == [UUID]
        assert fakes.iommu.containers == {} and fakes.iommu.held == {}
    assert not (paths.shm_backing_dir / vm.ram_segment).exists()
    assert not paths.socket(SERVICE).exists()
