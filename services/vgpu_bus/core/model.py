"""The frozen records that go in and out of the vgpu_bus core.

Everything a caller (the gRPC servicer, ``vgpuctl`` through it, tests) sends to or gets from the
core is one of these immutable dataclasses or enums; none holds a reference to live state, so a
record can be kept, compared and translated to protobuf freely.

Glossary:
- parent: a physical GPU registered by its vendor driver (``gfx_host``); owns a type catalogue.
- type: an entry of a parent's catalogue (``mdev_supported_types/<type-id>``).
- device: a mediated device (vGPU) created from a type, named by a UUID, unique on the whole bus.
- owner: who holds a device open; a VM's container id. At most one at a time.
- definition: a persistent mdevctl-style record (uuid, parent, type, start policy, attrs) that can
  be started into a device, by hand or automatically when its parent registers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Attr:
    """One vendor attribute, a single ``name: value`` pair of mdevctl's ordered ``attrs`` list."""

    name: str
    value: str


@dataclass(frozen=True)
class TypeSpec:
    """One catalogue entry as the vendor registers it.

    ``name`` is the human name (sysfs ``name``; defaults to the part of the type-id after the
    driver, as the kernel falls back to the sysfs name). ``description`` and
    ``available_instances`` are not here: they are asked live from the vendor.
    """

    type_id: str
    name: str = ""
    device_api: str = "vfio-pci"


@dataclass(frozen=True)
class TypeInfo:
    """A type as readers see it: the registered spec plus the vendor's live answers."""

    parent: str
    type_id: str
    name: str
    device_api: str
    description: str
    available_instances: int


class ParentState(enum.Enum):
    """Lifecycle of a registered parent."""

    REGISTERED = "registered"
    GOING_AWAY = "going_away"
    """Unregistration has begun (the kernel's ``unreg_sem`` is held for write): creates get ENODEV."""


@dataclass(frozen=True)
class ParentInfo:
    """A registered parent with its live type catalogue."""

    name: str
    driver: str
    state: ParentState
    registered_at: float
    device_count: int
    types: tuple[TypeInfo, ...]


class DeviceState(enum.Enum):
    """Where a device is in its lifecycle; the transitions are the table in ``states.py``."""

    CREATING = "creating"
    """UUID reserved, vendor create in flight; not usable yet."""
    ACTIVE = "active"
    """Created and not open (the sysfs node exists, no VFIO fd open)."""
    OPENING = "opening"
    """An owner is set and the vendor open is in flight."""
    OPEN = "open"
    """Held open by its owner."""
    CLOSING = "closing"
    """The vendor release is in flight."""
    REMOVING = "removing"
    """The vendor remove is in flight; the device disappears when it returns."""


@dataclass(frozen=True)
class DeviceInfo:
    """One device on the bus (``/sys/bus/mdev/devices/<uuid>``)."""

    uuid: str
    parent: str
    type_id: str
    state: DeviceState
    owner: str | None
    attrs: tuple[Attr, ...]
    created_at: float
    """Wall-clock time the vendor create returned (0.0 while ``CREATING``)."""
    opened_at: float | None = None
    release_requested: bool = False
    """A remove (or parent unregistration) is waiting for the owner to close the device."""


@dataclass(frozen=True)
class OpenedDevice:
    """What the opener gets: the device and the vendor's opaque open result, passed through unchanged.

    For ``gfx_host`` the ``channel`` describes the fast-path channel (broker socket, token).
    """

    device: DeviceInfo
    channel: Mapping[str, str]


