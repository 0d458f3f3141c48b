"""Persistent device definitions in SQLite: the bus's ``/etc/mdevctl.d``.

One row per (uuid, parent), as mdevctl keeps one file per ``<parent>/<uuid>``; a UUID may be
defined under several parents. ``attrs`` is stored as mdevctl writes it, a JSON array of
single-key objects in order. The file is opened in WAL mode; the schema version lives in
``PRAGMA user_version`` and is migrated forward at open, step by step (:data:`MIGRATIONS`);
a file written by a newer schema is refused rather than guessed at. Calls are synchronous: each
is a short local transaction, and callers run on one event loop.

Glossary:
- schema version: ``PRAGMA user_version``; 0 is an empty file, :data:`SCHEMA_VERSION` is current.
- WAL: SQLite's write-ahead log mode, so readers never block the writer and a crash loses at most
  the transaction in flight.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from vgpusim.common.errors import AlreadyExists, NotFound, WrongState
from vgpusim.vgpu_bus.core.model import Attr, Definition, StartPolicy

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE definitions (
            uuid    TEXT NOT NULL,
            parent  TEXT NOT NULL,
            type_id TEXT NOT NULL,
            start   TEXT NOT NULL CHECK (start IN ('auto', 'manual')),
            attrs   TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (uuid, parent)
        ) WITHOUT ROWID
        """,
    ),
}
"""``MIGRATIONS[v]`` takes a file from version ``v - 1`` to ``v``."""


def attrs_to_json(attrs: tuple[Attr, ...]) -> str:
    """mdevctl's ``attrs`` encoding: ``[{"name": "value"}, ...]``."""
    return json.dumps([{attr.name: attr.value} for attr in attrs])


def attrs_from_json(text: str) -> tuple[Attr, ...]:
    """Inverse of :func:`attrs_to_json`."""
    return tuple(Attr(name, value) for item in json.loads(text) for name, value in item.items())


class DefinitionStore:
    """The definitions table of one SQLite file (``<state>/bus.sqlite3``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if needed) and migrate the file.

        Raises ``WrongState`` reason ``STORE_UNREADABLE`` if it is not a usable SQLite database,
        ``SCHEMA_TOO_NEW`` if a newer vgpusim wrote it.
        """
        self.path = os.fspath(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise WrongState(
                f"Definition store {self.path} is unreadable: {error}",
                reason="STORE_UNREADABLE",
                metadata={"path": self.path},
            ) from error
        except BaseException:
            self._conn.close()
            raise

    @property
    def schema_version(self) -> int:
        """The file's schema version."""
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    @property
    def journal_mode(self) -> str:
        """``wal`` for a file (``memory`` for ``:memory:``)."""
        row = self._conn.execute("PRAGMA journal_mode").fetchone()
        return str(row[0])

    def get(self, uuid: str, parent: str) -> Definition | None:
        """The definition of ``uuid`` under ``parent``, if any."""
        row = self._conn.execute(
            "SELECT uuid, parent, type_id, start, attrs FROM definitions WHERE uuid = ? AND parent = ?",
            (uuid, parent),
        ).fetchone()
        return None if row is None else _definition(row)

    def find(self, *, uuid: str | None = None, parent: str | None = None) -> tuple[Definition, ...]:
        """Definitions matching the given filters, sorted by parent then UUID."""
        rows = self._conn.execute(
            "SELECT uuid, parent, type_id, start, attrs FROM definitions"
            " WHERE (?1 IS NULL OR uuid = ?1) AND (?2 IS NULL OR parent = ?2) ORDER BY parent, uuid",
            (uuid, parent),
        ).fetchall()
        return tuple(_definition(row) for row in rows)

    def count(self) -> int:
        """How many definitions are stored."""
        row = self._conn.execute("SELECT count(*) FROM definitions").fetchone()
        return int(row[0])

    def insert(self, definition: Definition) -> None:
        """Store a new definition; ``AlreadyExists`` ``DEFINITION_EXISTS`` if (uuid, parent) is taken."""
        try:
            with self._transaction():
                self._conn.execute(
                    "INSERT INTO definitions (uuid, parent, type_id, start, attrs) VALUES (?, ?, ?, ?, ?)",
                    _row(definition),
                )
        except sqlite3.IntegrityError:
            raise _exists(definition) from None

    def update(self, definition: Definition) -> None:
        """Replace a stored definition; ``NotFound`` ``UNKNOWN_DEFINITION`` if there is none."""
        uuid, parent, type_id, start, attrs = _row(definition)
        with self._transaction():
            cursor = self._conn.execute(
                "UPDATE definitions SET type_id = ?, start = ?, attrs = ? WHERE uuid = ? AND parent = ?",
                (type_id, start, attrs, uuid, parent),
            )
        if cursor.rowcount == 0:
            raise NotFound(
                f"Mediated device {parent}/{uuid} is not defined",
                reason="UNKNOWN_DEFINITION",
                metadata={"uuid": uuid, "parent": parent},
            )

    def delete(self, uuid: str, parent: str) -> bool:
        """Forget one definition; whether it existed."""
        with self._transaction():
            cursor = self._conn.execute(
                "DELETE FROM definitions WHERE uuid = ? AND parent = ?", (uuid, parent)
            )
        return cursor.rowcount > 0

    def close(self) -> None:
        """Close the file (checkpointing the WAL)."""
        self._conn.close()

    def __enter__(self) -> DefinitionStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise WrongState(
                f"Definition store {self.path} has schema version {version}; this vgpusim knows up to "
                f"{SCHEMA_VERSION}",
                reason="SCHEMA_TOO_NEW",
                metadata={"path": self.path, "schema_version": str(version)},
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in MIGRATIONS[target]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {target:d}")


def _row(definition: Definition) -> tuple[str, str, str, str, str]:
    return (
        definition.uuid,
        definition.parent,
        definition.type_id,
        definition.start.value,
        attrs_to_json(definition.attrs),
    )


def _definition(row: tuple[str, str, str, str, str]) -> Definition:
    uuid, parent, type_id, start, attrs = row
    return Definition(uuid, parent, type_id, StartPolicy(start), attrs_from_json(attrs))


def _exists(definition: Definition) -> AlreadyExists:
    return AlreadyExists(
        f"Device {definition.uuid} on {definition.parent} already defined",
        reason="DEFINITION_EXISTS",
        metadata={"uuid": definition.uuid, "parent": definition.parent},
    )
