"""Prometheus plumbing shared by the services: the ``/metrics`` endpoint and gRPC RED metrics.

:class:`MetricsServer` serves one :class:`~prometheus_client.CollectorRegistry` over HTTP from the
service's own event loop (no threads), on ``host:port`` (port 0 = ephemeral; :attr:`MetricsServer.url`
says where it ended up).  :class:`GrpcMetricsInterceptor` is a grpc.aio server interceptor that
exports the go-grpc-prometheus series, so existing dashboards work unchanged:

- ``grpc_server_started_total{grpc_type,grpc_service,grpc_method}``
- ``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}``
- ``grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`` (histogram, 10 us..10 s)
- ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total`` (same labels as started)

Unlike py-grpc-prometheus it counts RPCs ended by ``context.abort`` with their real code (read
from ``context.code()`` once the handler is done), for unary and streaming RPCs alike.

``_created`` series are turned off: ``vgpusim.common`` sets ``PROMETHEUS_DISABLE_CREATED_SERIES``
before prometheus_client can be imported through it, and this module also calls
``disable_created_metrics()`` (a process-wide switch) in case something imported it earlier.

Glossary:
- grpc_type: ``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream``.
- grpc_code: the status code spelled as Go does (``OK``, ``NotFound``, ``Canceled``...).
- RED: rate, errors, duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

__all__ = ["HANDLING_BUCKETS", "GrpcMetricsInterceptor", "MetricsServer", "grpc_code_label"]

_disable_created: Callable[[], None] = disable_created_metrics  # untyped in prometheus_client
_disable_created()
_log = logging.getLogger(__name__)

HANDLING_BUCKETS: tuple[float, ...] = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3)
HANDLING_BUCKETS += (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


def grpc_code_label(code: grpc.StatusCode) -> str:
    """``code`` as go-grpc-prometheus spells it: ``NOT_FOUND`` -> ``NotFound``."""
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


class MetricsServer:
    """A minimal HTTP/1.1 server for ``GET /metrics`` on the running loop.

    Use ``async with MetricsServer(registry) as m: m.url`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` (the real port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind and start serving; :attr:`port` is then the bound port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, end open connections and wait for their handlers."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, ctype, body = self._respond(head)
                headers = (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(headers.encode("latin-1"))
                if not head.startswith(b"HEAD "):
                    writer.write(body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path != "/metrics":
            return 404, "text/plain", b"see /metrics\n"
        accept = next((ln.split(":", 1)[1] for ln in lines[1:] if ln.lower().startswith("accept:")), "")
        encoder, ctype = choose_encoder(accept.strip())
        return 200, ctype, encoder(self.registry)


class _MethodSeries:
    """The label children of one (type, service, method), looked up once instead of per call."""

    def __init__(self, owner: GrpcMetricsInterceptor, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = owner.started.labels(*labels)
        self.received = owner.msg_received.labels(*labels)
        self.sent = owner.msg_sent.labels(*labels)
        self.seconds = owner.seconds.labels(*labels)
        self._handled = owner.handled
        self._by_code: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self.labels, code)
        return child


class _RpcMeter:
    """Counts one RPC: started at construction, messages as they pass, handled at :meth:`done`."""

    __slots__ = ("series", "started")

    def __init__(self, series: _MethodSeries) -> None:
        self.series = series
        self.started = time.perf_counter()
        series.started.inc()

    def received(self) -> None:
        self.series.received.inc()

    def sent(self) -> None:
        self.series.sent.inc()

    def done(self, context: Any, exc: BaseException | None) -> None:
        code = context.code()
        if exc is None:
            code = code or grpc.StatusCode.OK
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            left = context.time_remaining()
            expired = left is not None and left <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        elif not isinstance(exc, grpc.aio.AbortError) or code is None:
            code = grpc.StatusCode.UNKNOWN  # what grpc.aio sends for an escaped exception
        self.series.handled(grpc_code_label(code)).inc()
        self.series.seconds.observe(time.perf_counter() - self.started)


class _CountingContext:
    """A servicer context proxy that counts ``read()`` and ``write()`` (reader/writer-style RPCs)."""

    def __init__(self, context: Any, meter: _RpcMeter) -> None:
        self._context = context
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._meter.received()
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._meter.sent()


async def _counted(requests: AsyncIterator[Any], meter: _RpcMeter) -> AsyncIterator[Any]:
    async for message in requests:
        meter.received()
        yield message


class GrpcMetricsInterceptor:
    """grpc.aio server interceptor exporting the go-grpc-prometheus metrics into ``registry``.

    A virtual subclass of ``grpc.aio.ServerInterceptor`` (registered below).  Synchronous
    handlers, which grpc.aio runs in a thread pool, are passed through uncounted.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        base = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started", "RPCs started on the server.", base, registry=registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status.",
            (*base, "grpc_code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time the server took to handle an RPC.",
            base,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received", "Messages received from clients.", base, registry=registry
        )
        self.msg_sent = Counter("grpc_server_msg_sent", "Messages sent to clients.", base, registry=registry)
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, instrumented handler)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        instrumented = self._instrument(handler, details)
        self._wrapped[details.method] = (handler, instrumented)
        return instrumented

    def _instrument(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        service, _, method = str(details.method).lstrip("/").rpartition("/")
        req_stream, resp_stream = bool(handler.request_streaming), bool(handler.response_streaming)
        kind = {(False, False): "unary", (True, False): "client_stream"}.get(
            (req_stream, resp_stream), "bidi_stream" if req_stream else "server_stream"
        )
        labels = (kind, service, method)
        make = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[kind]
        behavior = {
            "unary": handler.unary_unary,
            "client_stream": handler.stream_unary,
            "server_stream": handler.unary_stream,
            "bidi_stream": handler.stream_stream,
        }[kind]
        wrapped = self._wrap(behavior, labels, req_stream, resp_stream)
        if wrapped is None:
            return handler
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self, behavior: Any, labels: tuple[str, str, str], req_stream: bool, resp_stream: bool
    ) -> Callable[[Any, Any], Any] | None:
        series = _MethodSeries(self, labels)

        def begin(request: Any, context: Any) -> tuple[_RpcMeter, Any, Any]:
            meter = _RpcMeter(series)
            if req_stream:
                request = _counted(request, meter)
            else:
                meter.received()
            return (
                meter,
                request,
                (_CountingContext(context, meter) if req_stream or resp_stream else context),
            )

        if inspect.isasyncgenfunction(behavior):

            async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
                meter, request, ctx = begin(request, context)
                try:
                    async with contextlib.aclosing(behavior(request, ctx)) as messages:
                        async for message in messages:
                            meter.sent()
                            yield message
                except BaseException as exc:
                    meter.done(context, exc)
                    raise
                meter.done(context, None)

            return generator
        if inspect.iscoroutinefunction(behavior):

            async def coroutine(request: Any, context: Any) -> Any:
                meter, request, ctx = begin(request, context)
                try:
                    response = await behavior(request, ctx)
                except BaseException as exc:
                    meter.done(context, exc)
                    raise
                if not resp_stream and response is not None:
                    meter.sent()
                meter.done(context, None)
                return response

            return coroutine
        _log.debug("not instrumenting synchronous handler %r", behavior)
        return None


grpc.aio.ServerInterceptor.register(GrpcMetricsInterceptor)