class StartPolicy(enum.Enum):
    """mdevctl's ``start`` field of a definition."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True)
class Definition:
    """A persistent device definition (one ``/etc/mdevctl.d/<parent>/<uuid>`` file)."""

    uuid: str
    parent: str
    type_id: str
    start: StartPolicy = StartPolicy.MANUAL
    attrs: tuple[Attr, ...] = ()


@dataclass(frozen=True)
class DefinedDevice:
    """A definition as ``list --defined`` shows it; ``active``: its device runs with that parent and type."""

    definition: Definition
    active: bool


class AutostartResult(enum.Enum):
    """Outcome of autostarting one definition."""

    STARTED = "started"
    ALREADY_ACTIVE = "already_active"
    FAILED = "failed"


@dataclass(frozen=True)
class AutostartOutcome:
    """What autostart did with one ``auto`` definition when its parent registered."""

    uuid: str
    parent: str
    type_id: str
    result: AutostartResult
    attempts: int
    reason: str = ""
    """The error reason when ``FAILED`` (e.g. ``APERTURE_EXHAUSTED``), else empty."""
    message: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class ParentRegistration:
    """The answer to a parent registration: the accepted catalogue and what autostart did."""

    parent: str
    driver: str
    types: tuple[TypeSpec, ...]
    autostart: tuple[AutostartOutcome, ...] = ()


class EventKind(enum.Enum):
    """Kinds of bus events."""

    CREATED = "created"
    REMOVED = "removed"
    OPENED = "opened"
    CLOSED = "closed"
    PARENT_ADDED = "parent_added"
    PARENT_REMOVED = "parent_removed"
    FAILED = "failed"
    """An operation failed after validation (vendor error, owner timeout, autostart failure)."""
    DEFINITION_CHANGED = "definition_changed"
    OVERFLOW = "overflow"
    """Not a bus event: a marker telling one slow subscriber it lost ``dropped`` events."""


@dataclass(frozen=True)
class Event:
    """One entry of the event stream.

    ``seq`` increases by one per published event across the whole bus; an ``OVERFLOW`` marker
    carries the ``seq`` of the last event its subscriber lost. ``detail`` says which operation
    (``create``, ``remove``, ``autostart``, ``define``...) for ``FAILED`` and
    ``DEFINITION_CHANGED``; ``reason`` and ``message`` describe a failure.
    """

    seq: int
    timestamp: float
    kind: EventKind
    parent: str = ""
    uuid: str = ""
    type_id: str = ""
    owner: str = ""
    detail: str = ""
    reason: str = ""
    message: str = ""
    dropped: int = 0


@dataclass(frozen=True)
class BusStatistics:
    """A snapshot for metrics (``statistics()``); counters only grow, gauges are current values.

    Result keys are ``"ok"`` or the error ``reason``, a bounded set.
    """

    parents: int
    devices_by_parent: Mapping[str, int]
    devices_by_type: Mapping[str, int]
    open_devices: int
    creates_by_result: Mapping[str, int]
    removes_by_result: Mapping[str, int]
    events_emitted: int
    events_dropped: int
    subscribers: int
    definitions: int = 0
    autostarts_by_result: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BusConfig:
    """Tunables of the core (the service's config dataclass embeds one); checked at construction."""

    release_timeout: float = 10.0
    """Seconds a remove (or a parent unregistration) waits for the owner to close the device."""
    release_request_interval: float = 1.0
    """Seconds between repeated release requests to the owner (the kernel repeats every 10 s)."""
    autostart_attempts: int = 3
    """Attempts per definition when autostart meets a transient error (Busy, Unavailable, TimedOut)."""
    autostart_backoff: float = 0.1
    """Seconds before the first autostart retry; doubled for each further one."""
    event_queue_size: int = 1024
    """Default bound of each subscriber's event queue."""

    def __post_init__(self) -> None:
        if self.release_timeout < 0 or self.release_request_interval <= 0:
            raise ValueError("release_timeout must be >= 0 and release_request_interval > 0")
        if self.autostart_attempts < 1 or self.autostart_backoff < 0:
            raise ValueError("autostart_attempts must be >= 1 and autostart_backoff >= 0")
        if self.event_queue_size < 1:
            raise ValueError("event_queue_size must be >= 1")
