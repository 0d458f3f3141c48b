"""The pyfuse3 operations: inode numbers, open files and directories, each request sent to the tree.

:class:`MdevFs` runs on the filesystem's trio thread. It keeps only what FUSE itself needs
(path <-> inode numbers and open files, see :mod:`.handles`, and open directory listings);
every question about the tree goes to :class:`~.tree.Tree` on the bus loop through the
:class:`~.bridge.LoopBridge`, one call per request. The settings that make the unmodified
mdevctl work (reference ``mdevctl.md`` §4) are all here:

- entry and attribute timeouts are 0: the kernel asks again on every path walk, so nothing
  stale survives a remove, whoever did it (gRPC or the filesystem);
- every file is opened ``direct_io`` and ``sys/`` files report ``st_size`` 4096, so reads
  always reach the handler whatever the content length;
- a read at offset 0 computes the content and keeps it in the open file, reads further on use
  that copy (sysfs's ``seq_file`` behaviour, so ``cat`` never mixes two states);
- one ``write()`` to a ``sys/`` file is one store, run to completion inside the request;
- ``setattr`` (``truncate``, ``chmod``...) changes nothing and succeeds, as for libfuse2 users;
- reading a write-only file or writing a read-only one is ``EACCES`` at ``open()``, even for root.

Glossary:
- request: one FUSE operation from the kernel, handled by one method here, as one trio task.
- fh: the number an ``open``/``opendir`` returns; it names an open file (a ``Handle``) or the
  listing snapshot of an open directory (taken at the first ``readdir``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from vgpusim.vgpu_bus.sysfs.bridge import LoopBridge
from vgpusim.vgpu_bus.sysfs.handles import Handle, Inodes, complete_json
from vgpusim.vgpu_bus.sysfs.layout import CONFIG, DIR, SYS, Kind, Node, Path, is_under
from vgpusim.vgpu_bus.sysfs.tree import STATIC_DIRS, Tree

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_TYPE_BITS = {Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.LINK: stat.S_IFLNK}


def _guard(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only ``FUSEError`` out of a handler (anything else would stop pyfuse3's main loop)."""

    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("filesystem handler %s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


class MdevFs(pyfuse3.Operations):
    """The FUSE side of the mount; see the module docstring."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, bridge: LoopBridge) -> None:
        super().__init__()
        self.tree = tree
        self.bridge = bridge
        self.inodes = Inodes()
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, tuple[Path, list[tuple[str, Node]] | None]] = {}
        self._next_fh = 1
        self._uid = os.geteuid()
        self._gid = os.getegid()
        self._time_ns = time.time_ns()

    # -- names and attributes ------------------------------------------------------------------

    @_guard
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        node = await self._resolve(path)
        return self._remembered(path, node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        return self._attributes(inode, node)

    @_guard
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return await self.getattr(inode, ctx)

    @_guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        if node.kind is not Kind.LINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- directories ---------------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        if node.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = (path, None)
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path, entries = self._dir(fh)
        if entries is None or start_id == 0:
            entries = await self.bridge.call(lambda: self.tree.listdir(path))
            self._dirs[fh] = (path, entries)
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            inode = self.inodes.inode((*path, name))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attributes(inode, node), index + 1):
                self.inodes.drop_unreferenced(inode)
                return
            self.inodes.remember(inode)

    @_guard
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_guard
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        node = await self.bridge.call(lambda: self.tree.mkdir(path))
        return self._remembered(path, node)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        await self.bridge.call(lambda: self.tree.rmdir(path))

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        await self.bridge.call(lambda: self.tree.unlink(path))

    @_guard
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        replace = not flags & pyfuse3.RENAME_NOREPLACE
        await self.bridge.call(lambda: self.tree.rename(old, new, replace=replace))

    # -- files ---------------------------------------------------------------------------------

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        if node.kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        access = flags & os.O_ACCMODE
        if access in (os.O_RDONLY, os.O_RDWR) and not node.readable:
            raise pyfuse3.FUSEError(errno.EACCES)
        if access in (os.O_WRONLY, os.O_RDWR) and not node.writable:
            raise pyfuse3.FUSEError(errno.EACCES)
        handle = Handle(path)
        if is_under(path, CONFIG) and access != os.O_RDONLY and not flags & os.O_TRUNC:
            handle.buffer[:] = await self.bridge.call(lambda: self.tree.read(path))
            handle.committed = bytes(handle.buffer)
        return self._opened(handle)

    @_guard
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        node = await self.bridge.call(lambda: self.tree.create(path))
        attributes = self._remembered(path, node)
        return self._opened(Handle(path, created=True)), attributes

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._file(fh)
        if off == 0 or handle.content is None:
            handle.content = await self.bridge.call(lambda: self.tree.read(handle.path))
        return handle.content[off : off + size]

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file(fh)
        data = bytes(buf)
        if is_under(handle.path, SYS):
            await self.bridge.call(lambda: self.tree.write(handle.path, data))
            return len(data)
        before = bytes(handle.buffer)
        if len(handle.buffer) < off:
            handle.buffer.extend(b"\0" * (off - len(handle.buffer)))
        handle.buffer[off : off + len(data)] = data
        if complete_json(bytes(handle.buffer)):
            try:
                await self._commit(handle)
            except BaseException:
                handle.buffer[:] = before  # a failed write writes nothing
                raise
        return len(data)

    @_guard
    async def flush(self, fh: int) -> None:
        handle = self._file(fh)
        if is_under(handle.path, CONFIG) and handle.buffer and bytes(handle.buffer) != handle.committed:
            await self._commit(handle)

    @_guard
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.created:
            await self.bridge.call(lambda: self.tree.release(handle.path, created=True))

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        self._file(fh)

    # -- refused -------------------------------------------------------------------------------

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    # -- internals -----------------------------------------------------------------------------

    def _child(self, parent_inode: int, name: bytes) -> Path:
        parent = self.inodes.path(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return parent
        if text == "..":
            return parent[:-1]
        return (*parent, text)

    def _attributes(self, inode: int, node: Node) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.generation = 0
        attributes.entry_timeout = 0
        attributes.attr_timeout = 0
        attributes.st_mode = _TYPE_BITS[node.kind] | node.mode
        attributes.st_nlink = 2 if node.kind is Kind.DIR else 1
        attributes.st_uid = self._uid
        attributes.st_gid = self._gid
        attributes.st_rdev = 0
        attributes.st_size = node.size if node.kind is not Kind.DIR else 0
        attributes.st_blksize = 4096
        attributes.st_blocks = 0
        attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = self._time_ns
        return attributes

    def _remembered(self, path: Path, node: Node) -> pyfuse3.EntryAttributes:
        inode = self.inodes.inode(path)
        self.inodes.remember(inode)
        return self._attributes(inode, node)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _opened(self, handle: Handle) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._files[fh] = handle
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _file(self, fh: int) -> Handle:
        try:
            return self._files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def _dir(self, fh: int) -> tuple[Path, list[tuple[str, Node]] | None]:
        try:
            return self._dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    async def _resolve(self, path: Path) -> Node:
        if path in STATIC_DIRS:  # fixed for the life of the mount: no trip to the bus loop
            return DIR
        return await self.bridge.call(lambda: self.tree.resolve(path))

    async def _commit(self, handle: Handle) -> None:
        data = bytes(handle.buffer)
        await self.bridge.call(lambda: self.tree.write(handle.path, data))
        handle.committed = data
