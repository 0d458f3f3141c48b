"""The SQLite definition store: persistence across re-opens, schema versioning, WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.vgpu_bus.helpers import BIG, OTHER_PARENT, PARENT, SMALL, U1, U2
from vgpusim.common.errors import AlreadyExists, NotFound, WrongState
from vgpusim.vgpu_bus.core.model import Attr, Definition, StartPolicy
from vgpusim.vgpu_bus.core.store import SCHEMA_VERSION, DefinitionStore, attrs_from_json, attrs_to_json

D1 = Definition(U1, PARENT, SMALL, StartPolicy.AUTO, (Attr("weight", "2"), Attr("resolution", "1024x768")))
D2 = Definition(U1, OTHER_PARENT, BIG)
D3 = Definition(U2, PARENT, BIG, StartPolicy.MANUAL, (Attr("weight", "4"), Attr("weight", "8")))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bus.sqlite3"


def test_definitions_survive_closing_and_reopening_the_file(db: Path) -> None:
    with DefinitionStore(db) as store:
        for definition in (D3, D2, D1):
            store.insert(definition)
    with DefinitionStore(db) as store:
        assert store.find() == (D1, D3, D2)  # by parent, then UUID
        assert store.get(U1, PARENT) == D1
        assert store.count() == 3


def test_a_new_file_is_versioned_and_in_wal_mode(db: Path) -> None:
    with DefinitionStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 1
        assert store.journal_mode == "wal"


def test_attributes_keep_order_and_duplicates_in_mdevctl_encoding() -> None:
    encoded = attrs_to_json(D3.attrs)
    assert encoded == '[{"weight": "4"}, {"weight": "8"}]'
    assert attrs_from_json(encoded) == D3.attrs


def test_find_filters_by_uuid_and_parent(db: Path) -> None:
    with DefinitionStore(db) as store:
        for definition in (D1, D2, D3):
            store.insert(definition)
        assert store.find(uuid=U1) == (D1, D2)
        assert store.find(parent=PARENT) == (D1, D3)
        assert store.find(uuid=U1, parent=PARENT) == (D1,)
        assert store.get(U2, OTHER_PARENT) is None


def test_one_uuid_per_parent(db: Path) -> None:
    with DefinitionStore(db) as store:
        store.insert(D1)
        with pytest.raises(AlreadyExists) as info:
            store.insert(Definition(U1, PARENT, BIG))
        assert info.value.reason == "DEFINITION_EXISTS"
        assert info.value.message == f"Device {U1} on {PARENT} already defined"
        assert store.find() == (D1,)


def test_update_and_delete(db: Path) -> None:
    with DefinitionStore(db) as store:
        store.insert(D1)
        changed = Definition(U1, PARENT, BIG, StartPolicy.MANUAL, ())
        store.update(changed)
        assert store.get(U1, PARENT) == changed
        with pytest.raises(NotFound) as info:
            store.update(D2)
        assert info.value.reason == "UNKNOWN_DEFINITION"
        assert store.delete(U1, PARENT)
        assert not store.delete(U1, PARENT)
        assert store.count() == 0


def test_a_file_from_a_newer_schema_is_refused_untouched(db: Path) -> None:
    with DefinitionStore(db) as store:
        store.insert(D1)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(WrongState) as info:
        DefinitionStore(db)
    assert info.value.reason == "SCHEMA_TOO_NEW"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM definitions").fetchone() == (1,)


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WrongState) as info:
        DefinitionStore(db)
    assert info.value.reason == "STORE_UNREADABLE"
    assert db.read_bytes() == b"this is not sqlite" * 100
