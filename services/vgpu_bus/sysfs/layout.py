"""The shape of the mounted tree: node records, path names, relative link targets, errors.

The mount root is an *environment root* as mdevctl understands it (reference ``mdevctl.md``
§1, §3): ``sys/`` is the sysfs part, ``etc/mdevctl.d/`` the definitions, and the empty
``usr/lib/mdevctl/scripts.d/{callouts,notifiers}`` that mdevctl >= 1.3.0 checks for, so
``MDEVCTL_ENV_ROOT=<mount>`` works with a newer mdevctl and two bind mounts work with 1.2.0::

    sys/class/mdev_bus/<P>                        -> ../../devices/pci0000:00/<P>
    sys/bus/mdev/devices/<U>                      -> ../../../devices/pci0000:00/<P>/<U>
    sys/devices/pci0000:00/<P>/                   the parent's real directory (basename = parent)
        mdev_supported_types/<T>/{name,description,device_api,available_instances,create}
        mdev_supported_types/<T>/devices/<U>      -> ../../../<U>
        <U>/{remove,<vendor attributes>}
        <U>/mdev_type                             -> ../mdev_supported_types/<T>
        <U>/iommu_group                           -> ../../../../kernel/iommu_groups/<n>
    sys/kernel/iommu_groups/<n>/devices/<U>       -> ../../../../devices/pci0000:00/<P>/<U>
    etc/mdevctl.d/<P>/<U>                         a definition, mdevctl's JSON
    etc/mdevctl.d/scripts.d/{callouts,notifiers}/ empty

Every link target is relative, so the tree works wherever it is mounted or bind-mounted.

Glossary:
- path: a tuple of names from the mount root, e.g. ``("sys", "class", "mdev_bus")``.
- node: what a path is right now (:class:`Node`): a directory, a file or a link, with its mode.
- attribute file: a sysfs file; its size is reported as 4096 whatever its content, like sysfs.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass

Path = tuple[str, ...]
"""Names from the mount root; ``()`` is the root itself."""

PCI_ROOT = "pci0000:00"
"""The directory under ``sys/devices`` holding every parent's real directory."""

SYS: Path = ("sys",)
MDEV_BUS: Path = ("sys", "class", "mdev_bus")
MDEV_DEVICES: Path = ("sys", "bus", "mdev", "devices")
PARENTS: Path = ("sys", "devices", PCI_ROOT)
IOMMU_GROUPS: Path = ("sys", "kernel", "iommu_groups")
CONFIG: Path = ("etc", "mdevctl.d")
SCRIPTS: Path = ("etc", "mdevctl.d", "scripts.d")
USR_SCRIPTS: Path = ("usr", "lib", "mdevctl", "scripts.d")
SCRIPT_DIRS = ("callouts", "notifiers")

TYPES_DIR = "mdev_supported_types"
TYPE_FILES_RO = ("available_instances", "description", "device_api", "name")
CREATE = "create"
REMOVE = "remove"
MDEV_TYPE = "mdev_type"
IOMMU_GROUP = "iommu_group"
DEVICE_FIXED = (IOMMU_GROUP, MDEV_TYPE, REMOVE)
"""Names of a device directory that vendor attributes cannot take."""

SYSFS_SIZE = 4096
"""``st_size`` of every sysfs attribute file (reference ``mdevctl.md`` §4, obstacle 2)."""

MODE_DIR = 0o755
MODE_RO = 0o444
MODE_WO = 0o200
MODE_RW = 0o644
MODE_LINK = 0o777


class Kind(enum.Enum):
    """What a node is."""

    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclass(frozen=True)
class Node:
    """One path as it is now; ``target`` for links, ``size`` for files (4096 in ``sys/``)."""

    kind: Kind
    mode: int
    target: str = ""
    size: int = SYSFS_SIZE

    @property
    def readable(self) -> bool:
        """Whether a file may be opened for reading (owner read bit; root gets no bypass here)."""
        return bool(self.mode & 0o400)

    @property
    def writable(self) -> bool:
        """Whether a file may be opened for writing."""
        return bool(self.mode & 0o200)


DIR = Node(Kind.DIR, MODE_DIR)
RO_FILE = Node(Kind.FILE, MODE_RO)
WO_FILE = Node(Kind.FILE, MODE_WO)
RW_FILE = Node(Kind.FILE, MODE_RW)


def link(target: str) -> Node:
    """A symbolic link to the relative ``target``."""
    return Node(Kind.LINK, MODE_LINK, target=target, size=len(target.encode()))


class FsError(Exception):
    """A filesystem error with the errno the caller's system call returns."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


def enoent(path: Path) -> FsError:
    """``ENOENT`` for ``path``."""
    return FsError(errno.ENOENT, "/".join(path))


# -- link targets (each relative to the directory holding the link) -------------------------------


def parent_dir(parent: str) -> Path:
    """``sys/devices/pci0000:00/<P>``: the parent's real directory."""
    return (*PARENTS, parent)


def device_dir(parent: str, uuid: str) -> Path:
    """``sys/devices/pci0000:00/<P>/<U>``: the device's real directory."""
    return (*PARENTS, parent, uuid)


def class_link(parent: str) -> str:
    """Target of ``sys/class/mdev_bus/<P>``."""
    return f"../../devices/{PCI_ROOT}/{parent}"


def bus_link(parent: str, uuid: str) -> str:
    """Target of ``sys/bus/mdev/devices/<U>``."""
    return f"../../../devices/{PCI_ROOT}/{parent}/{uuid}"


def type_link(type_id: str) -> str:
    """Target of ``<U>/mdev_type``."""
    return f"../{TYPES_DIR}/{type_id}"


def type_device_link(uuid: str) -> str:
    """Target of ``<T>/devices/<U>``."""
    return f"../../../{uuid}"


def group_link(group: int) -> str:
    """Target of ``<U>/iommu_group``."""
    return f"../../../../kernel/iommu_groups/{group}"


def group_device_link(parent: str, uuid: str) -> str:
    """Target of ``sys/kernel/iommu_groups/<n>/devices/<U>``."""
    return f"../../../../devices/{PCI_ROOT}/{parent}/{uuid}"


def is_under(path: Path, prefix: Path) -> bool:
    """Whether ``path`` is ``prefix`` or below it."""
    return path[: len(prefix)] == prefix
