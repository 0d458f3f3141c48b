"""Named shared-memory segments: files in a directory (normally under ``/dev/shm``), mapped shared.

A segment is the unit of memory two vgpusim processes share: guest RAM (raw, no header: the guest
owns every byte) and fast-path channels (a header written by :mod:`.channel`, rings by
:mod:`.ring`).  A segment is a regular file ``<directory>/<name>`` created with
``O_CREAT|O_EXCL``, sized with ``ftruncate`` and mapped ``MAP_SHARED`` read/write; any process that
can open the file maps the same pages.  The directory is the caller's (a stack's ``<state>/shm``,
which links to ``/dev/shm/vgpusim-<id>``); this module never creates or removes directories.

Glossary:
- name: the file name of a segment, 1-255 characters of ``[A-Za-z0-9._-]``, not ``.``/``..``.
- owner: the process that created the segment; it alone unlinks it (``unlink()``).
- export: a buffer still referencing the mapping (a memoryview sliced from :attr:`Segment.buf`,
  a :class:`~.ring.Ring` living in it); while one exists the mapping cannot be unmapped.

Layout: none.  A segment is ``size`` raw bytes starting at file offset 0; formats that live in a
segment (rings, channels) start with their own magic, version and sizes.

| property | value |
|---|---|
| file mode | ``mode`` argument (default ``0o600``), set with ``fchmod`` so the umask does not matter |
| mapping | ``MAP_SHARED``, ``PROT_READ|PROT_WRITE``, whole file, page aligned |
| size | fixed at creation (> 0); ``open`` maps the file's current size |
| file descriptors | none kept: the descriptor is closed once mapped |

Lifecycle: ``create`` (owner) or ``open`` (peer) -> use ``buf`` -> ``close`` (unmap) -> ``unlink``
(owner; may come before or after ``close``, peers keep their mapping).  ``close`` is idempotent.
It releases the memoryview the segment handed out; if a view derived from it (a slice, a ring) is
still alive the pages cannot be unmapped: ``close`` then raises ``Busy`` (reason
``SEGMENT_EXPORTED``) and leaves the mapping in place, so the caller can release its views and
call ``close`` again.  Release views first (rings have ``release()``), then close the segment.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
import re
import stat
from types import TracebackType
from typing import NoReturn, Self

from vgpusim.common.errors import (
    AlreadyExists,
    Busy,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    WrongState,
)

__all__ = ["NAME_RE", "Segment", "list_segments", "remove_all", "validate_name"]

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
"""What a segment name may look like (``.`` and ``..`` are refused separately)."""

StrPath = str | os.PathLike[str]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid segment name, else raise ``InvalidArgument``."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise InvalidArgument(
            f"invalid segment name {name!r}: 1-255 characters of [A-Za-z0-9._-], not '.' or '..'",
            reason="INVALID_SEGMENT_NAME",
        )
    return name


def _reraise(exc: OSError, path: str) -> NoReturn:
    """Raise the domain error for an ``OSError`` met while creating or opening ``path``.

    Errnos without a domain meaning propagate as the ``OSError`` itself (a bug or a broken host).
    """
    if exc.errno == _errno.EEXIST:
        raise AlreadyExists(f"segment {path} exists already", reason="SEGMENT_EXISTS") from exc
    if exc.errno == _errno.ENOENT:
        raise NotFound(
            f"segment {path} (or its directory) does not exist", reason="SEGMENT_NOT_FOUND"
        ) from exc
    if exc.errno in (_errno.ENOSPC, _errno.ENOMEM, _errno.EFBIG):
        raise Exhausted(f"no room for segment {path}: {exc.strerror}", reason="SHM_EXHAUSTED") from exc
    if exc.errno in (_errno.ELOOP, _errno.ENOTDIR, _errno.EISDIR):
        raise InvalidArgument(
            f"{path} is not a segment file: {exc.strerror}", reason="NOT_A_SEGMENT"
        ) from exc
    if exc.errno in (_errno.EACCES, _errno.EPERM):
        raise PermissionDenied(f"no access to segment {path}", reason="SEGMENT_ACCESS_DENIED") from exc
    raise exc


class Segment:
    """One mapped segment.  Build it with :meth:`create` or :meth:`open`, not the constructor."""

    __slots__ = ("_buf", "_closed", "_mmap", "name", "path", "size")

    def __init__(self, path: str, name: str, mapping: mmap.mmap) -> None:
        self.path = path
        self.name = name
        self.size = len(mapping)
        self._mmap = mapping
        self._buf: memoryview | None = memoryview(mapping)
        self._closed = False

    @classmethod
    def create(
        cls, directory: StrPath, name: str, size: int, *, mode: int = 0o600, prealloc: bool = False
    ) -> Self:
        """Create ``<directory>/<name>`` of ``size`` zeroed bytes and map it.

        ``prealloc`` reserves the pages now (``posix_fallocate``), so a full tmpfs fails here with
        ``Exhausted`` instead of killing the process with SIGBUS at first touch.
        Return: the mapped segment, owned by the caller (who will ``unlink`` it).
        Errors: ``InvalidArgument`` (name, size <= 0), ``AlreadyExists``, ``NotFound`` (no such
        directory), ``Exhausted`` (no memory left with ``prealloc``).
        """
        validate_name(name)
        if not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"segment size must be a positive integer, not {size!r}")
        path = os.path.join(os.fspath(directory), name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, mode)
        except OSError as exc:
            _reraise(exc, path)
        try:
            os.fchmod(fd, mode)
            os.ftruncate(fd, size)
            if prealloc:
                os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.unlink(path)
            _reraise(exc, path)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(path, name, mapping)

    @classmethod
    def open(cls, directory: StrPath, name: str) -> Self:
        """Map the existing segment ``<directory>/<name>`` read/write, at its current size.

        Return: the mapped segment (not owned: the caller closes it but does not unlink it).
        Errors: ``InvalidArgument`` (name, empty file, not a regular file), ``NotFound``.
        """
        validate_name(name)
        path = os.path.join(os.fspath(directory), name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            _reraise(exc, path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{path} is not a regular file", reason="NOT_A_SEGMENT")
            if st.st_size <= 0:
                raise InvalidArgument(f"segment {path} is empty", reason="EMPTY_SEGMENT")
            mapping = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(path, name, mapping)

    @property
    def buf(self) -> memoryview:
        """The whole mapping as a writable 1-D memoryview of bytes (format ``B``).

        Errors: ``WrongState`` once ``close`` was called.
        """
        if self._buf is None:
            raise WrongState(f"segment {self.name} is closed", reason="SEGMENT_CLOSED")
        return self._buf

    @property
    def closed(self) -> bool:
        """True once the mapping is gone (or ``close`` was called and is waiting for exports)."""
        return self._buf is None

    def close(self) -> None:
        """Unmap the segment (idempotent); the file stays until ``unlink``.

        Errors: ``Busy`` (reason ``SEGMENT_EXPORTED``) if views derived from ``buf`` are still
        alive; the mapping then stays and a later ``close`` retries.
        """
        if self._closed:
            return
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        try:
            self._mmap.close()
        except BufferError as exc:
            raise Busy(
                f"segment {self.name} still has views exported (release rings and slices first)",
                reason="SEGMENT_EXPORTED",
            ) from exc
        self._closed = True

    def unlink(self, *, missing_ok: bool = False) -> None:
        """Remove the segment's file; mappings (ours and peers') stay valid until closed.

        Errors: ``NotFound`` if the file is gone already (unless ``missing_ok``).
        """
        try:
            os.unlink(self.path)
        except FileNotFoundError as exc:
            if not missing_ok:
                raise NotFound(f"segment {self.path} does not exist", reason="SEGMENT_NOT_FOUND") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Segment({self.path!r}, size={self.size}, {state})"


def list_segments(directory: StrPath) -> list[str]:
    """The sorted names of the segments (regular files with a valid name) in ``directory``.

    Errors: ``NotFound`` if the directory does not exist.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError as exc:
        raise NotFound(f"segment directory {os.fspath(directory)} does not exist") from exc
    names = [
        e.name
        for e in entries
        if e.is_file(follow_symlinks=False) and NAME_RE.match(e.name) and e.name not in (".", "..")
    ]
    return sorted(names)


def remove_all(directory: StrPath) -> int:
    """Unlink every segment in ``directory`` (clean-up after a crash); return how many.

    Leaves the directory itself and anything that is not a segment.  A missing directory counts
    as empty (clean-up is idempotent).
    """
    try:
        names = list_segments(directory)
    except NotFound:
        return 0
    removed = 0
    for name in names:
        try:
            os.unlink(os.path.join(os.fspath(directory), name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed
