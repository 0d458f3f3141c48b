"""Client helpers: targets, deadlines, unavailable peers, health waits."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vgpusim.common import clients, errors
from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.server import running_server


def test_normalize_target() -> None:
    assert clients.normalize_target("/run/x.sock") == "unix:/run/x.sock"
    assert clients.normalize_target(Path("/run/x.sock")) == "unix:/run/x.sock"
    assert clients.normalize_target("unix:///run/x.sock") == "unix:///run/x.sock"
    assert clients.normalize_target("127.0.0.1:50051") == "127.0.0.1:50051"
    with pytest.raises(errors.InvalidArgument) as caught:
        clients.normalize_target("unix:/" + "x" * 200)
    assert caught.value.reason == "SOCKET_PATH_TOO_LONG"


async def test_call_to_missing_server_is_unavailable_naming_peer(state_dir: Path) -> None:
    async with clients.open_channel(state_dir / "nobody.sock") as chan:
        with pytest.raises(errors.Unavailable) as caught:
            await clients.call(chan.unary_unary("/x.v1.S/M"), b"", timeout=5, peer="vgpu_bus")
    assert "vgpu_bus is unavailable" in caught.value.message
    assert caught.value.reason == "PEER_UNAVAILABLE"
    assert caught.value.metadata["peer"] == "vgpu_bus"


async def test_deadline_becomes_timed_out(channel: Any, echo: ModuleType) -> None:
    with pytest.raises(errors.TimedOut) as caught:
        await clients.call(channel.unary_unary(echo.method("Hang")), b"", timeout=0.2, peer="echo")
    assert caught.value.metadata["grpc_code"] == "DEADLINE_EXCEEDED"


async def test_no_time_left_fails_without_calling(channel: Any, echo: ModuleType) -> None:
    with pytest.raises(errors.TimedOut):
        await clients.call(channel.unary_unary(echo.method("Echo")), b"", timeout=0)


async def test_call_passes_metadata_and_returns_response(channel: Any, echo: ModuleType) -> None:
    method = channel.unary_unary(echo.method("Echo"))
    assert await clients.call(method, b"ping", metadata={"x-test": "1"}) == b"ping"


async def test_unknown_method_is_not_supported(channel: Any) -> None:
    with pytest.raises(errors.NotSupported):
        await clients.call(channel.unary_unary("/vgpusim.test.v1.EchoService/Nope"), b"")


def test_remaining_timeout() -> None:
    class Ctx:
        def __init__(self, left: float | None) -> None:
            self.left = left

        def time_remaining(self) -> float | None:
            return self.left

    assert clients.remaining_timeout(Ctx(None)) == clients.DEFAULT_TIMEOUT
    assert clients.remaining_timeout(Ctx(2.5)) == 2.5
    assert clients.remaining_timeout(Ctx(100.0), default=3.0) == 3.0


async def test_wait_for_serving_waits_for_a_server_not_yet_started(
    config: BaseServiceConfig, echo: ModuleType
) -> None:
    async with clients.open_channel(config.paths.target("echo")) as chan, asyncio.TaskGroup() as tg:
        waiter = tg.create_task(clients.wait_for_serving(chan, echo.SERVICE, timeout=30))
        async with running_server("echo", config, echo.add_echo):
            await waiter


async def test_wait_for_serving_times_out_without_server(state_dir: Path) -> None:
    async with clients.open_channel(state_dir / "nobody.sock") as chan:
        with pytest.raises(errors.TimedOut) as caught:
            await clients.wait_for_serving(chan, timeout=0.3)
    assert caught.value.reason == "NOT_SERVING"


async def test_stream_timeout_none_allowed_and_cancelled_on_break(channel: Any, echo: ModuleType) -> None:
    got = []
    items = clients.stream(channel.unary_stream(echo.method("Count")), b"100", timeout=None)
    async with contextlib.aclosing(items):
        async for item in items:
            got.append(item)
            if len(got) == 2:
                break
    assert got == [b"0", b"1"]
