"""``python -m vgpusim.qemu_frontend.server --state-dir DIR [--config FILE]``: the frontend process.

Start-up (:func:`vgpusim.common.server.serve`): the shared-memory dir is created, the server
listens with health NOT_SERVING; ``ready`` waits until iommu_type2, vgpu_bus and gfx_host report
SERVING and opens the owner's KeepAlive and WatchOwnership streams; then health says SERVING.
Stop (SIGTERM/SIGINT): the server stops accepting calls, then every VM is destroyed (guests
stopped, vGPUs closed on the bus, RAM unmapped and unlinked), the owner streams end and the
channels to the peers close.

Glossary:
- peers: the three services the frontend calls (see :mod:`.clients`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from vgpusim.common.config import load_config
from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.common.server import Hook, run_service, serve
from vgpusim.qemu_frontend.clients import GrpcPeers
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.frontend import Frontend
from vgpusim.qemu_frontend.metrics import FrontendMetrics
from vgpusim.qemu_frontend.servicer import add_services
from vgpusim.qemu_frontend.vcpu import GuestLauncher, builtin_launcher

__all__ = ["Wiring", "amain", "main", "wire"]

SERVICE = "qemu_frontend"
_log = get_logger("vgpusim.qemu_frontend.server")


@dataclass
class Wiring:
    """The frontend's objects and the two hooks of its server's life cycle."""

    frontend: Frontend
    peers: GrpcPeers
    registry: CollectorRegistry
    ready: Hook
    close: Hook


def wire(config: FrontendConfig, *, launcher: GuestLauncher = builtin_launcher) -> Wiring:
    """Build the frontend on gRPC peers (inside the running loop); ``ready`` and ``close`` for the server."""
    shm_dir = config.paths.ensure_shm_dir()
    registry = CollectorRegistry()
    peers = GrpcPeers(config)
    frontend = Frontend(config, peers, shm_dir=shm_dir, metrics=FrontendMetrics(registry), launcher=launcher)

    async def ready() -> None:
        await peers.wait_serving(config.dependency_timeout_s)
        await frontend.start(config.dependency_timeout_s)
        _log.info("frontend ready", extra={"owner": frontend.owner, "shm_dir": str(shm_dir)})

    async def close() -> None:
        try:
            await frontend.close()
        finally:
            await peers.close()

    return Wiring(frontend, peers, registry, ready, close)


async def amain(config: FrontendConfig) -> None:
    """Serve until SIGTERM/SIGINT (see the module doc)."""
    w = wire(config)
    await serve(
        name=SERVICE,
        config=config,
        add_services=add_services(w.frontend),
        registry=w.registry,
        ready=w.ready,
        on_stop=(w.close,),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Load the config (flags, env, ``--config`` file) and run the frontend; the exit status."""
    try:
        config = load_config(FrontendConfig, SERVICE, sys.argv[1:] if argv is None else list(argv))
    except VgpusimError as exc:
        print(f"{SERVICE}: {exc}", file=sys.stderr)
        return 2
    return run_service(amain(config))


if __name__ == "__main__":
    raise SystemExit(main())
