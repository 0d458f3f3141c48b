"""The /metrics endpoint and the go-grpc-prometheus interceptor, through a real server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from vgpusim.common import clients, errors
from vgpusim.common.metrics import MetricsServer, grpc_code_label
from vgpusim.common.server import ServerHandle

SVC = "vgpusim.test.v1.EchoService"


async def http(url: str, method: str = "GET", path: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A one-shot HTTP/1.1 request (no client library needed)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = f"{method} {path or parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: */*\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_metrics_server_serves_registry_and_stops_cleanly() -> None:
    registry = CollectorRegistry()
    Counter("vgpusim_test_things", "Things.", registry=registry).inc(3)
    threads_before = threading.active_count()
    async with MetricsServer(registry) as server:
        assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, headers, body = await http(server.url)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"vgpusim_test_things_total 3.0" in body
        assert b"_created" not in body
        assert (await http(server.url, path="/other"))[0] == 404
        assert (await http(server.url, method="POST"))[0] == 405
        head_status, head_headers, head_body = await http(server.url, method="HEAD")
        assert head_status == 200 and head_body == b"" and int(head_headers["Content-Length"]) > 0
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert threading.active_count() == threads_before
    async with asyncio.timeout(5):
        assert await idle_reader.read() == b""  # the idle connection was closed by stop()
    idle_writer.close()
    with contextlib.suppress(ConnectionError):
        await idle_writer.wait_closed()


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def registry(echo_server: ServerHandle) -> CollectorRegistry:
    return echo_server.registry


async def test_aborted_call_counted_with_its_real_code(
    echo_server: ServerHandle, channel: Any, echo: ModuleType
) -> None:
    with pytest.raises(errors.NotFound):
        await clients.call(channel.unary_unary(echo.method("Fail")), b"NotFound")
    with pytest.raises(errors.NotFound):
        await clients.call(channel.unary_unary(echo.method("Abort")), b"")
    with pytest.raises(errors.VgpusimError):
        await clients.call(channel.unary_unary(echo.method("Boom")), b"")
    assert await clients.call(channel.unary_unary(echo.method("Echo")), b"x") == b"x"
    assert echo_server.metrics_url is not None
    status, _, body = await http(echo_server.metrics_url)
    text = body.decode()
    assert status == 200
    common = f'grpc_service="{SVC}",grpc_type="unary"'
    for method, code in (("Fail", "NotFound"), ("Abort", "NotFound"), ("Boom", "Internal"), ("Echo", "OK")):
        line = f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",{common}}} 1.0'
        assert line in text
    assert f'grpc_server_started_total{{grpc_method="Fail",{common}}} 1.0' in text
    assert f'grpc_server_handling_seconds_count{{grpc_method="Echo",{common}}} 1.0' in text
    assert 'le="1e-05"' in text and 'le="10.0"' in text


async def test_streaming_messages_counted(
    registry: CollectorRegistry, channel: Any, echo: ModuleType
) -> None:
    with pytest.raises(errors.Exhausted):
        async for _ in clients.stream(channel.unary_stream(echo.method("Count")), b"4:Exhausted", timeout=5):
            pass
    assert await channel.stream_unary(echo.method("Sum"))(iter([b"a", b"b", b"c"]), timeout=5) == b"3"
    assert [m async for m in channel.stream_stream(echo.method("Chat"))(iter([b"a", b"b"]), timeout=5)]
    assert [m async for m in channel.unary_stream(echo.method("Write"))(b"w", timeout=5)] == [b"w"] * 3

    def labels(kind: str, method: str) -> dict[str, str]:
        return {"grpc_type": kind, "grpc_service": SVC, "grpc_method": method}

    count = labels("server_stream", "Count")
    assert _value(registry, "grpc_server_msg_sent_total", **count) == 4
    assert _value(registry, "grpc_server_msg_received_total", **count) == 1
    assert _value(registry, "grpc_server_handled_total", **count, grpc_code="ResourceExhausted") == 1
    total = labels("client_stream", "Sum")
    assert _value(registry, "grpc_server_msg_received_total", **total) == 3
    assert _value(registry, "grpc_server_msg_sent_total", **total) == 1
    chat = labels("bidi_stream", "Chat")
    assert _value(registry, "grpc_server_msg_sent_total", **chat) == 2
    assert _value(registry, "grpc_server_handled_total", **chat, grpc_code="OK") == 1
    write = labels("server_stream", "Write")
    assert _value(registry, "grpc_server_msg_sent_total", **write) == 3


async def test_expired_call_counted_as_deadline_exceeded(
    registry: CollectorRegistry, channel: Any, echo: Any
) -> None:
    echo.hang_ended = asyncio.Event()
    try:
        with pytest.raises(errors.TimedOut):
            await clients.call(channel.unary_unary(echo.method("Hang")), b"", timeout=0.1)
        # The server cancels the handler on its own schedule; the interceptor records the RPC in
        # the same task step as the handler's exit, so once it has exited the sample exists.
        async with asyncio.timeout(10):
            await echo.hang_ended.wait()
    finally:
        echo.hang_ended = None
    hang = {"grpc_type": "unary", "grpc_service": SVC, "grpc_method": "Hang"}
    assert _value(registry, "grpc_server_handled_total", **hang, grpc_code="DeadlineExceeded") == 1
    assert _value(registry, "grpc_server_started_total", **hang) == 1


def test_grpc_code_labels_follow_go() -> None:
    assert grpc_code_label(grpc.StatusCode.OK) == "OK"
    assert grpc_code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert grpc_code_label(grpc.StatusCode.FAILED_PRECONDITION) == "FailedPrecondition"
    assert grpc_code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
