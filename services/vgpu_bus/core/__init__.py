"""The domain core of vgpu_bus: the mediated-device bus and mdevctl-style definitions.

No gRPC and no generated code here: frozen dataclasses in and out, errors from
``vgpusim.common.errors``, peers injected as Protocol ops tables. Modules:

- ``model``: the records (``DeviceInfo``, ``Definition``, ``Event``, ``BusConfig``...);
- ``naming``: UUID / type-id / name validation in the kernel's order;
- ``ops``: the ``VendorOps`` and ``OwnerNotifier`` Protocols; ``fakes``: their in-memory fakes;
- ``states``: the device state machine; ``devices``/``parents``: live records;
- ``bus``: ``DeviceBus`` (create/remove/open/close, parents, locking);
- ``store``: ``DefinitionStore`` (SQLite); ``definitions``: ``Definitions`` (mdevctl semantics);
- ``events``: ``EventHub`` and subscriptions; ``mdevctl_json``: mdevctl's JSON shapes;
- ``service``: ``VgpuBus``, all of it wired together.

Glossary: see ``model`` (parent, type, device, owner, definition).
"""

from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.definitions import Definitions
from vgpusim.vgpu_bus.core.events import EventHub, EventStatistics, Subscription
from vgpusim.vgpu_bus.core.model import (
    Attr,
    AutostartOutcome,
    AutostartResult,
    BusConfig,
    BusStatistics,
    DefinedDevice,
    Definition,
    DeviceInfo,
    DeviceState,
    Event,
    EventKind,
    OpenedDevice,
    ParentInfo,
    ParentRegistration,
    ParentState,
    StartPolicy,
    TypeInfo,
    TypeSpec,
)
from vgpusim.vgpu_bus.core.naming import parse_uuid
from vgpusim.vgpu_bus.core.ops import OwnerNotifier, VendorOps
from vgpusim.vgpu_bus.core.service import VgpuBus
from vgpusim.vgpu_bus.core.store import DefinitionStore

__all__ = [
    "Attr",
    "AutostartOutcome",
    "AutostartResult",
    "BusConfig",
    "BusStatistics",
    "DefinedDevice",
    "Definition",
    "DefinitionStore",
    "Definitions",
    "DeviceBus",
    "DeviceInfo",
    "DeviceState",
    "Event",
    "EventHub",
    "EventKind",
    "EventStatistics",
    "OpenedDevice",
    "OwnerNotifier",
    "ParentInfo",
    "ParentRegistration",
    "ParentState",
    "StartPolicy",
    "Subscription",
    "TypeInfo",
    "TypeSpec",
    "VendorOps",
    "VgpuBus",
    "parse_uuid",
]
