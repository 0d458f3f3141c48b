"""The whole tree as one object: fixed directories, plus the ``sys/`` and ``etc/mdevctl.d`` views.

:class:`Tree` is the single interface the FUSE operations call (through the loop bridge), one
coroutine per system call, always on the bus's event loop: ``resolve``, ``listdir``, ``read``,
``write``, ``create``, ``mkdir``, ``unlink``, ``rmdir``, ``rename``, ``release``. It dispatches
by path: the fixed directories of :data:`STATIC_DIRS` are answered here, ``sys/`` by
:class:`~.sysview.SysView`, ``etc/mdevctl.d`` by :class:`~.confview.ConfigView`.

What the sysfs part refuses, as kernfs does: ``mkdir``, ``unlink``, ``rmdir``, ``rename``,
``symlink`` anywhere under ``sys/`` give ``EPERM``; creating a file gives ``EACCES``; reading a
write-only file (``create``, ``remove``) or writing a read-only one gives ``EACCES`` even to root.

Glossary:
- static directory: a directory that always exists (``sys/class``, ``etc``...), see
  :data:`STATIC_DIRS`; some of them also have dynamic entries (``sys/class/mdev_bus``).
"""

from __future__ import annotations

import errno

from vgpusim.vgpu_bus.core import VgpuBus
from vgpusim.vgpu_bus.sysfs import layout
from vgpusim.vgpu_bus.sysfs.confview import ConfigView
from vgpusim.vgpu_bus.sysfs.layout import CONFIG, DIR, SCRIPT_DIRS, SYS, FsError, Node, Path, enoent, is_under
from vgpusim.vgpu_bus.sysfs.sysview import SysView

STATIC_DIRS: dict[Path, tuple[str, ...]] = {
    (): ("etc", "sys", "usr"),
    ("etc",): ("mdevctl.d",),
    CONFIG: ("scripts.d",),
    layout.SCRIPTS: SCRIPT_DIRS,
    **{(*layout.SCRIPTS, name): () for name in SCRIPT_DIRS},
    ("sys",): ("bus", "class", "devices", "kernel"),
    ("sys", "bus"): ("mdev",),
    ("sys", "bus", "mdev"): ("devices",),
    layout.MDEV_DEVICES: (),
    ("sys", "class"): ("mdev_bus",),
    layout.MDEV_BUS: (),
    ("sys", "devices"): (layout.PCI_ROOT,),
    layout.PARENTS: (),
    ("sys", "kernel"): ("iommu_groups",),
    layout.IOMMU_GROUPS: (),
    ("usr",): ("lib",),
    ("usr", "lib"): ("mdevctl",),
    ("usr", "lib", "mdevctl"): ("scripts.d",),
    layout.USR_SCRIPTS: SCRIPT_DIRS,
    **{(*layout.USR_SCRIPTS, name): () for name in SCRIPT_DIRS},
}
"""Every directory that always exists, with its fixed entries."""

_DYNAMIC = frozenset({layout.MDEV_BUS, layout.MDEV_DEVICES, layout.PARENTS, layout.IOMMU_GROUPS, CONFIG})
"""Static directories that also have entries computed from the bus."""


class Tree:
    """The mounted tree over one bus. Every method runs on the bus's event loop."""

    def __init__(self, bus: VgpuBus) -> None:
        self.bus = bus
        self.sys = SysView(bus)
        self.config = ConfigView(bus)

    async def resolve(self, path: Path) -> Node:
        """What ``path`` is now; ``ENOENT`` if nothing."""
        if path in STATIC_DIRS:
            return DIR
        if is_under(path, SYS):
            return await self.sys.resolve(path)
        if is_under(path, CONFIG):
            return await self.config.resolve(path)
        raise enoent(path)

    async def listdir(self, path: Path) -> list[tuple[str, Node]]:
        """The entries of the directory ``path`` (without ``.`` and ``..``)."""
        fixed = [(name, DIR) for name in STATIC_DIRS.get(path, ())]
        if path in STATIC_DIRS and path not in _DYNAMIC:
            return fixed
        if is_under(path, SYS):
            return fixed + await self.sys.listdir(path)
        if is_under(path, CONFIG):
            return fixed + await self.config.listdir(path)
        raise enoent(path)

    async def read(self, path: Path) -> bytes:
        """The content of the file ``path``, computed now (``EACCES`` for a write-only file)."""
        if is_under(path, SYS):
            return await self.sys.read(path)
        if is_under(path, CONFIG):
            return await self.config.read(path)
        raise enoent(path)

    async def write(self, path: Path, data: bytes) -> None:
        """One store to a ``sys/`` file, or a commit of a definition file's JSON."""
        if is_under(path, SYS):
            await self.sys.write(path, data)
        elif is_under(path, CONFIG):
            await self.config.commit(path, data)
        else:
            raise FsError(errno.EACCES, "/".join(path))

    async def create(self, path: Path) -> Node:
        """``open(O_CREAT)`` of a missing file: a definition file, else ``EACCES``."""
        if is_under(path, CONFIG) and path[:-1] not in STATIC_DIRS:
            return await self.config.create(path)
        raise FsError(errno.EACCES, "/".join(path))

    async def release(self, path: Path, *, created: bool) -> None:
        """A file handle of ``path`` was closed; ``created`` if :meth:`create` made it."""
        if created and is_under(path, CONFIG):
            await self.config.release(path)

    async def mkdir(self, path: Path) -> Node:
        """``mkdir``: a parent directory of definitions, else ``EPERM``/``EACCES``."""
        if path in STATIC_DIRS:
            raise FsError(errno.EEXIST, "/".join(path))
        if is_under(path, CONFIG):
            return await self.config.mkdir(path)
        raise FsError(errno.EPERM, "/".join(path))

    async def unlink(self, path: Path) -> None:
        """``unlink``: undefine a definition file, else ``EPERM``."""
        if is_under(path, CONFIG) and path[:-1] not in STATIC_DIRS:
            await self.config.unlink(path)
            return
        node = await self.resolve(path)
        raise FsError(errno.EISDIR if node is DIR else errno.EPERM, "/".join(path))

    async def rmdir(self, path: Path) -> None:
        """``rmdir``: an empty parent directory of definitions, else ``EPERM``."""
        if path not in STATIC_DIRS and is_under(path, CONFIG):
            await self.config.rmdir(path)
            return
        await self.resolve(path)
        raise FsError(errno.EPERM, "/".join(path))

    async def rename(self, old: Path, new: Path, *, replace: bool) -> None:
        """``rename``: a definition file to another parent or UUID, else ``EPERM``."""
        if is_under(old, CONFIG) and is_under(new, CONFIG):
            await self.config.rename(old, new, replace=replace)
            return
        await self.resolve(old)
        raise FsError(errno.EPERM, "/".join(old))
