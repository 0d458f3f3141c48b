"""One connection to a whole vgpusim stack: the four typed clients behind one ``async with``.

Usage::

    async with Stack.connect(state_dir) as stack:          # or Stack.connect(targets={...})
        dev = await stack.bus.create_device(uuid, "0000:00:02.0", "i915-GVTg_V5_4")
        vm = await stack.frontend.create_vm(memory_bytes=256 << 20)
        await stack.frontend.attach_device(vm.vm_id, dev.uuid)

Channels are opened on entry, inside the running event loop (as grpc.aio requires), and closed on
exit.  Opening does not connect: a service that is down surfaces on the first call to it, as
:class:`~vgpusim.common.errors.Unavailable` (reason ``PEER_UNAVAILABLE``).

Glossary:
- targets: service -> gRPC address; by default the UNIX sockets of the state dir
  (``unix:<state>/run/<svc>.sock``), overridable per service (a TCP ``host:port`` or a
  ``unix:`` path), see :func:`~vgpusim.client._transport.resolve_targets`.
- timeout: the default deadline of every unary call, in seconds; each method takes ``timeout=``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from vgpusim.client._transport import DEFAULT_TIMEOUT, SERVICES, open_channel, resolve_targets
from vgpusim.client.bus import BusClient
from vgpusim.client.frontend import FrontendClient
from vgpusim.client.gfx import GfxClient
from vgpusim.client.iommu import IommuClient
from vgpusim.common.errors import InvalidArgument

__all__ = ["Stack"]


class Stack:
    """The typed clients of one stack: ``bus``, ``iommu``, ``gfx``, ``frontend``."""

    def __init__(self, targets: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout}", reason="BAD_TIMEOUT")
        missing = [svc for svc in SERVICES if svc not in targets]
        if missing:
            raise InvalidArgument(f"no target for {', '.join(missing)}", reason="BAD_TARGET")
        self.targets: dict[str, str] = {svc: targets[svc] for svc in SERVICES}
        self.timeout = timeout
        self._channels: dict[str, Any] = {}
        self._bus: BusClient | None = None
        self._iommu: IommuClient | None = None
        self._gfx: GfxClient | None = None
        self._frontend: FrontendClient | None = None

    @classmethod
    def connect(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        targets: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Stack:
        """A stack to enter with ``async with``: the state dir's sockets, except the ``targets``
        overrides (service name or alias ``bus``/``iommu``/``gfx``/``frontend`` -> address).
        """
        return cls(resolve_targets(state_dir, targets), timeout=timeout)

    async def open(self) -> None:
        """Open the four channels (idempotent; done by ``async with``)."""
        if self._channels:
            return
        for svc in SERVICES:
            self._channels[svc] = open_channel(self.targets[svc])
        t = self.targets
        self._iommu = IommuClient(
            self._channels["iommu_type2"], target=t["iommu_type2"], timeout=self.timeout
        )
        self._bus = BusClient(self._channels["vgpu_bus"], target=t["vgpu_bus"], timeout=self.timeout)
        self._gfx = GfxClient(self._channels["gfx_host"], target=t["gfx_host"], timeout=self.timeout)
        self._frontend = FrontendClient(
            self._channels["qemu_frontend"], target=t["qemu_frontend"], timeout=self.timeout
        )

    async def close(self) -> None:
        """Close every channel (idempotent); in-flight calls are cancelled."""
        channels, self._channels = self._channels, {}
        self._bus = self._iommu = self._gfx = self._frontend = None
        for channel in reversed(list(channels.values())):
            await channel.close()

    async def __aenter__(self) -> Stack:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @staticmethod
    def _need(client: Any, name: str) -> Any:
        if client is None:
            raise RuntimeError(f"Stack.{name} used outside 'async with Stack.connect(...)'")
        return client

    @property
    def bus(self) -> BusClient:
        """The mdev bus (``vgpu_bus``)."""
        client: BusClient = self._need(self._bus, "bus")
        return client

    @property
    def iommu(self) -> IommuClient:
        """The DMA mapper (``iommu_type2``)."""
        client: IommuClient = self._need(self._iommu, "iommu")
        return client

    @property
    def gfx(self) -> GfxClient:
        """The host graphics driver (``gfx_host``)."""
        client: GfxClient = self._need(self._gfx, "gfx")
        return client

    @property
    def frontend(self) -> FrontendClient:
        """The VM frontend (``qemu_frontend``)."""
        client: FrontendClient = self._need(self._frontend, "frontend")
        return client
