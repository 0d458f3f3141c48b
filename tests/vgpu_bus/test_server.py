"""The vgpu_bus process: its config, and ``python -m vgpusim.vgpu_bus.server`` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from vgpusim.common import clients
from vgpusim.common.errors import InvalidArgument
from vgpusim.common.status import read_status
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as pb_grpc
from vgpusim.vgpu_bus.config import BusServiceConfig, load_bus_config
from vgpusim.vgpu_bus.server import SERVICE_NAME, main

REPO = Path(__file__).resolve().parents[2]
U1 = "5b6e3a4c-1f1e-4c8e-9a57-0a1b2c3d4e5f"


def test_config_defaults_and_flags(short_state_dir: Path) -> None:
    config = load_bus_config(["--state-dir", str(short_state_dir)])
    assert config.db_file == short_state_dir / "bus.sqlite3"
    assert (config.release_timeout_s, config.autostart_attempts, config.event_queue_size) == (10.0, 3, 1024)
    core = config.bus_config()
    assert (core.release_timeout, core.release_request_interval, core.autostart_backoff) == (10.0, 1.0, 0.1)

    tuned = load_bus_config(
        ["--state-dir", str(short_state_dir), "--release-timeout-s", "2.5", "--db-path", "/tmp/x.db"]
    )
    assert (tuned.release_timeout_s, tuned.db_file) == (2.5, Path("/tmp/x.db"))
    assert tuned.bus_config().release_timeout == 2.5


def test_config_from_environment_and_bad_values(
    short_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VGPUSIM_VGPU_BUS_EVENT_HISTORY", "16")
    assert load_bus_config(["--state-dir", str(short_state_dir)]).event_history == 16
    with pytest.raises(InvalidArgument) as caught:
        load_bus_config(["--state-dir", str(short_state_dir), "--autostart-attempts", "0"])
    assert caught.value.reason == "BAD_CONFIG"
    assert caught.value.metadata["field"] == "autostart_attempts"
    assert caught.value.metadata["source"] == "flag --autostart-attempts"
    with pytest.raises(InvalidArgument):
        BusServiceConfig(state_dir=short_state_dir, release_timeout_s=float("nan"))


def test_main_refuses_a_bad_config(short_state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(short_state_dir), "--vendor-timeout-s", "-1"]) == 2
    assert "vendor_timeout_s" in capsys.readouterr().err


@asynccontextmanager
async def _bus_process(state_dir: Path, *extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = ["-m", "vgpusim.vgpu_bus.server", "--state-dir", str(state_dir), "--log-format", "text", *extra]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _terminate(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


@pytest.mark.multiprocess
async def test_process_serves_stops_on_sigterm_and_keeps_definitions(short_state_dir: Path) -> None:
    paths = BusServiceConfig(state_dir=short_state_dir).paths
    request = pb.DefineDeviceRequest(uuid=U1, parent="0000:00:02.0", type_id="i915-GVTg_V5_4")
    request.start = pb.START_POLICY_AUTO
    async with _bus_process(short_state_dir) as proc:
        async with clients.open_channel(paths.target("vgpu_bus")) as channel:
            await clients.wait_for_serving(channel, SERVICE_NAME, timeout=30)
            stub = pb_grpc.VgpuBusServiceStub(channel)
            await clients.call(stub.DefineDevice, request, timeout=10)
        status = read_status(paths.status_file("vgpu_bus"))
        assert status is not None and status.pid == proc.pid and status.metrics_url is not None
        metrics = await asyncio.to_thread(_scrape, status.metrics_url)
        assert "vgpusim_bus_definitions 1.0" in metrics.splitlines()
        code, err = await _terminate(proc)
    assert code == 0, err
    assert "stopped" in err
    assert not paths.socket("vgpu_bus").exists()
    assert (short_state_dir / "bus.sqlite3").exists()

    async with _bus_process(short_state_dir) as proc:
        async with clients.open_channel(paths.target("vgpu_bus")) as channel:
            await clients.wait_for_serving(channel, SERVICE_NAME, timeout=30)
            stub = pb_grpc.VgpuBusServiceStub(channel)
            listed = await clients.call(stub.ListDefinitions, pb.ListDefinitionsRequest(), timeout=10)
        assert [(d.uuid, d.start, d.active) for d in listed.definitions] == [
            (U1, pb.START_POLICY_AUTO, False)
        ]
        code, err = await _terminate(proc)
    assert code == 0, err


@pytest.mark.multiprocess
async def test_process_refuses_an_unreadable_store(short_state_dir: Path) -> None:
    (short_state_dir / "bus.sqlite3").write_bytes(b"this is not a database" * 100)
    async with _bus_process(short_state_dir) as proc:
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "STORE_UNREADABLE" in err.decode()
    assert (short_state_dir / "bus.sqlite3").read_bytes().startswith(b"this is not a database")
