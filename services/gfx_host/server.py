"""``python -m vgpusim.gfx_host.server``: the host graphics driver process.

Start-up: load the GPUs, start the channel broker and the GPU threads, serve the vendor ops and
the host API, wait for iommu_type2 and vgpu_bus to be SERVING, then register every GPU as an mdev
parent (the bus calls the vendor ops back, e.g. to autostart definitions) and report SERVING.
Stop: unregister the parents (the bus revokes their devices), release what is still open, stop
the threads and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from vgpusim.common.clients import open_channel, wait_for_serving
from vgpusim.common.config import ENV_CONFIG_FILE, load_config
from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.common.server import run_service, serve
from vgpusim.gfx_host.broker import ChannelBroker
from vgpusim.gfx_host.clients import BusClient, IommuClient, SegmentCache
from vgpusim.gfx_host.config import GfxHostConfig
from vgpusim.gfx_host.core.gpu import GfxHost
from vgpusim.gfx_host.core.host_config import HostConfig, default_host_config, load_host_config
from vgpusim.gfx_host.host import HostService
from vgpusim.gfx_host.metrics import register_metrics
from vgpusim.gfx_host.servicer import add_services

_log = get_logger("vgpusim.gfx_host")


def host_config_for(config: GfxHostConfig, config_file: str | None) -> HostConfig:
    """The GPUs: ``host_config``, else the ``[[gpu]]`` tables of the config file, else the default."""
    if config.host_config:
        return load_host_config(Path(config.host_config))
    if config_file:
        import tomllib

        with open(config_file, "rb") as f:
            if tomllib.load(f).get("gpu"):
                return load_host_config(Path(config_file))
    return default_host_config()


async def amain(config: GfxHostConfig, host_config: HostConfig) -> None:
    paths = config.paths
    shm_dir = paths.ensure_shm_dir()
    host = GfxHost(host_config)
    iommu_channel = open_channel(config.iommu_target or paths.target("iommu_type2"))
    bus_channel = open_channel(config.bus_target or paths.target("vgpu_bus"))
    broker = ChannelBroker(paths.chan_socket)
    service = HostService(
        host,
        IommuClient(iommu_channel),
        SegmentCache(shm_dir),
        broker,
        shm_dir,
        watchdog_us=config.watchdog_ms * 1000,
    )
    bus = BusClient(bus_channel)
    registry = CollectorRegistry()
    register_metrics(registry, service)
    endpoint = config.listen_target("gfx_host")
    registered: list[str] = []

    async def ready() -> None:
        await broker.start()
        service.start()
        await wait_for_serving(iommu_channel, timeout=config.dependency_timeout_s)
        await wait_for_serving(bus_channel, timeout=config.dependency_timeout_s)
        for gpu in host.gpus():
            await bus.register_parent(gpu, endpoint)
            registered.append(gpu.parent)
            _log.info("parent registered", extra={"parent": gpu.parent, "model": gpu.model.name})

    async def unregister() -> None:
        for parent in reversed(registered):
            with contextlib.suppress(VgpusimError):
                await bus.unregister_parent(parent, timeout_s=5.0)

    async def close() -> None:
        await service.stop()
        await broker.stop()
        await iommu_channel.close()
        await bus_channel.close()

    # Parents are unregistered while the vendor ops are still served (the bus releases their
    # open devices through them), so SIGTERM is handled here before the server stops.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def shutdown() -> None:
        await unregister()
        stop.set()

    def on_signal() -> None:
        if not tasks:
            tasks.add(loop.create_task(shutdown()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await serve(
        name="gfx_host",
        config=config,
        add_services=add_services(service),
        registry=registry,
        ready=ready,
        on_stop=(close,),
        stop_event=stop,
        handle_signals=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(args)
    config = load_config(GfxHostConfig, "gfx_host", args)
    host_config = host_config_for(config, known.config or os.environ.get(ENV_CONFIG_FILE))
    return run_service(amain(config, host_config))


if __name__ == "__main__":
    raise SystemExit(main())
