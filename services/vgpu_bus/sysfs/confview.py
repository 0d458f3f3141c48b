"""``etc/mdevctl.d``: the bus's persistent definitions as mdevctl's own files.

mdevctl keeps one JSON file per definition, ``/etc/mdevctl.d/<parent>/<uuid>``; the bus keeps
them in SQLite. Here the two are one set: every file *is* a definition of the bus, read and
written through the core (``VgpuBus.definitions``), so ``mdevctl define`` through the mount
shows in ``vgpuctl`` and in the event stream at once, and ``vgpuctl define`` shows in
``mdevctl list --defined`` at once. Nothing is copied and nothing can drift.

Operations (what mdevctl 1.2.0 does is in reference ``mdevctl.md`` §2):

- ``mkdir <P>`` (``fs::create_dir_all``): an empty parent directory, kept in memory until
  ``rmdir`` or restart (a parent with definitions always shows); a bad name is ``EINVAL``;
- create + ``write()`` of ``<P>/<U>`` (``fs::write``): each time the bytes written so far form
  one complete JSON value, they are committed, inside that ``write()``: a new definition is
  ``define``\\ d; a changed one is ``modify``\\ d when one ``modify`` call can express the change
  (type and start policy, or one attribute added or deleted), else undefined and defined
  again. mdevctl's JSON errors and the core's (``INVALID_TYPE_ID``...) are ``EINVAL``;
- ``unlink <P>/<U>``: ``undefine``; ``rmdir <P>``: ``ENOTEMPTY`` while it holds definitions;
- ``rename`` of a definition file to another ``<P>/<U>``: define the new one, undefine the old;
- a file created but not yet written shows as empty until it is closed; only UUID-named files
  can be created in a parent directory (``EINVAL`` otherwise), nothing elsewhere (``EACCES``).
- ``scripts.d/{callouts,notifiers}`` are empty and read-only: the bus runs no callout scripts.

Glossary:
- commit: turning the JSON written to a file into a definition of the bus.
- pending file: created and open, nothing committed yet; visible as an empty file.
"""

from __future__ import annotations

import errno
import json
from collections import Counter

from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core import Definition, Definitions, VgpuBus, parse_uuid
from vgpusim.vgpu_bus.core.mdevctl_json import config_json, definition_from_json, dumps
from vgpusim.vgpu_bus.core.naming import check_attrs, check_parent_name, check_type_id
from vgpusim.vgpu_bus.sysfs.layout import CONFIG, DIR, MODE_RW, FsError, Kind, Node, Path, enoent


def definition_text(definition: Definition) -> bytes:
    """The file content of a definition: mdevctl's ``to_string_pretty`` of its config object."""
    return dumps(config_json(definition)).encode()


