"""The typed asyncio client library of vgpusim: script vGPU lifecycles against a running stack.

``vgpuctl`` is built on it, and ``examples/`` shows it end to end::

    from vgpusim.client import Stack

    async with Stack.connect(state_dir) as stack:
        for parent in await stack.bus.list_types():
            ...
        dev = await stack.bus.create_device(uuid, parent, type_id, attrs={"name": "value"})

Each service has one client class with one method per RPC (keyword arguments, a deadline on every
unary call, ``timeout=`` to override it); failed calls raise :mod:`vgpusim.common.errors` classes
carrying the server's ``reason`` and ``metadata``; server streams are async iterators.

Glossary:
- stack: the four services of one state dir (see :class:`Stack`).
- bus / iommu / gfx / frontend: the clients of ``vgpu_bus``, ``iommu_type2``, ``gfx_host``,
  ``qemu_frontend``.
- pb modules: the generated messages, re-exported here as ``bus_pb``, ``iommu_pb``, ``gfx_pb``,
  ``frontend_pb`` for enum values and message types (``bus_pb.START_POLICY_AUTO``).
"""

from __future__ import annotations

from vgpusim.client._transport import (
    ALIASES,
    DEFAULT_TIMEOUT,
    SERVICES,
    normalize_target,
    parse_target_override,
    resolve_targets,
)
from vgpusim.client.bus import Attrs, BusClient
from vgpusim.client.frontend import GUEST_DONE, FrontendClient
from vgpusim.client.gfx import GfxClient
from vgpusim.client.iommu import IommuClient, UnmapWatch
from vgpusim.client.stack import Stack
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx_pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as iommu_pb
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as frontend_pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as bus_pb

__all__ = [
    "ALIASES",
    "DEFAULT_TIMEOUT",
    "GUEST_DONE",
    "SERVICES",
    "Attrs",
    "BusClient",
    "FrontendClient",
    "GfxClient",
    "IommuClient",
    "Stack",
    "UnmapWatch",
    "bus_pb",
    "frontend_pb",
    "gfx_pb",
    "iommu_pb",
    "normalize_target",
    "parse_target_override",
    "resolve_targets",
]
