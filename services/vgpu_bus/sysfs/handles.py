"""The FUSE side's own state: inode numbers with the kernel's lookup counts, and open files.

Both live on the filesystem's trio thread only (no locking). An inode number names a *path*
(the tree is computed from paths), is given the first time the kernel sees the path, and is
forgotten when the kernel's lookup count falls to zero (``forget``), so churning device UUIDs
do not grow the table; a number once forgotten is never reused (a stale one gets ``ESTALE``).

Glossary:
- lookup count: references the kernel holds on an inode number: one per successful ``lookup``,
  ``create``, ``mkdir`` and ``readdir`` entry, dropped by ``forget``.
- handle: one open file: its path, the content read at offset 0 (re-read at the next offset 0,
  like sysfs), and for definition files the bytes written so far and the last committed ones.
"""

from __future__ import annotations

import errno
import json
from collections import Counter
from dataclasses import dataclass, field

import pyfuse3

from vgpusim.vgpu_bus.sysfs.layout import Path


class Inodes:
    """Inode numbers of the paths the kernel knows, with their lookup counts."""

    def __init__(self) -> None:
        self._by_path: dict[Path, int] = {(): pyfuse3.ROOT_INODE}
        self._paths: dict[int, Path] = {pyfuse3.ROOT_INODE: ()}
        self._counts: Counter[int] = Counter()
        self._next = pyfuse3.ROOT_INODE + 1

    def inode(self, path: Path) -> int:
        """The number of ``path``, given one if it has none."""
        number = self._by_path.get(path)
        if number is None:
            number = self._by_path[path] = self._next
            self._paths[number] = path
            self._next += 1
        return number

    def path(self, inode: int) -> Path:
        """The path of a known inode; ``ESTALE`` for a number the table no longer has."""
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def remember(self, inode: int) -> None:
        """The kernel took one more reference."""
        self._counts[inode] += 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references; the number goes when none is left."""
        self._counts[inode] -= count
        if self._counts[inode] <= 0:
            self.drop_unreferenced(inode)

    def drop_unreferenced(self, inode: int) -> None:
        """Forget ``inode`` if the kernel holds no reference (the root stays)."""
        if inode == pyfuse3.ROOT_INODE or self._counts[inode] > 0:
            return
        del self._counts[inode]
        path = self._paths.pop(inode, None)
        if path is not None:
            del self._by_path[path]

    def __len__(self) -> int:
        return len(self._paths)


@dataclass
class Handle:
    """An open file: its path, the content read at offset 0, and (definitions) the bytes written."""

    path: Path
    created: bool = False
    content: bytes | None = None
    buffer: bytearray = field(default_factory=bytearray)
    committed: bytes | None = None


def complete_json(data: bytes) -> bool:
    """Whether ``data`` is one whole JSON value (mdevctl writes a definition in one ``write()``)."""
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
