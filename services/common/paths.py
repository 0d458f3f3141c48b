"""Where a vgpusim stack keeps its files: the state dir and every path derived from it.

One *stack* lives in one state dir, chosen (first match wins) by the ``--state-dir`` value, the
``VGPUSIM_STATE_DIR`` environment variable, ``$XDG_STATE_HOME/vgpusim`` or
``~/.local/state/vgpusim``.  Everything else is derived by :class:`StackPaths`::

    <state>/run/<svc>.sock          gRPC UNIX socket of a service (mode 0600)
    <state>/run/<svc>.json          status file written by a running service
    <state>/run/gfx_host.chan.sock  fast-path channel broker of gfx_host
    <state>/shm -> /dev/shm/vgpusim-<id>   shared-memory segments (see ensure_shm_dir)
    <state>/logs/<svc>.log          structured logs when started by the launcher
    <state>/bus.sqlite3             vgpu_bus persistent definitions

Glossary:
- state dir: the root folder of one stack; two stacks never share one.
- run dir: ``<state>/run``, sockets and status files (mode 0700).
- shm id: the first 12 hex digits of the SHA-256 of the state dir's real path, so two stacks on one
  host get distinct ``/dev/shm`` folders and the same stack always gets the same one.
- sun_path limit: a UNIX socket path holds at most 107 bytes (108 with the NUL); longer paths are
  rejected with :class:`~vgpusim.common.errors.InvalidArgument` (reason ``SOCKET_PATH_TOO_LONG``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vgpusim.common.errors import InvalidArgument

__all__ = [
    "CHAN_SOCKET_NAME",
    "ENV_STATE_DIR",
    "SOCKET_PATH_MAX_BYTES",
    "StackPaths",
    "check_socket_path",
    "resolve_state_dir",
]

ENV_STATE_DIR = "VGPUSIM_STATE_DIR"
SOCKET_PATH_MAX_BYTES = 107
CHAN_SOCKET_NAME = "gfx_host.chan.sock"
_SHM_ROOT = Path("/dev/shm")
_SHM_PREFIX = "vgpusim-"
_SVC_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def resolve_state_dir(
    value: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The absolute state dir: ``value`` if given and non-empty, else the environment's choice.

    ``environ`` defaults to :data:`os.environ`.  ``~`` is expanded; symlinks are kept as given.
    """
    env = os.environ if environ is None else environ
    if value is not None and str(value) != "":
        chosen = Path(value)
    elif env.get(ENV_STATE_DIR):
        chosen = Path(env[ENV_STATE_DIR])
    elif env.get("XDG_STATE_HOME"):
        chosen = Path(env["XDG_STATE_HOME"]) / "vgpusim"
    else:
        home = env.get("HOME") or str(Path.home())
        chosen = Path(home) / ".local" / "state" / "vgpusim"
    return Path(os.path.abspath(chosen.expanduser()))


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it fits in ``sockaddr_un.sun_path``, else raise InvalidArgument."""
    size = len(os.fsencode(path))
    if size > SOCKET_PATH_MAX_BYTES:
        raise InvalidArgument(
            f"UNIX socket path is {size} bytes, the limit is {SOCKET_PATH_MAX_BYTES}: {path}"
            " (choose a shorter --state-dir)",
            reason="SOCKET_PATH_TOO_LONG",
            metadata={"path": str(path), "length_bytes": str(size), "max_bytes": str(SOCKET_PATH_MAX_BYTES)},
        )
    return Path(path)


def _check_service_name(svc: str) -> str:
    if not _SVC_RE.match(svc):
        raise InvalidArgument(
            f"service name {svc!r} must match {_SVC_RE.pattern}",
            reason="BAD_SERVICE_NAME",
            metadata={"service": svc},
        )
    return svc


@dataclass(frozen=True)
class StackPaths:
    """All paths of one stack, derived from its absolute ``state_dir``.

    ``shm_root`` is where the shared-memory folder is created (``/dev/shm``; tests may point it
    elsewhere).  Nothing is created on construction; see :meth:`ensure_dirs` and
    :meth:`ensure_shm_dir`.
    """

    state_dir: Path
    shm_root: Path = field(default=_SHM_ROOT)

    @classmethod
    def from_state_dir(
        cls, value: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> StackPaths:
        """Paths for the state dir chosen by :func:`resolve_state_dir`."""
        return cls(resolve_state_dir(value, environ=environ))

    @property
    def run_dir(self) -> Path:
        """``<state>/run``: sockets and status files."""
        return self.state_dir / "run"

    @property
    def logs_dir(self) -> Path:
        """``<state>/logs``: one ``<svc>.log`` per service started by the launcher."""
        return self.state_dir / "logs"

    @property
    def shm_dir(self) -> Path:
        """``<state>/shm``: a symlink to the stack's ``/dev/shm/vgpusim-<id>`` folder."""
        return self.state_dir / "shm"

    @property
    def bus_db(self) -> Path:
        """``<state>/bus.sqlite3``: vgpu_bus persistent definitions."""
        return self.state_dir / "bus.sqlite3"

    @property
    def chan_socket(self) -> Path:
        """``<state>/run/gfx_host.chan.sock``: gfx_host's fast-path channel broker."""
        return check_socket_path(self.run_dir / CHAN_SOCKET_NAME)

    @property
    def shm_id(self) -> str:
        """12 hex digits identifying this stack's shared-memory folder."""
        real = os.path.realpath(self.state_dir)
        return hashlib.sha256(os.fsencode(real)).hexdigest()[:12]

    @property
    def shm_backing_dir(self) -> Path:
        """``/dev/shm/vgpusim-<id>``: where the segments really live."""
        return self.shm_root / f"{_SHM_PREFIX}{self.shm_id}"

    def socket(self, svc: str) -> Path:
        """``<state>/run/<svc>.sock``; InvalidArgument if the path is too long for a socket."""
        return check_socket_path(self.run_dir / f"{_check_service_name(svc)}.sock")

    def target(self, svc: str) -> str:
        """The gRPC target of ``svc``'s socket, ``unix:<state>/run/<svc>.sock``."""
        return f"unix:{self.socket(svc)}"

    def status_file(self, svc: str) -> Path:
        """``<state>/run/<svc>.json``: the status file of a running service."""
        return self.run_dir / f"{_check_service_name(svc)}.json"

    def log_file(self, svc: str) -> Path:
        """``<state>/logs/<svc>.log``."""
        return self.logs_dir / f"{_check_service_name(svc)}.log"

    def ensure_dirs(self) -> None:
        """Create the state, run (mode 0700) and logs dirs if missing."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self.logs_dir.mkdir(mode=0o700, exist_ok=True)

    def ensure_shm_dir(self) -> Path:
        """Create ``/dev/shm/vgpusim-<id>`` (mode 0700) and point ``<state>/shm`` at it.

        Idempotent.  If ``<state>/shm`` is a real directory (e.g. a tmpfs volume mounted there by
        docker-compose) it is used as is.  Returns the directory segments go in (resolved).
        """
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.shm_dir.is_dir() and not self.shm_dir.is_symlink():
            return self.shm_dir.resolve()
        backing = self.shm_backing_dir
        try:
            backing.mkdir(mode=0o700)
        except FileExistsError:
            if backing.is_symlink() or not backing.is_dir() or backing.stat().st_uid != os.getuid():
                raise InvalidArgument(
                    f"{backing} exists but is not a directory owned by this user",
                    reason="SHM_DIR_FOREIGN",
                    metadata={"path": str(backing)},
                ) from None
        os.chmod(backing, 0o700)
        if not (self.shm_dir.is_symlink() and os.readlink(self.shm_dir) == str(backing)):
            tmp = self.shm_dir.with_name(f".shm.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(backing, target_is_directory=True)
            os.replace(tmp, self.shm_dir)
        return backing

    def remove_shm_dir(self) -> None:
        """Remove the ``<state>/shm`` symlink and its backing folder with every segment in it.

        A real directory at ``<state>/shm`` (a mounted volume) is left alone.  Idempotent.
        """
        if self.shm_dir.is_symlink():
            self.shm_dir.unlink()
        elif self.shm_dir.exists():
            return
        backing = self.shm_backing_dir
        if backing.is_dir() and not backing.is_symlink():
            shutil.rmtree(backing)