class ConfigView:
    """``etc/mdevctl.d`` over one bus. Call only on the bus's event loop."""

    def __init__(self, bus: VgpuBus) -> None:
        self._bus = bus
        self._dirs: set[str] = set()
        self._pending: Counter[tuple[str, str]] = Counter()

    # -- structure -----------------------------------------------------------------------------

    async def resolve(self, path: Path) -> Node:
        """What the dynamic ``path`` under ``etc/mdevctl.d`` is now; ``ENOENT`` if nothing."""
        match path:
            case ("etc", "mdevctl.d", parent) if parent in self._parents():
                return DIR
            case ("etc", "mdevctl.d", parent, uuid):
                definition = self._find(parent, uuid)
                if definition is not None:
                    return _file(definition_text(definition))
                if self._pending[(parent, uuid)] > 0:
                    return _file(b"")
        raise enoent(path)

    async def listdir(self, path: Path) -> list[tuple[str, Node]]:
        """The dynamic entries of ``path``."""
        if path == CONFIG:
            return [(parent, DIR) for parent in sorted(self._parents())]
        match path:
            case ("etc", "mdevctl.d", parent) if parent in self._parents():
                files = {
                    d.definition.uuid: _file(definition_text(d.definition))
                    for d in self._bus.definitions.list_defined(parent=parent)
                }
                for (p, uuid), count in self._pending.items():
                    if p == parent and count > 0:
                        files.setdefault(uuid, _file(b""))
                return sorted(files.items())
        raise enoent(path)

    async def read(self, path: Path) -> bytes:
        """The JSON of a definition file."""
        match path:
            case ("etc", "mdevctl.d", parent, uuid):
                definition = self._find(parent, uuid)
                if definition is not None:
                    return definition_text(definition)
                if self._pending[(parent, uuid)] > 0:
                    return b""
        raise enoent(path)

    # -- changes -------------------------------------------------------------------------------

    async def mkdir(self, path: Path) -> Node:
        """``mkdir etc/mdevctl.d/<P>``."""
        match path:
            case ("etc", "mdevctl.d", parent):
                if parent in self._parents() or parent == "scripts.d":
                    raise FsError(errno.EEXIST, parent)
                try:
                    check_parent_name(parent)
                except InvalidArgument:
                    raise FsError(errno.EINVAL, parent) from None
                self._dirs.add(parent)
                return DIR
        raise FsError(errno.EACCES, "/".join(path))

    async def create(self, path: Path) -> Node:
        """A new, still empty definition file ``<P>/<U>`` (the file handle's ``O_CREAT``)."""
        match path:
            case ("etc", "mdevctl.d", parent, name) if parent in self._parents():
                uuid = _file_uuid(name)
                if self._find(parent, uuid) is not None or self._pending[(parent, uuid)] > 0:
                    raise FsError(errno.EEXIST, name)
                self._pending[(parent, uuid)] += 1
                return _file(b"")
        raise FsError(errno.EACCES, "/".join(path))

    async def release(self, path: Path) -> None:
        """A file handle made by :meth:`create` was closed."""
        if len(path) == 4 and self._pending[(path[2], path[3])] > 0:
            self._pending[(path[2], path[3])] -= 1
            if self._pending[(path[2], path[3])] == 0:
                del self._pending[(path[2], path[3])]

    async def commit(self, path: Path, data: bytes) -> None:
        """Make the JSON ``data`` the definition ``path`` names (see the module docstring)."""
        match path:
            case ("etc", "mdevctl.d", parent, name):
                uuid = _file_uuid(name)
            case _:
                raise FsError(errno.EACCES, "/".join(path))
        try:
            value = json.loads(data.decode("utf-8"))
            new = definition_from_json(uuid, parent, value)
            check_parent_name(new.parent)
            check_type_id(new.type_id)
            check_attrs(new.attrs)
        except (ValueError, InvalidArgument) as error:
            raise FsError(errno.EINVAL, str(error)) from None
        self._store(new, self._find(parent, uuid))

    async def unlink(self, path: Path) -> None:
        """``rm <P>/<U>``: undefine."""
        match path:
            case ("etc", "mdevctl.d", parent, name):
                definition = self._find(parent, name)
                if definition is not None:
                    self._bus.definitions.undefine(definition.uuid, parent)
                    return
                if self._pending.pop((parent, name), 0):
                    return
                raise enoent(path)
        raise FsError(errno.EACCES, "/".join(path))

    async def rmdir(self, path: Path) -> None:
        """``rmdir <P>``: only when it holds no definition."""
        match path:
            case ("etc", "mdevctl.d", parent) if parent in self._parents():
                if self._bus.definitions.list_defined(parent=parent) or any(
                    p == parent for p, _ in self._pending
                ):
                    raise FsError(errno.ENOTEMPTY, parent)
                self._dirs.discard(parent)
                return
        raise FsError(errno.EACCES, "/".join(path))

    async def rename(self, old: Path, new: Path, *, replace: bool) -> None:
        """Move a definition to another ``<P>/<U>`` (``replace``: overwrite one that is there)."""
        match old, new:
            case ("etc", "mdevctl.d", old_parent, old_name), ("etc", "mdevctl.d", new_parent, new_name):
                pass
            case _:
                raise FsError(errno.EPERM, "/".join(old))
        moved = self._find(old_parent, old_name)
        if moved is None:
            raise enoent(old)
        if new_parent not in self._parents():
            raise enoent(new)
        uuid = _file_uuid(new_name)
        if (new_parent, uuid) == (old_parent, moved.uuid):
            return
        existing = self._find(new_parent, uuid)
        if existing is not None and not replace:
            raise FsError(errno.EEXIST, "/".join(new))
        if existing is not None:
            self._bus.definitions.undefine(uuid, new_parent)
        self._define(Definition(uuid, new_parent, moved.type_id, moved.start, moved.attrs))
        self._bus.definitions.undefine(moved.uuid, old_parent)

    # -- internals -----------------------------------------------------------------------------

    def _parents(self) -> set[str]:
        defined = {d.definition.parent for d in self._bus.definitions.list_defined()}
        return (defined | self._dirs) - {"scripts.d"}  # mdevctl skips that name too

    def _find(self, parent: str, name: str) -> Definition | None:
        try:
            uuid = parse_uuid(name)
        except InvalidArgument:
            return None
        if uuid != name:
            return None
        found = self._bus.definitions.list_defined(uuid=uuid, parent=parent)
        return found[0].definition if found else None

    def _store(self, new: Definition, old: Definition | None) -> None:
        if old is None:
            self._define(new)
            return
        if old == new:
            return
        if _modify_once(self._bus.definitions, old, new):
            return
        self._bus.definitions.undefine(old.uuid, old.parent)
        try:
            self._define(new)
        except BaseException:
            self._define(old)
            raise

    def _define(self, definition: Definition) -> None:
        self._bus.definitions.define(
            definition.uuid,
            definition.parent,
            definition.type_id,
            start=definition.start,
            attrs=definition.attrs,
        )


def _file(content: bytes) -> Node:
    return Node(Kind.FILE, MODE_RW, size=len(content))


def _file_uuid(name: str) -> str:
    """The UUID a definition file is named after: canonical and lower-case, else ``EINVAL``."""
    try:
        uuid = parse_uuid(name)
    except InvalidArgument:
        raise FsError(errno.EINVAL, f"{name}: a definition file is named after its UUID") from None
    if uuid != name:
        raise FsError(errno.EINVAL, f"{name}: the UUID must be lower-case")
    return uuid


def _modify_once(definitions: Definitions, old: Definition, new: Definition) -> bool:
    """Take ``old`` to ``new`` with one ``modify`` call if one can (see the module docstring)."""
    if old.attrs == new.attrs:
        definitions.modify(new.uuid, new.parent, type_id=new.type_id, start=new.start)
        return True
    if (old.type_id, old.start) != (new.type_id, new.start) or abs(len(old.attrs) - len(new.attrs)) != 1:
        return False
    shorter, longer = sorted((old.attrs, new.attrs), key=len)
    index = next((i for i, (a, b) in enumerate(zip(shorter, longer, strict=False)) if a != b), len(shorter))
    if longer[:index] + longer[index + 1 :] != shorter:
        return False
    if longer is new.attrs:
        definitions.modify(new.uuid, new.parent, add_attr=new.attrs[index], index=index)
    else:
        definitions.modify(new.uuid, new.parent, delete_attr=True, index=index)
    return True
