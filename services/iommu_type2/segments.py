"""The production :class:`~vgpusim.iommu_type2.core.SegmentStore`: segment files of the stack's shm dir.

A frontend creates each VM's RAM as a segment file in ``<state>/shm`` (``vgpusim.common.shm``)
and registers it with its container by name. :class:`ShmSegmentStore` maps such a file the first
time a container asks for it (``Segment.open``, ``MAP_SHARED`` read/write) and hands every later
``view(name)`` the same mapping, so a segment registered with several containers is mapped once.

A name is re-checked on every ``view``: a missing file is ``NotFound SEGMENT_MISSING`` (ENOENT)
even if an old mapping is cached, and a file that was replaced (a VM restarted under the same
segment name: a new inode) is mapped afresh, so a new registration never reaches the pages of a
dead VM. Mappings no container uses any more are closed by :meth:`ShmSegmentStore.retain` (the
servicer calls it after every unregister/destroy), which releases the tmpfs pages of unlinked
files. A mapping that still has views exported cannot be unmapped yet; it is parked and closed by
a later ``retain``/``forget``/``close``.

Glossary:
- shm dir: ``<state>/shm``, a symlink to ``/dev/shm/vgpusim-<id>`` (or a mounted tmpfs).
- generation: one inode behind a name; a replaced file is a new generation.
- parked: a mapping taken out of the cache whose ``close`` found views still alive.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from vgpusim.common.errors import Busy, NotFound
from vgpusim.common.shm.segment import Segment, validate_name

__all__ = ["ShmSegmentStore", "segment_missing"]

_log = logging.getLogger(__name__)

_Inode = tuple[int, int]  # (st_dev, st_ino)


def segment_missing(name: str, directory: Path) -> NotFound:
    """``SEGMENT_MISSING`` (ENOENT): no segment file ``name`` in the shm dir."""
    return NotFound(
        f"no segment {name!r} in {directory}",
        reason="SEGMENT_MISSING",
        errno=errno.ENOENT,
        metadata={"segment": name},
    )


class ShmSegmentStore:
    """Segments of ``directory`` (normally ``StackPaths.shm_dir``), each mapped once."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._open: dict[str, tuple[Segment, _Inode]] = {}
        self._parked: list[Segment] = []

    def view(self, name: str) -> memoryview:
        """The whole segment ``name`` as a writable byte view, mapping it on first use.

        Errors: ``InvalidArgument`` (``INVALID_SEGMENT_NAME``, ``EMPTY_SEGMENT``,
        ``NOT_A_SEGMENT``), ``NotFound`` (``SEGMENT_MISSING``), ``PermissionDenied``.
        """
        validate_name(name)
        inode = self._inode(name)
        cached = self._open.get(name)
        if cached is not None:
            if cached[1] == inode and not cached[0].closed:
                return cached[0].buf
            self._retire(name)  # replaced by a new file since we mapped it
        try:
            segment = Segment.open(self.directory, name)
        except NotFound:
            raise segment_missing(name, self.directory) from None
        self._open[name] = (segment, inode)
        return segment.buf

    def _inode(self, name: str) -> _Inode:
        try:
            st = os.stat(self.directory / name, follow_symlinks=False)
        except FileNotFoundError:
            raise segment_missing(name, self.directory) from None
        return (st.st_dev, st.st_ino)

    def names(self) -> tuple[str, ...]:
        """The segments mapped now, sorted."""
        return tuple(sorted(self._open))

    @property
    def parked(self) -> int:
        """Mappings waiting for their last views to be released before they can be unmapped."""
        return len(self._parked)

    def forget(self, name: str) -> None:
        """Unmap segment ``name`` (a no-op if it is not mapped); parked if views are still alive."""
        self._retire(name)
        self._close_parked()

    def retain(self, names: Iterable[str]) -> None:
        """Unmap every segment not in ``names`` (the segments some container still registers)."""
        keep = set(names)
        for name in [n for n in self._open if n not in keep]:
            self._retire(name)
        self._close_parked()

    def close(self) -> None:
        """Unmap everything (at service stop). Mappings with live views stay parked."""
        self.retain(())

    def _retire(self, name: str) -> None:
        entry = self._open.pop(name, None)
        if entry is not None:
            self._parked.append(entry[0])

    def _close_parked(self) -> None:
        still: list[Segment] = []
        for segment in self._parked:
            try:
                segment.close()
            except Busy:
                _log.debug("segment %s still has views; unmapping it later", segment.name)
                still.append(segment)
        self._parked = still
