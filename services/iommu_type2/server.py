"""The iommu_type2 process: config, wiring, and the shared server bootstrap.

``python -m vgpusim.iommu_type2.server --state-dir DIR [--config FILE] [--<field> VALUE...]``
serves ``vgpusim.iommu_type2.v1.IommuType2Service`` on ``unix:<state>/run/iommu_type2.sock``
(plus health, reflection and ``/metrics``) until SIGTERM/SIGINT. It depends on no other
service, so it reports SERVING as soon as it listens.

Wiring (:func:`build_service`): the stack's shm dir is created if missing
(``StackPaths.ensure_shm_dir``); a :class:`~.segments.ShmSegmentStore` over ``<state>/shm``; the
:class:`~vgpusim.iommu_type2.core.Mapper` with the configured tunables; the metrics collector and
histogram on the service's registry; the servicer. On stop, after the gRPC server has ended
every call (so no device listens any more), every owner's containers are destroyed by force and
the store unmaps its segments: the process leaves no mapping behind, also when run in-process.

Glossary:
- service name: ``iommu_type2`` (socket, status file, config table, env prefix).
- full name: ``vgpusim.iommu_type2.v1.IommuType2Service`` (health, reflection).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from vgpusim.common.errors import VgpusimError
from vgpusim.common.server import ServerHandle, run_service, running_server, serve
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.config import SERVICE, IommuServiceConfig, load_iommu_config
from vgpusim.iommu_type2.core import Mapper
from vgpusim.iommu_type2.metrics import register_metrics
from vgpusim.iommu_type2.segments import ShmSegmentStore
from vgpusim.iommu_type2.servicer import IommuType2Servicer

__all__ = ["FULL_NAME", "IommuService", "build_service", "main", "running_iommu", "serve_iommu"]

FULL_NAME: str = pb.DESCRIPTOR.services_by_name["IommuType2Service"].full_name


@dataclass
class IommuService:
    """The wired service (what :func:`serve_iommu` and :func:`running_iommu` start)."""

    config: IommuServiceConfig
    store: ShmSegmentStore
    mapper: Mapper
    registry: CollectorRegistry
    servicer: IommuType2Servicer

    def add_services(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register the servicer on ``server``; returns its full name (``AddServices``)."""
        pb_grpc.add_IommuType2ServiceServicer_to_server(self.servicer, server)
        return (FULL_NAME,)

    async def close(self) -> None:
        """Destroy every container by force, then unmap every segment (an ``on_stop`` hook)."""
        for owner in self.mapper.owners():
            await self.mapper.destroy_owner(owner)
        self.store.close()


def build_service(config: IommuServiceConfig, registry: CollectorRegistry | None = None) -> IommuService:
    """Wire store, mapper, metrics and servicer for ``config`` (creates the shm dir if missing)."""
    config.paths.ensure_shm_dir()
    store = ShmSegmentStore(config.paths.shm_dir)
    mapper = Mapper(store, config.mapper_config())
    registry = CollectorRegistry() if registry is None else registry
    metrics = register_metrics(registry, mapper)
    servicer = IommuType2Servicer(
        mapper, store, metrics, default_memlock_limit_bytes=config.default_memlock_limit_bytes
    )
    return IommuService(config, store, mapper, registry, servicer)


@contextlib.asynccontextmanager
async def running_iommu(
    config: IommuServiceConfig, registry: CollectorRegistry | None = None
) -> AsyncIterator[tuple[IommuService, ServerHandle]]:
    """The service running for the ``async with`` block (tests, in-process stacks)."""
    service = build_service(config, registry)
    async with running_server(
        SERVICE, config, service.add_services, service.registry, on_stop=[service.close]
    ) as handle:
        yield service, handle


async def serve_iommu(config: IommuServiceConfig) -> None:
    """Serve until SIGTERM/SIGINT (see :func:`vgpusim.common.server.serve`)."""
    service = build_service(config)
    await serve(
        name=SERVICE,
        config=config,
        add_services=service.add_services,
        registry=service.registry,
        on_stop=[service.close],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; returns the exit status (2 for a bad config)."""
    try:
        config = load_iommu_config(argv)
    except VgpusimError as error:
        print(f"iommu_type2: {error}", file=sys.stderr)
        return 2
    return run_service(serve_iommu(config))


if __name__ == "__main__":
    raise SystemExit(main())
