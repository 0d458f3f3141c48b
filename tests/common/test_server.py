"""The server bootstrap: health, reflection, status file, sockets, TLS and graceful stop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from vgpusim.common import clients, errors
from vgpusim.common.clients import TlsConfig
from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.server import ServerHandle, run_service, running_server, serve
from vgpusim.common.status import read_status

ECHO_APP = Path(__file__).with_name("echo_app.py")
REPO = Path(__file__).resolve().parents[2]


async def test_health_is_not_serving_until_ready(config: BaseServiceConfig, echo: ModuleType) -> None:
    gate = asyncio.Event()
    stop = asyncio.Event()

    async def ready() -> None:
        await gate.wait()

    server = serve(
        name="echo", config=config, add_services=echo.add_echo, registry=CollectorRegistry(), ready=ready,
        stop_event=stop, handle_signals=False, configure_logging=False,
    )  # fmt: skip
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server)
        async with clients.open_channel(config.paths.target("echo")) as chan:
            # wait_for_ready makes the first Check wait for the socket to appear: no sleeping.
            for service in ("", echo.SERVICE):
                assert await _health_when_up(chan, service) == "NOT_SERVING"
            status = read_status(config.paths.status_file("echo"))
            assert status is not None and status.state == "starting"
            with pytest.raises(errors.TimedOut, match="last status NOT_SERVING"):
                await clients.wait_for_serving(chan, echo.SERVICE, timeout=0.3)
            gate.set()
            await clients.wait_for_serving(chan, echo.SERVICE, timeout=10)
            assert await clients.check_health(chan) == "SERVING"
            status = read_status(config.paths.status_file("echo"))
            assert status is not None and status.state == "serving"
            with pytest.raises(errors.NotFound):
                await clients.check_health(chan, "no.such.Service")
            stop.set()
        await task
    assert not config.paths.socket("echo").exists()
    assert not config.paths.status_file("echo").exists()


async def test_reflection_lists_services(channel: Any, echo: ModuleType) -> None:
    assert await clients.list_services(channel) == (
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        echo.SERVICE,
    )


async def test_status_file_socket_mode_and_cleanup(config: BaseServiceConfig, echo: ModuleType) -> None:
    async with running_server("echo", config, echo.add_echo) as handle:
        assert handle.socket_path == config.paths.socket("echo")
        assert handle.target == f"unix:{handle.socket_path}"
        assert stat.S_IMODE(os.stat(handle.socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(config.paths.run_dir).st_mode) == 0o700
        status = read_status(config.paths.status_file("echo"))
        assert status is not None
        assert (status.pid, status.state, status.socket) == (os.getpid(), "serving", str(handle.socket_path))
        assert status.metrics_url == handle.metrics_url and status.tcp is None
        assert status.alive()
    assert not config.paths.socket("echo").exists()
    assert read_status(config.paths.status_file("echo")) is None


async def test_stale_socket_is_replaced_live_one_refused(config: BaseServiceConfig, echo: ModuleType) -> None:
    path = config.paths.socket("echo")
    config.paths.ensure_dirs()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: stale
    async with running_server("echo", config, echo.add_echo) as handle:
        with pytest.raises(errors.AlreadyExists) as caught:
            async with running_server("echo", config, echo.add_echo):
                pass
        assert caught.value.reason == "SERVICE_RUNNING"
        assert handle.socket_path is not None and handle.socket_path.exists()  # not removed by the loser
        assert read_status(config.paths.status_file("echo")) is not None


async def test_stop_order_and_failed_ready_unwinds(config: BaseServiceConfig, echo: ModuleType) -> None:
    events: list[str] = []

    def hook(name: str) -> Any:
        async def run() -> None:
            events.append(name)

        return run

    async def bad_ready() -> None:
        raise errors.Unavailable("dependency down")

    with pytest.raises(errors.Unavailable):
        async with running_server(
            "echo", config, echo.add_echo, ready=bad_ready, on_stop=[hook("a"), hook("b")]
        ):
            raise AssertionError("not reached")
    assert events == ["b", "a"]
    assert not config.paths.socket("echo").exists()
    assert read_status(config.paths.status_file("echo")) is None


async def test_tcp_listener_on_ephemeral_port(config: BaseServiceConfig, echo: ModuleType) -> None:
    tcp_config = dataclasses.replace(config, tcp_listen="127.0.0.1:0", metrics_port=-1)
    async with running_server("echo", tcp_config, echo.add_echo) as handle:
        assert handle.metrics_url is None
        assert handle.tcp_target is not None and not handle.tcp_target.endswith(":0")
        async with clients.open_channel(handle.tcp_target) as chan:
            assert await clients.call(chan.unary_unary(echo.method("Echo")), b"tcp") == b"tcp"
        status = read_status(config.paths.status_file("echo"))
        assert status is not None and status.tcp == handle.tcp_target


async def test_listen_on_tcp_only(config: BaseServiceConfig, echo: ModuleType) -> None:
    async with running_server(
        "echo", dataclasses.replace(config, listen="127.0.0.1:0"), echo.add_echo
    ) as handle:
        assert handle.socket_path is None and handle.target.startswith("127.0.0.1:")
        assert not handle.target.endswith(":0")
        async with handle.channel() as chan:
            assert await clients.call(chan.unary_unary(echo.method("Echo")), b"t") == b"t"
        status = read_status(config.paths.status_file("echo"))
        assert status is not None and status.socket is None
    assert not config.paths.socket("echo").exists()


async def test_tcp_port_in_use_is_busy(config: BaseServiceConfig, echo: ModuleType) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(errors.Busy) as caught:
            async with running_server(
                "echo", dataclasses.replace(config, tcp_listen=f"127.0.0.1:{port}"), echo.add_echo
            ):
                raise AssertionError("not reached")
    assert caught.value.reason == "LISTEN_FAILED"
    assert not config.paths.socket("echo").exists()


def _make_certs(folder: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=vgpusim test CA")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make test certificates")
async def test_mtls_on_tcp(config: BaseServiceConfig, echo: ModuleType, tmp_path: Path) -> None:
    _make_certs(tmp_path)
    tls_config = dataclasses.replace(
        config,
        tcp_listen="127.0.0.1:0",
        tls_cert=str(tmp_path / "server.pem"),
        tls_key=str(tmp_path / "server.key"),
        tls_client_ca=str(tmp_path / "ca.pem"),
    )
    async with running_server("echo", tls_config, echo.add_echo) as handle:
        assert handle.tcp_target is not None
        good = TlsConfig.from_files(
            tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key", server_name="localhost"
        )
        async with clients.open_channel(handle.tcp_target, tls=good) as chan:
            assert await clients.call(chan.unary_unary(echo.method("Echo")), b"tls") == b"tls"
        no_cert = TlsConfig.from_files(tmp_path / "ca.pem", server_name="localhost")
        async with clients.open_channel(handle.tcp_target, tls=no_cert) as chan:
            with pytest.raises(errors.Unavailable):
                await clients.call(chan.unary_unary(echo.method("Echo")), b"tls", timeout=5)


def test_run_service_uses_uvloop_and_maps_domain_errors() -> None:
    seen: list[object] = []

    async def fine() -> None:
        seen.append(asyncio.get_running_loop())

    async def broken() -> None:
        raise errors.InvalidArgument("bad start")

    assert run_service(fine()) == 0
    assert isinstance(seen[0], uvloop.Loop)
    assert run_service(broken()) == 1


async def _start(state_dir: Path, *extra: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ECHO_APP), "--state-dir", str(state_dir), "--log-format", "text", *extra,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.multiprocess
async def test_sigterm_stops_gracefully_and_cleans_up(state_dir: Path) -> None:
    paths = BaseServiceConfig(state_dir=state_dir).paths
    proc = await _start(state_dir)
    try:
        async with clients.open_channel(paths.target("echo")) as chan:
            await clients.wait_for_serving(chan, timeout=30)
            assert await clients.call(chan.unary_unary("/vgpusim.test.v1.EchoService/Echo"), b"hi") == b"hi"
        status = read_status(paths.status_file("echo"))
        assert status is not None and status.pid == proc.pid and status.state == "serving"
        assert status.metrics_url is not None and status.metrics_url.startswith("http://127.0.0.1:")
        code, err = await _stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert not paths.socket("echo").exists()
    assert not paths.status_file("echo").exists()


@pytest.mark.multiprocess
async def test_sigterm_during_start_up(state_dir: Path) -> None:
    paths = BaseServiceConfig(state_dir=state_dir).paths
    proc = await _start(state_dir, "--block-ready")
    try:
        async with clients.open_channel(paths.target("echo")) as chan:
            health = await _health_when_up(chan)
            assert health == "NOT_SERVING"
        code, err = await _stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert "start-up interrupted" in err
    assert not paths.socket("echo").exists()
    assert not paths.status_file("echo").exists()


async def _health_when_up(chan: Any, service: str = "") -> str:
    """Health.Check that first waits (up to 30 s) for the server's socket to accept."""
    answer = await health_pb2_grpc.HealthStub(chan).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=30, wait_for_ready=True
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def test_handle_set_serving_flips_every_service(echo_server: ServerHandle, channel: Any) -> None:
    await echo_server.set_serving(False)
    assert await clients.check_health(channel) == "NOT_SERVING"
    assert await clients.check_health(channel, echo_server.services[0]) == "NOT_SERVING"
    await echo_server.set_serving(True)
    assert await clients.check_health(channel, echo_server.services[0]) == "SERVING"
