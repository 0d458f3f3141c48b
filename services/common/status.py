"""The status file a running service keeps at ``<state>/run/<svc>.json``.

The launcher (``vgpusim status``/``down``) and tests read it to find a service's pid, gRPC socket,
TCP address and metrics URL without asking the service.  It is always replaced atomically (write
to a temporary file in the same folder, then ``rename``), so a reader never sees half a file::

    {"service": "vgpu_bus", "pid": 1234, "socket": "/state/run/vgpu_bus.sock", "tcp": null,
     "metrics_url": "http://127.0.0.1:40123/metrics", "state": "serving"}

Glossary:
- state: ``starting`` (listening, health NOT_SERVING, dependencies not up yet), ``serving``
  (health SERVING) or ``stopping`` (SIGTERM received, draining).  The file is removed once stopped.
- stale: a status file whose pid is gone (the service was killed); see :meth:`ServiceStatus.alive`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vgpusim.common.errors import InvalidArgument

__all__ = ["STATES", "ServiceStatus", "read_status", "remove_status", "write_status"]

STATES = ("starting", "serving", "stopping")


@dataclass(frozen=True)
class ServiceStatus:
    """What a status file says."""

    service: str
    pid: int
    socket: str | None
    tcp: str | None
    metrics_url: str | None
    state: str

    def alive(self) -> bool:
        """True if process ``pid`` still exists (it may belong to someone else after a reboot)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the file."""
        return asdict(self)


def write_status(path: Path, status: ServiceStatus) -> None:
    """Atomically replace ``path`` with ``status`` (mode 0644: status is not secret)."""
    if status.state not in STATES:
        raise ValueError(f"unknown service state {status.state!r}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(status.to_json(), indent=None, sort_keys=False) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_status(path: Path) -> ServiceStatus | None:
    """The status in ``path``, None if there is no such file; InvalidArgument if it is garbage."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ServiceStatus(
            service=str(raw["service"]),
            pid=int(raw["pid"]),
            socket=None if raw.get("socket") is None else str(raw["socket"]),
            tcp=None if raw.get("tcp") is None else str(raw["tcp"]),
            metrics_url=None if raw.get("metrics_url") is None else str(raw["metrics_url"]),
            state=str(raw["state"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f"malformed status file {path}: {exc}", reason="BAD_STATUS_FILE", metadata={"path": str(path)}
        ) from None


def remove_status(path: Path) -> None:
    """Remove the status file if it exists."""
    path.unlink(missing_ok=True)
