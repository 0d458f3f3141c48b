"""Server bootstrap: one grpc.aio server per service with health, reflection, metrics and status.

A service's ``main()`` loads its config and calls :func:`run_service` on :func:`serve`::

    def main() -> int:
        config = load_config(BusConfig, "vgpu_bus")
        return run_service(serve(name="vgpu_bus", config=config, add_services=add, registry=reg))

:func:`running_server` is the same life cycle as an async context manager, for tests and for
in-process stacks: ``async with running_server("vgpu_bus", config, add) as handle: handle.target``.

Life cycle (the unwinding is the exact reverse, also on failure):

1. the run dir is created; a stale socket file is removed (a live one is an error);
2. the server is created in the running loop with the metrics interceptor; ``add_services``
   registers the servicers and returns their full names; health (``""`` and every name start
   NOT_SERVING) and reflection are added; the UNIX socket is bound under umask 0177 (mode 0600),
   plus the optional TCP port (TLS/mTLS when ``tls_cert``/``tls_client_ca`` are set);
3. the server and the ``/metrics`` endpoint start; the status file says ``starting``;
4. ``ready()`` (waiting for dependencies) returns; health flips to SERVING; status ``serving``;
5. on stop (SIGTERM/SIGINT for :func:`serve`): health NOT_SERVING, status ``stopping``,
   ``server.stop(grace)``, the ``on_stop`` hooks in reverse order, metrics endpoint stopped,
   socket and status file removed.

Glossary:
- add_services: ``Callable[[grpc.aio.Server], Sequence[str]]`` registering servicers and
  returning their full names (``vgpusim.bus.v1.BusService``) for health and reflection.
- ready: an ``async`` callable that returns once the service can serve (peers reachable).
- handle: :class:`ServerHandle`, what is known about a started server (target, ports, URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from vgpusim.common.clients import TlsConfig, open_channel
from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.errors import AlreadyExists, Busy, VgpusimError
from vgpusim.common.logs import get_logger, setup_logging
from vgpusim.common.metrics import GrpcMetricsInterceptor, MetricsServer
from vgpusim.common.paths import check_socket_path
from vgpusim.common.rpc import SERVER_OPTIONS
from vgpusim.common.status import ServiceStatus, remove_status, write_status

__all__ = ["AddServices", "Hook", "ServerHandle", "run_service", "running_server", "serve"]

_log = get_logger(__name__)

AddServices = Callable[[grpc.aio.Server], Sequence[str]]
Hook = Callable[[], Awaitable[None]]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerHandle:
    """A started server: where to reach it and how to flip its health."""

    name: str
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    services: tuple[str, ...]
    target: str  # what clients dial: "unix:/..." (or the TCP listen address)
    socket_path: Path | None
    tcp_target: str | None  # "host:port" actually bound, if TCP is on
    metrics_url: str | None
    status_file: Path | None
    registry: CollectorRegistry
    state: str = "starting"

    async def set_serving(self, serving: bool = True) -> None:
        """Set health of the whole server and of every service to SERVING / NOT_SERVING."""
        for service in ("", *self.services):
            await self.health.set(service, _SERVING if serving else _NOT_SERVING)

    def channel(self, *, tls: TlsConfig | None = None) -> grpc.aio.Channel:
        """A new client channel to :attr:`target` (the caller closes it)."""
        return open_channel(self.target, tls=tls)

    def _write_status(self, state: str) -> None:
        self.state = state
        if self.status_file is None:
            return
        socket_text = None if self.socket_path is None else str(self.socket_path)
        write_status(
            self.status_file,
            ServiceStatus(self.name, os.getpid(), socket_text, self.tcp_target, self.metrics_url, state),
        )


def _claim_socket(target: str) -> Path:
    """The socket path of ``target``, after removing a stale socket file there.

    Raises AlreadyExists if a server answers on it or the path is not a socket.
    """
    path = check_socket_path(target.removeprefix("unix:").removeprefix("//"))
    if not os.path.lexists(path):
        return path
    if not path.is_socket():
        raise AlreadyExists(f"{path} exists and is not a socket", reason="SOCKET_PATH_TAKEN")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return path
    finally:
        probe.close()
    raise AlreadyExists(f"another server is listening on {path}", reason="SERVICE_RUNNING")


def _add_port(add: Callable[..., int], address: str, *creds: Any) -> int:
    """Call ``server.add_*_port``; a failed bind (grpc raises RuntimeError) becomes Busy."""
    try:
        port = add(address, *creds)
    except RuntimeError:
        port = 0
    if not port:
        raise Busy(f"cannot listen on {address}", reason="LISTEN_FAILED", metadata={"address": address})
    return port


def _bind_unix(server: grpc.aio.Server, target: str, path: Path) -> None:
    """Bind ``target`` so that the socket file is created with mode 0600."""
    old = os.umask(0o177)
    try:
        _add_port(server.add_insecure_port, target)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def _bind_tcp(server: grpc.aio.Server, address: str, config: BaseServiceConfig) -> str:
    if config.tls_cert:
        ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        port = _add_port(server.add_secure_port, address, creds)
    else:
        port = _add_port(server.add_insecure_port, address)
    return f"{address.rpartition(':')[0]}:{port}"


async def _shutdown(handle: ServerHandle, grace: float) -> None:
    _log.info("stopping", extra={"grace_s": grace})
    await handle.health.enter_graceful_shutdown()
    handle._write_status("stopping")
    await handle.server.stop(grace)


@contextlib.asynccontextmanager
async def running_server(
    name: str,
    config: BaseServiceConfig,
    add_services: AddServices,
    registry: CollectorRegistry | None = None,
    *,
    ready: Hook | None = None,
    on_stop: Sequence[Hook] = (),
    write_status_file: bool = True,
) -> AsyncIterator[ServerHandle]:
    """Run a service's server for the duration of the ``async with`` block (see the module doc).

    ``registry`` defaults to a fresh one.  The handle is yielded once health says SERVING.
    """
    registry = CollectorRegistry() if registry is None else registry
    paths = config.paths
    paths.ensure_dirs()
    target = config.listen_target(name)
    status_file = paths.status_file(name) if write_status_file else None
    async with contextlib.AsyncExitStack() as stack:
        socket_path = _claim_socket(target) if target.startswith("unix:") else None
        if socket_path is not None:
            stack.callback(socket_path.unlink, missing_ok=True)
        if status_file is not None:
            stack.callback(remove_status, status_file)
        metrics: MetricsServer | None = None
        if config.metrics_port >= 0:
            metrics = MetricsServer(registry, config.metrics_host, config.metrics_port)
            await metrics.start()
            stack.push_async_callback(metrics.stop)
        for hook in on_stop:
            stack.push_async_callback(hook)
        server = grpc.aio.server(interceptors=[GrpcMetricsInterceptor(registry)], options=SERVER_OPTIONS)
        stack.push_async_callback(server.stop, None)
        names = tuple(add_services(server))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service in ("", *names):
            await health_servicer.set(service, _NOT_SERVING)
        reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if socket_path is not None:
            _bind_unix(server, target, socket_path)
        else:
            target = _bind_tcp(server, target, config)
        tcp_target = _bind_tcp(server, config.tcp_listen, config) if config.tcp_listen else None
        metrics_url = None if metrics is None else metrics.url
        handle = ServerHandle(
            name,
            server,
            health_servicer,
            names,
            target,
            socket_path,
            tcp_target,
            metrics_url,
            status_file,
            registry,
        )
        await server.start()
        stack.push_async_callback(_shutdown, handle, config.stop_grace_s)
        handle._write_status("starting")
        _log.info("listening", extra={"target": target, "tcp": tcp_target, "metrics_url": metrics_url})
        if ready is not None:
            await ready()
        await handle.set_serving(True)
        handle._write_status("serving")
        _log.info("serving", extra={"services": list(names)})
        yield handle


async def serve(
    *,
    name: str,
    config: BaseServiceConfig,
    add_services: AddServices,
    registry: CollectorRegistry,
    ready: Hook | None = None,
    on_stop: Sequence[Hook] = (),
    stop_event: asyncio.Event | None = None,
    handle_signals: bool = True,
    configure_logging: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop_event``), then stop gracefully; see the module doc.

    Also sets up logging from the config and adds process metrics to ``registry``.  A signal
    during start-up (while ``ready()`` waits) cancels the start-up and returns normally.
    """
    if configure_logging:
        setup_logging(name, level=config.log_level, fmt=config.log_format)
    for collector in (ProcessCollector, PlatformCollector):
        with contextlib.suppress(ValueError):  # already registered by the caller
            collector(registry=registry)
    stop = asyncio.Event() if stop_event is None else stop_event
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    serving = False

    def on_signal(sig: signal.Signals) -> None:
        _log.info("received %s", sig.name)
        stop.set()
        if not serving:
            main.cancel()

    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with running_server(name, config, add_services, registry, ready=ready, on_stop=on_stop):
            serving = True
            await stop.wait()
    except asyncio.CancelledError:
        if stop.is_set() and not serving and main.uncancel() == 0:
            _log.info("start-up interrupted")
            return
        raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    _log.info("stopped")


def run_service(main: Coroutine[Any, Any, None]) -> int:
    """Run ``main`` on a uvloop event loop; return the process exit status.

    0 on a clean stop, 1 when start-up failed with a domain error (logged), 130 on a
    KeyboardInterrupt outside :func:`serve`'s handlers.  Other exceptions propagate.
    """
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    except VgpusimError as exc:
        _log.error("failed: %s", exc, extra={"reason": exc.reason, "error_metadata": exc.metadata})
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
