"""The vgpu_bus core as one object: the device bus, the definitions, the event stream.

:class:`VgpuBus` wires the parts together and adds the one behaviour that spans them:
registering a parent autostarts its ``auto`` definitions (mdevctl's udev rule calling
``start-parent-mdevs``). The servicer holds one ``VgpuBus`` and calls:

- ``bus.register_parent(...)`` (this class: registration + autostart);
- ``bus.devices.<op>`` for the device core (create/remove/open/close/list, unregistration);
- ``bus.definitions.<op>`` for mdevctl semantics (define/undefine/modify/start/stop);
- ``bus.subscribe()`` for the event stream, ``bus.statistics()`` for metrics.

Glossary:
- state dir: where the service keeps ``bus.sqlite3`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from types import TracebackType

from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.definitions import Definitions
from vgpusim.vgpu_bus.core.events import Clock, EventHub, Subscription
from vgpusim.vgpu_bus.core.model import BusConfig, BusStatistics, ParentRegistration, TypeSpec
from vgpusim.vgpu_bus.core.ops import OwnerNotifier, VendorOps
from vgpusim.vgpu_bus.core.store import DefinitionStore


class VgpuBus:
    """The whole core of the vgpu_bus service."""

    def __init__(
        self,
        store: DefinitionStore,
        owner_notifier: OwnerNotifier,
        *,
        config: BusConfig | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config or BusConfig()
        self.store = store
        self.events = EventHub(clock, self.config.event_queue_size)
        self.devices = DeviceBus(self.events, owner_notifier, config=self.config, clock=clock)
        self.definitions = Definitions(self.devices, store, self.events, config=self.config, clock=clock)

    @classmethod
    def open(
        cls,
        db_path: str | os.PathLike[str],
        owner_notifier: OwnerNotifier,
        *,
        config: BusConfig | None = None,
        clock: Clock = time.time,
    ) -> VgpuBus:
        """A bus whose definitions live in the SQLite file ``db_path`` (created if missing)."""
        return cls(DefinitionStore(db_path), owner_notifier, config=config, clock=clock)

    async def register_parent(
        self, parent: str, types: Iterable[TypeSpec], vendor: VendorOps, *, autostart: bool = True
    ) -> ParentRegistration:
        """Register ``parent`` (see ``DeviceBus.register_parent``), then autostart its ``auto`` definitions.

        The vendor must already answer its ops: autostart calls ``vendor.create`` before this
        returns. The outcomes are in the result (and in ``definitions.autostart_outcomes()``).
        """
        registration = self.devices.register_parent(parent, types, vendor)
        if not autostart:
            return registration
        return replace(registration, autostart=await self.definitions.autostart(parent))

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        """A subscription to every event from now on (see ``events.py``)."""
        return self.events.subscribe(maxsize)

    def statistics(self) -> BusStatistics:
        """Everything metrics need, in one frozen record."""
        definitions, autostarts = self.definitions.statistics()
        return replace(self.devices.statistics(), definitions=definitions, autostarts_by_result=autostarts)

    def close(self) -> None:
        """End the event subscriptions and close the store (devices are not touched)."""
        self.events.close()
        self.store.close()

    def __enter__(self) -> VgpuBus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
