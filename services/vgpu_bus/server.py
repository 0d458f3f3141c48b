"""The vgpu_bus process: config, the core over its SQLite store, the servicer, and ``serve``.

Run it as ``python -m vgpusim.vgpu_bus.server --state-dir DIR [--config FILE]`` (flags: ``--help``).
It is ready as soon as it listens: the bus depends on no other service (vendors call it first).

:func:`open_runtime` is the wiring, shared by :func:`main` and the tests (which serve
``runtime.add_services`` with ``running_server``). Start-up, unwound in reverse on stop:

1. the definitions store is opened (``<state>/bus.sqlite3`` unless ``--db-path``);
2. a task group is entered; it owns the vendor liveness watches, the event history and the
   clean-up of owners whose ``WatchOwnership`` stream ended;
3. the metrics collector is added to the registry and the servicer is built;
4. on stop: ``stopping`` is set (owners' streams ending now do not close their devices: the bus is
   going away, not the owners), the watches and the history stop, the task group drains, the
   vendor channels and then the store are closed.

Glossary:
- runtime: :class:`BusRuntime`, everything the servicer needs, alive for one ``async with``.
- stopping: the event ``serve`` sets on SIGTERM/SIGINT, before the server stops its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger, setup_logging
from vgpusim.common.server import run_service, serve
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as pb_grpc
from vgpusim.vgpu_bus.clients import VendorRegistry
from vgpusim.vgpu_bus.config import SERVICE, BusServiceConfig, load_bus_config
from vgpusim.vgpu_bus.core import VgpuBus
from vgpusim.vgpu_bus.metrics import TypeAvailability, register_metrics
from vgpusim.vgpu_bus.servicer import EventHistory, OwnerStreams, VgpuBusServicer, close_owned_devices

__all__ = ["SERVICE_NAME", "BusRuntime", "main", "open_runtime"]

_log = get_logger("vgpusim.vgpu_bus.server")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["VgpuBusService"].full_name
"""``vgpusim.vgpu_bus.v1.VgpuBusService``, for health and reflection."""


@dataclass
class BusRuntime:
    """The live objects of one bus service (see :func:`open_runtime`)."""

    config: BusServiceConfig
    bus: VgpuBus
    vendors: VendorRegistry
    owners: OwnerStreams
    history: EventHistory
    availability: TypeAvailability
    servicer: VgpuBusServicer
    registry: CollectorRegistry
    stopping: asyncio.Event

    def add_services(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register the servicer on ``server`` (the ``add_services`` of ``serve``)."""
        pb_grpc.add_VgpuBusServiceServicer_to_server(self.servicer, server)
        return (SERVICE_NAME,)


@contextlib.asynccontextmanager
async def open_runtime(
    config: BusServiceConfig,
    *,
    registry: CollectorRegistry | None = None,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[BusRuntime]:
    """Open the store, start the background tasks and build the servicer, for the block."""
    registry = CollectorRegistry() if registry is None else registry
    stopping = asyncio.Event() if stopping is None else stopping
    owners = OwnerStreams()
    config.db_file.parent.mkdir(parents=True, exist_ok=True)
    with VgpuBus.open(config.db_file, owners, config=config.bus_config()) as bus:
        vendors: VendorRegistry | None = None
        try:
            async with asyncio.TaskGroup() as group:

                def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
                    return group.create_task(work)

                def owner_gone(owner: str) -> None:
                    if stopping.is_set():
                        return
                    try:
                        spawn(close_owned_devices(bus, owner))
                    except RuntimeError:  # the task group is shutting down
                        _log.warning("not closing the devices of %s: the service is stopping", owner)

                vendors = VendorRegistry(
                    bus,
                    spawn,
                    call_timeout=config.vendor_timeout_s,
                    connect_timeout=config.vendor_connect_timeout_s,
                )
                history = EventHistory(bus, config.event_history)
                history_task = spawn(history.run())
                availability = TypeAvailability(bus, spawn)
                owners.on_owner_gone = owner_gone
                register_metrics(registry, bus, history.counts, availability, vendors.parents)
                servicer = VgpuBusServicer(bus, vendors, owners, history, availability)
                try:
                    yield BusRuntime(
                        config, bus, vendors, owners, history, availability, servicer, registry, stopping
                    )
                finally:
                    stopping.set()
                    vendors.stop()
                    history_task.cancel()
        finally:
            if vendors is not None:
                await vendors.aclose()


async def run(config: BusServiceConfig) -> None:
    """Serve the bus until SIGTERM/SIGINT, then stop gracefully (the body of :func:`main`)."""
    setup_logging(SERVICE, level=config.log_level, fmt=config.log_format)
    registry = CollectorRegistry()
    stopping = asyncio.Event()
    async with (
        open_runtime(config, registry=registry, stopping=stopping) as runtime,
        contextlib.AsyncExitStack() as stack,
    ):
        _log.info("definitions in %s", config.db_file)
        if config.sysfs:
            from vgpusim.vgpu_bus.sysfs.server import SysfsServer  # pyfuse3 only when asked for

            mount = config.sysfs_mountpoint
            mount.mkdir(parents=True, exist_ok=True)
            await stack.enter_async_context(
                SysfsServer(runtime.bus, asyncio.get_running_loop(), mount, state_dir=config.paths.state_dir)
            )
            _log.info("sysfs view mounted on %s", mount)
        await serve(
            name=SERVICE,
            config=config,
            add_services=runtime.add_services,
            registry=registry,
            stop_event=stopping,
            configure_logging=False,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 after a clean stop, 1 when start-up fails (unreadable store...), 2 for bad config."""
    try:
        config = load_bus_config(argv)
    except VgpusimError as error:
        sys.stderr.write(f"vgpu_bus: {error}\n")
        return 2
    return run_service(run(config))


if __name__ == "__main__":
    raise SystemExit(main())
