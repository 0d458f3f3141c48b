"""Finding and removing FUSE mounts, including dead ones a crashed server left behind.

A FUSE server killed without unmounting leaves its mount in place: every access then fails
with ``ENOTCONN`` ("Transport endpoint is not connected") until someone unmounts it
(reference ``mdevctl.md`` §4, obstacle 8). :func:`unmount_stale` is what ``vgpusim down`` and
the server's own start-up call: it looks the mount point up in ``/proc/self/mountinfo`` (which
never touches the dead filesystem), and detaches every FUSE mount stacked there with
``fusermount3 -u -z`` or, failing that, ``umount -l``. Lazy detaching always succeeds, even
while some process still has a file open inside.

:func:`unmount_recorded` does the same for the mount point a server recorded in its state dir.

Only FUSE mounts are touched (file-system type ``fuse`` or ``fuse.*``); anything else mounted
at the same place is left alone.

Glossary:
- mountinfo: ``/proc/self/mountinfo``, one line per mount of this process's mount namespace;
  field 5 is the mount point (octal escapes for space, tab, newline and backslash), the field
  after ``-`` is the file-system type.
- lazy unmount: ``MNT_DETACH``: the mount disappears from the namespace at once; the kernel frees
  it when its last user goes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.paths import StackPaths

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
RECORD_NAME = "sysfs-mount.json"
"""The record a running server keeps in ``<state>/run``: ``{"mountpoint": ..., "pid": ...}``."""
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, which file-system type, which source."""

    mount_point: str
    fs_type: str
    source: str

    @property
    def is_fuse(self) -> bool:
        """Whether this is a FUSE mount."""
        return self.fs_type == "fuse" or self.fs_type.startswith("fuse.")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def read_mounts(path: str = MOUNTINFO) -> list[MountEntry]:
    """Every mount of this process's namespace, in mount order."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split()
            if "-" not in fields:
                continue
            tail = fields[fields.index("-") + 1 :]
            entries.append(
                MountEntry(_unescape(fields[4]), tail[0], _unescape(tail[1]) if len(tail) > 1 else "")
            )
    return entries


def absolute(mountpoint: str | os.PathLike[str]) -> str:
    """The absolute path of ``mountpoint`` with its parent resolved (the last part is never stat'ed)."""
    path = os.path.abspath(os.fspath(mountpoint))
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else path


def fuse_mounts_at(mountpoint: str | os.PathLike[str]) -> int:
    """How many FUSE mounts are stacked exactly on ``mountpoint``."""
    target = absolute(mountpoint)
    return sum(1 for entry in read_mounts() if entry.is_fuse and entry.mount_point == target)


def is_disconnected(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether ``stat`` of ``mountpoint`` fails with ``ENOTCONN`` (a dead FUSE mount)."""
    try:
        os.stat(absolute(mountpoint))
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def lazy_unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Detach the top mount at ``mountpoint``: ``fusermount3 -u -z``, else ``umount -l``.

    Raises ``OSError`` with both tools' messages if neither works.
    """
    target = absolute(mountpoint)
    problems = []
    for tool, args in (("fusermount3", ["-u", "-z"]), ("umount", ["-l"])):
        program = shutil.which(tool)
        if program is None:
            problems.append(f"{tool}: not installed")
            continue
        result = subprocess.run(
            [program, *args, target], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0:
            log.info("unmounted %s with %s", target, tool)
            return
        problems.append(f"{tool}: {result.stderr.strip() or f'exit {result.returncode}'}")
    raise OSError(errno.EBUSY, f"cannot unmount {target}: {'; '.join(problems)}")


def unmount_stale(mountpoint: str | os.PathLike[str], *, attempts: int = 8) -> bool:
    """Detach every FUSE mount on ``mountpoint`` (dead or still served); whether there was one.

    A mount still served by a live process is detached too: call this only when no healthy
    server should be there (``vgpusim down``, or a server's own start-up). Raises ``OSError``
    if mounts remain after ``attempts`` detaches.
    """
    did = False
    for _ in range(attempts):
        if not fuse_mounts_at(mountpoint) and not is_disconnected(mountpoint):
            return did
        lazy_unmount(mountpoint)
        did = True
    if fuse_mounts_at(mountpoint):
        raise OSError(errno.EBUSY, f"FUSE mounts remain on {absolute(mountpoint)} after {attempts} unmounts")
    return did


def record_path(state_dir: str | os.PathLike[str]) -> Path:
    """``<state>/run/sysfs-mount.json``."""
    return StackPaths(Path(state_dir)).run_dir / RECORD_NAME


def unmount_recorded(state_dir: str | os.PathLike[str]) -> Path | None:
    """For ``vgpusim down``: detach the mount recorded in ``state_dir`` and drop the record.

    Returns the recorded mount point (``None`` if there was no record). Safe after a crash (the
    dead mount is detached lazily) and when nothing is mounted any more.
    """
    record = record_path(state_dir)
    try:
        mountpoint = Path(json.loads(record.read_text())["mountpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    unmount_stale(mountpoint)
    record.unlink(missing_ok=True)
    return mountpoint
