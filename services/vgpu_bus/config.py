"""Configuration of the vgpu_bus service: the shared fields plus the bus's own tunables.

Loaded by :func:`load_bus_config` (``load_config(BusServiceConfig, "vgpu_bus", argv)``) from, in
increasing precedence, the defaults below, the ``[common]`` and ``[vgpu_bus]`` tables of the TOML
file, ``VGPUSIM_VGPU_BUS_<FIELD>`` environment variables and ``--<field>`` flags. Every value is
checked at start-up; a bad one is ``InvalidArgument`` ``BAD_CONFIG`` naming the field.

Glossary:
- release timeout: how long a remove (or a parent unregistration) waits for the owner of an open
  device to close it, when the request does not say (``timeout_ms = 0``).
- vendor: the ``gfx_host`` process that registered a parent; its ``VendorService`` is called back.
- replay window: how many recent events ``WatchEvents`` can replay for ``after_sequence``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.config import BaseServiceConfig, load_config, option
from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core import BusConfig

__all__ = ["SERVICE", "BusServiceConfig", "load_bus_config"]

SERVICE = "vgpu_bus"


@dataclass(frozen=True, kw_only=True)
class BusServiceConfig(BaseServiceConfig):
    """vgpu_bus: the mediated-device bus (parents, devices, ownership, definitions, events)."""

    db_path: str = option("", "SQLite file of the persistent definitions; empty = <state>/bus.sqlite3")
    sysfs: bool = option(False, "serve the sysfs view (FUSE) that mdevctl drives; needs root and /dev/fuse")
    sysfs_mount: str = option("", "where the sysfs view is mounted; empty = <state>/sysfs")
    release_timeout_s: float = option(
        10.0, "seconds a remove waits for the owner of an open device when the request gives no timeout"
    )
    release_request_interval_s: float = option(
        1.0, "seconds between repeated release requests (REQ interrupts) to an owner"
    )
    autostart_attempts: int = option(3, "attempts per auto definition on a transient error (>= 1)")
    autostart_backoff_s: float = option(0.1, "seconds before the first autostart retry, doubled each time")
    event_queue_size: int = option(1024, "events buffered per WatchEvents subscriber before it overflows")
    event_history: int = option(1024, "recent events kept for WatchEvents after_sequence replay (>= 1)")
    vendor_timeout_s: float = option(10.0, "deadline of each call to a vendor's VendorService")
    vendor_connect_timeout_s: float = option(
        5.0, "seconds RegisterParent waits to reach the vendor's health service at vendor_endpoint"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("release_timeout_s", self.release_timeout_s, minimum=0.0)
        _check("release_request_interval_s", self.release_request_interval_s, minimum=0.001)
        _check("autostart_attempts", self.autostart_attempts, minimum=1)
        _check("autostart_backoff_s", self.autostart_backoff_s, minimum=0.0)
        _check("event_queue_size", self.event_queue_size, minimum=1)
        _check("event_history", self.event_history, minimum=1)
        _check("vendor_timeout_s", self.vendor_timeout_s, minimum=0.001)
        _check("vendor_connect_timeout_s", self.vendor_connect_timeout_s, minimum=0.001)

    @property
    def db_file(self) -> Path:
        """The definitions database: :attr:`db_path` if set, else ``<state>/bus.sqlite3``."""
        return Path(self.db_path) if self.db_path else self.paths.bus_db

    @property
    def sysfs_mountpoint(self) -> Path:
        """Where the FUSE view goes: :attr:`sysfs_mount` if set, else ``<state>/sysfs``."""
        return Path(self.sysfs_mount) if self.sysfs_mount else self.paths.state_dir / "sysfs"

    def bus_config(self) -> BusConfig:
        """The core's tunables."""
        return BusConfig(
            release_timeout=self.release_timeout_s,
            release_request_interval=self.release_request_interval_s,
            autostart_attempts=self.autostart_attempts,
            autostart_backoff=self.autostart_backoff_s,
            event_queue_size=self.event_queue_size,
        )


def load_bus_config(argv: Sequence[str] | None = None) -> BusServiceConfig:
    """The service's config from defaults, file, environment and ``argv`` (default ``sys.argv[1:]``)."""
    return load_config(BusServiceConfig, SERVICE, argv)


def _check(name: str, value: float, *, minimum: float) -> None:
    if not math.isfinite(value) or value < minimum:
        raise InvalidArgument(
            f"config {name}: must be a finite number >= {minimum:g}, got {value!r}",
            reason="BAD_CONFIG",
            metadata={"field": name, "value": repr(value)},
        )
