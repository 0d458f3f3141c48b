"""Domain errors round-trip through a real grpc.aio server on a UNIX socket."""

from __future__ import annotations

import errno
import logging
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from vgpusim.common import clients, errors, rpc


def _rich(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in exc.trailing_metadata() or ():
        if key == rpc.STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin trailer")


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
async def test_domain_error_reaches_client_with_code_and_error_info(
    channel: Any, echo: ModuleType, cls: type[errors.VgpusimError]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(echo.method("Fail"))(cls.__name__.encode(), timeout=5)
    assert caught.value.code() == cls.code
    assert caught.value.details() == f"{cls.__name__} raised on purpose"
    info = rpc.error_info_of(_rich(caught.value))
    assert info is not None
    assert info.reason == f"TEST_{cls.__name__.upper()}"
    assert info.domain == errors.ERROR_DOMAIN
    assert dict(info.metadata) == {"thing": "42", "errno": errno.errorcode[cls.default_errno]}


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
async def test_clients_call_rebuilds_the_domain_class(
    channel: Any, echo: ModuleType, cls: type[errors.VgpusimError]
) -> None:
    with pytest.raises(errors.VgpusimError) as caught:
        await clients.call(channel.unary_unary(echo.method("Fail")), cls.__name__.encode(), peer="echo")
    err = caught.value
    # Unavailable with a custom reason comes back as Busy: UNAVAILABLE + reason is how Busy travels.
    expected = errors.Busy if cls is errors.Unavailable else cls
    assert type(err) is expected
    assert err.reason == f"TEST_{cls.__name__.upper()}"
    assert err.metadata["thing"] == "42"
    assert err.errno == cls.default_errno


async def test_unexpected_exception_is_internal_and_logged(
    channel: Any, echo: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(echo.method("Boom"))(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    info = rpc.error_info_of(_rich(caught.value))
    assert info is not None and info.reason == "INTERNAL"
    assert info.metadata["exception"] == "RuntimeError"
    assert "kaboom" in caught.value.details()
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError


async def test_internal_is_rebuilt_as_base_error(channel: Any, echo: ModuleType) -> None:
    with pytest.raises(errors.VgpusimError) as caught:
        await clients.call(channel.unary_unary(echo.method("Boom")), b"")
    assert type(caught.value) is errors.VgpusimError
    assert caught.value.reason == "INTERNAL"


async def test_direct_abort_passes_through(channel: Any, echo: ModuleType) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(echo.method("Abort"))(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "aborted by hand"
    with pytest.raises(errors.NotFound) as rebuilt:
        await clients.call(channel.unary_unary(echo.method("Abort")), b"", peer="echo")
    assert rebuilt.value.reason == errors.NotFound.default_reason
    assert rebuilt.value.metadata["peer"] == "echo"


async def test_server_stream_error_after_items(channel: Any, echo: ModuleType) -> None:
    seen: list[bytes] = []

    async def drain() -> None:
        async for item in clients.stream(
            channel.unary_stream(echo.method("Count")), b"3:Exhausted", timeout=5
        ):
            seen.append(item)

    with pytest.raises(errors.Exhausted) as caught:
        await drain()
    assert seen == [b"0", b"1", b"2"]
    assert caught.value.reason == "TEST_EXHAUSTED"


async def test_streaming_kinds_work_through_the_decorator(channel: Any, echo: ModuleType) -> None:
    assert await channel.stream_unary(echo.method("Sum"))(iter([b"ab", b"cde"]), timeout=5) == b"5"
    chat = channel.stream_stream(echo.method("Chat"))(iter([b"x", b"y"]), timeout=5)
    assert [m async for m in chat] == [b"X", b"Y"]
    written = channel.unary_stream(echo.method("Write"))(b"w", timeout=5)
    assert [m async for m in written] == [b"w", b"w", b"w"]


def test_rpc_method_rejects_sync_functions() -> None:
    def sync(request: bytes, context: Any) -> bytes:
        return request

    with pytest.raises(TypeError, match="async"):
        rpc.rpc_method(sync)  # type: ignore[arg-type]


def test_status_round_trip_without_a_server() -> None:
    err = errors.TooBig("too many pages", reason="TOO_MANY_PAGES", metadata={"max_pages": "512"})
    status = rpc.status_for(err)
    assert status.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    grpc_status = rpc.grpc_status_for(status)
    assert grpc_status.code == grpc.StatusCode.OUT_OF_RANGE
    assert dict(grpc_status.trailing_metadata)[rpc.STATUS_DETAILS_KEY] == status.SerializeToString()
    back = rpc.error_from_status(grpc.StatusCode.OUT_OF_RANGE, "too many pages", status)
    assert type(back) is errors.TooBig
    assert (back.reason, back.errno, back.metadata) == (err.reason, errno.E2BIG, err.metadata)


def test_foreign_or_missing_error_info_falls_back_to_the_code() -> None:
    foreign = rpc.rich_status(grpc.StatusCode.NOT_FOUND, "gone", "SOMETHING")
    foreign.details[0].Clear()
    back = rpc.error_from_status(grpc.StatusCode.NOT_FOUND, "gone", foreign, peer="bus")
    assert type(back) is errors.NotFound and back.reason == "NOT_FOUND"
    down = rpc.error_from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None, peer="vgpu_bus")
    assert type(down) is errors.Unavailable
    assert "vgpu_bus is unavailable" in down.message and down.metadata["peer"] == "vgpu_bus"


def test_malformed_reason_from_server_keeps_the_class() -> None:
    status = rpc.rich_status(grpc.StatusCode.ALREADY_EXISTS, "dup", "x")
    back = rpc.error_from_status(grpc.StatusCode.ALREADY_EXISTS, "dup", status)
    assert type(back) is errors.AlreadyExists and back.reason == "ALREADY_EXISTS"
