"""``vgpusim sysfs-exec [--state-dir DIR] -- CMD ARGS...``: run a command against the stack's sysfs view.

mdevctl 1.2.0 always reads ``/sys`` and ``/etc/mdevctl.d`` (it has no ``MDEVCTL_ENV_ROOT``), so
the command runs in a private mount namespace where ``<mount>/sys`` is bind-mounted over ``/sys``
and ``<mount>/etc/mdevctl.d`` over ``/etc/mdevctl.d`` (``docs/sysfs.md``, "Running mdevctl
against it"). The bind mounts vanish when the command exits; the host's ``/sys`` and
``/etc/mdevctl.d`` are never touched. ``<mount>`` is the mount point the bus recorded in
``<state>/run/sysfs-mount.json`` (:func:`~vgpusim.vgpu_bus.sysfs.mounts.record_path`), else
``<state>/sysfs``.

The process replaces itself (``exec``) with ``unshare -m --propagation private sh -c ...``, and
``sh`` in turn ``exec``\\ s the command, so its exit status, signals and terminal pass straight
through. ``argv[0]`` is kept, so ``lsmdev`` works as well as ``mdevctl``.

Exit codes before the command runs: 1 when there is no live sysfs view (start the stack with
``vgpusim up --sysfs``) or ``unshare`` / the bind targets are missing; 2 when no command is given.

Glossary:
- view: the FUSE mount ``vgpu_bus`` serves when started with ``--sysfs`` (an environment root
  holding ``sys/`` and ``etc/mdevctl.d/``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from vgpusim.common.paths import StackPaths
from vgpusim.vgpu_bus.sysfs.mounts import fuse_mounts_at, is_disconnected, record_path

BIND_SCRIPT = 'mount --bind "$0/sys" /sys && mount --bind "$0/etc/mdevctl.d" /etc/mdevctl.d && exec "$@"'
"""Run by ``sh -c`` inside the new namespace: ``$0`` is the view's root, ``$@`` the command."""
BIND_TARGETS = ("/sys", "/etc/mdevctl.d")
HINT = "start it with vgpusim up --sysfs"


class ViewUnavailable(Exception):
    """The stack has no usable sysfs view, or the host cannot bind it; the message says why."""


def recorded_mountpoint(paths: StackPaths) -> Path | None:
    """The mount point the bus recorded in ``<state>/run/sysfs-mount.json`` (``None`` if none)."""
    try:
        data = json.loads(record_path(paths.state_dir).read_text())
        return Path(data["mountpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_view(paths: StackPaths) -> Path:
    """The root of the stack's live sysfs view; :class:`ViewUnavailable` if there is none."""
    recorded = recorded_mountpoint(paths)
    mount = recorded if recorded is not None else paths.state_dir / "sysfs"
    if is_disconnected(mount):
        raise ViewUnavailable(
            f"the sysfs view on {mount} is a dead mount (its server is gone); run vgpusim down, then {HINT}"
        )
    if not fuse_mounts_at(mount):
        raise ViewUnavailable(f"the stack in {paths.state_dir} has no sysfs view mounted; {HINT}")
    for part in ("sys", "etc/mdevctl.d"):
        if not (mount / part).is_dir():
            raise ViewUnavailable(f"{mount} is mounted but has no {part}/: not a vgpusim sysfs view")
    return mount


def build_command(view: Path, command: list[str]) -> list[str]:
    """The ``unshare`` argv that runs ``command`` with ``view`` bound over ``/sys`` and ``/etc/mdevctl.d``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise ViewUnavailable("unshare (util-linux) is not installed")
    for target in BIND_TARGETS:
        if not os.path.isdir(target):
            raise ViewUnavailable(f"{target}, the bind-mount target, does not exist (install mdevctl)")
    return [unshare, "-m", "--propagation", "private", "sh", "-c", BIND_SCRIPT, str(view), *command]


def strip_separator(command: list[str]) -> list[str]:
    """``command`` without the leading ``--`` that separates it from ``sysfs-exec``'s own options."""
    return command[1:] if command[:1] == ["--"] else command


def run_sysfs_exec(paths: StackPaths, command: list[str]) -> int:
    """``vgpusim sysfs-exec``: exec ``command`` in the view; returns only when it cannot (1 or 2)."""
    command = strip_separator(command)
    if not command:
        print("vgpusim sysfs-exec: no command given (vgpusim sysfs-exec -- mdevctl list)", file=sys.stderr)
        return 2
    try:
        argv = build_command(find_view(paths), command)
    except ViewUnavailable as error:
        print(f"vgpusim sysfs-exec: {error}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as error:
        print(f"vgpusim sysfs-exec: cannot run {argv[0]}: {error}", file=sys.stderr)
        return 1
