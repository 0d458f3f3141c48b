"""The iommu_type2 process: its config, its wiring, and a real process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from vgpusim.common import clients
from vgpusim.common.errors import InvalidArgument
from vgpusim.common.paths import StackPaths
from vgpusim.common.shm.segment import Segment
from vgpusim.common.status import read_status
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.config import IommuServiceConfig, load_iommu_config
from vgpusim.iommu_type2.core import MapperConfig
from vgpusim.iommu_type2.server import FULL_NAME, main, running_iommu

REPO = Path(__file__).resolve().parents[2]


def test_config_defaults_are_the_kernels(iommu_state_dir: Path) -> None:
    config = load_iommu_config(["--state-dir", str(iommu_state_dir)])
    assert (config.dma_entry_limit, config.unmap_retries, config.notify_timeout_s) == (65535, 10, 5.0)
    assert (config.fault_log_size, config.default_memlock_limit_bytes) == (256, 0)
    assert config.mapper_config() == MapperConfig()


def test_config_from_flags_env_and_file(iommu_state_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "stack.toml"
    toml.write_text("[iommu_type2]\nunmap_retries = 3\nnotify_timeout_s = 1\n")
    env = {"VGPUSIM_IOMMU_TYPE2_DMA_ENTRY_LIMIT": "100"}
    argv = [
        "--state-dir",
        str(iommu_state_dir),
        "--config",
        str(toml),
        "--default-memlock-limit-bytes",
        "0x100000",
    ]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        config = load_iommu_config(argv)
    assert config.mapper_config() == MapperConfig(dma_entry_limit=100, unmap_retries=3, notify_timeout_s=1.0)
    assert config.default_memlock_limit_bytes == 1 << 20


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--dma-entry-limit", "0"),
        ("--dma-entry-limit", str(1 << 32)),
        ("--unmap-retries", "-1"),
        ("--notify-timeout-s", "0"),
        ("--notify-timeout-s", "nan"),
        ("--fault-log-size", "0"),
        ("--default-memlock-limit-bytes", "-1"),
    ],
)
def test_bad_config_values(iommu_state_dir: Path, flag: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_iommu_config(["--state-dir", str(iommu_state_dir), flag, value])
    field = flag.removeprefix("--").replace("-", "_")
    assert (caught.value.reason, caught.value.metadata["field"]) == ("BAD_CONFIG", field)
    assert caught.value.metadata["source"] == f"flag {flag}"


def test_main_refuses_a_bad_config(iommu_state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(iommu_state_dir), "--unmap-retries", "5000"]) == 2
    assert "unmap_retries" in capsys.readouterr().err


async def test_default_memlock_limit_applies_to_containers_without_one(iommu_state_dir: Path) -> None:
    config = IommuServiceConfig(
        state_dir=iommu_state_dir, log_format="text", default_memlock_limit_bytes=8192
    )
    async with running_iommu(config) as (service, handle), handle.channel() as channel:
        stub = pb_grpc.IommuType2ServiceStub(channel)
        hw = pb.IOMMU_MODE_HARDWARE
        await clients.call(stub.CreateContainer, pb.CreateContainerRequest(owner="a", mode=hw))
        await clients.call(
            stub.CreateContainer, pb.CreateContainerRequest(owner="b", mode=hw, memlock_limit_bytes=4096)
        )
        limits = {info.owner: info.memlock_limit_bytes for info in service.mapper.containers()}
        assert limits == {"a": 8192, "b": 4096}
    assert service.mapper.containers() == ()  # destroyed at stop


async def test_stop_destroys_containers_and_unmaps_segments(iommu_state_dir: Path) -> None:
    config = IommuServiceConfig(state_dir=iommu_state_dir, log_format="text")
    async with running_iommu(config) as (service, handle), handle.channel() as channel:
        assert service.store.directory == config.paths.shm_dir and config.paths.shm_dir.is_symlink()
        Segment.create(config.paths.shm_dir, "ram", 1 << 20).close()
        stub = pb_grpc.IommuType2ServiceStub(channel)
        request = pb.CreateContainerRequest(owner="vm", mode=pb.IOMMU_MODE_EMULATED)
        cid = (await clients.call(stub.CreateContainer, request)).container_id
        register = pb.RegisterSegmentRequest(container_id=cid, segment="ram", size=1 << 20)
        await clients.call(stub.RegisterSegment, register)
        assert service.store.names() == ("ram",)
        assert await clients.list_services(channel) == (
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            FULL_NAME,
        )
    assert (service.mapper.containers(), service.store.names(), service.store.parked) == ((), (), 0)


@pytest.mark.multiprocess
async def test_process_serves_and_stops_on_sigterm(iommu_state_dir: Path) -> None:
    paths = StackPaths(iommu_state_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vgpusim.iommu_type2.server", "--state-dir", str(iommu_state_dir),
        "--log-format", "text",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with clients.open_channel(paths.target("iommu_type2")) as channel:
            await clients.wait_for_serving(channel, FULL_NAME, timeout=30)
            stub = pb_grpc.IommuType2ServiceStub(channel)
            request = pb.CreateContainerRequest(owner="vm", mode=pb.IOMMU_MODE_EMULATED)
            assert (await clients.call(stub.CreateContainer, request)).container_id
        status = read_status(paths.status_file("iommu_type2"))
        assert status is not None and (status.pid, status.state) == (proc.pid, "serving")
        assert paths.shm_dir.is_symlink() and paths.shm_backing_dir.is_dir()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert not paths.socket("iommu_type2").exists()
    assert not paths.status_file("iommu_type2").exists()
