"""Validated reading of TOML tables: every error names the file and the dotted key.

The GPU model files and the host config are data written by people; a typo must give an error
such as ``models/gvtg-skl.toml: key 'type[2].low_gm_mib': expected an integer >= 1, got -64``
instead of a KeyError deep inside the resource code.  :class:`TomlTable` wraps one parsed table,
hands out typed values, and :meth:`TomlTable.finish` rejects keys nobody asked for.

Glossary:
- key path: dotted path of a value from the file's root, arrays of tables indexed (``type[0].name``).
- reason: the ``InvalidArgument.reason`` every error of one kind of file carries
  (``GPU_MODEL_INVALID``, ``HOST_CONFIG_INVALID``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from vgpusim.common.errors import InvalidArgument, NotFound

_MISSING = object()


def schema_error(file: str, key: str, problem: str, *, reason: str) -> InvalidArgument:
    """The error for one bad value: message and metadata name ``file`` and ``key``."""
    where = f"key '{key}'" if key else "top level"
    return InvalidArgument(f"{file}: {where}: {problem}", reason=reason, metadata={"file": file, "key": key})


def parse_toml(text: str, *, file: str, reason: str) -> TomlTable:
    """Parse TOML ``text`` (named ``file`` in errors) into a :class:`TomlTable`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise schema_error(file, "", f"not valid TOML: {exc}", reason=reason) from exc
    return TomlTable(data, file=file, path="", reason=reason)


def load_toml(path: Path, *, reason: str, not_found_reason: str) -> TomlTable:
    """Read and parse the TOML file at ``path``; a missing file is ``NotFound(not_found_reason)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(
            f"{path}: no such file", reason=not_found_reason, metadata={"file": str(path)}
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise schema_error(str(path), "", f"cannot read: {exc}", reason=reason) from exc
    return parse_toml(text, file=str(path), reason=reason)


class TomlTable:
    """One TOML table with typed, range-checked getters and an unknown-key check."""

    def __init__(self, data: Mapping[str, object], *, file: str, path: str, reason: str) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        self._data = data
        self._used: set[str] = set()

    def key_path(self, key: str) -> str:
        """The dotted path of ``key`` in this table."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> InvalidArgument:
        """An error about ``key`` of this table."""
        return schema_error(self.file, self.key_path(key), problem, reason=self.reason)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self._data

    def _get(self, key: str, default: object) -> object:
        self._used.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            raise self.error(key, "missing")
        return default

    def integer(
        self, key: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        """An integer in ``[lo, hi]``; ``default`` when absent (required if None)."""
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"expected an integer >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(key, f"expected an integer <= {hi}, got {value}")
        return value

    def string(self, key: str, default: str | None = None, *, pattern: str | None = None) -> str:
        """A string, optionally matching the regular expression ``pattern`` in full."""
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(key, f"{value!r} does not match {pattern}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        """A string that is one of ``choices``."""
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool | None = None) -> bool:
        """A boolean."""
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def str_list(self, key: str, *, choices: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty list of distinct strings, each one of ``choices``."""
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected a non-empty list of strings, got {value!r}")
        for item in value:
            if item not in choices:
                raise self.error(key, f"expected items from {', '.join(choices)}, got {item!r}")
        if len(set(value)) != len(value):
            raise self.error(key, f"duplicate items in {value!r}")
        return tuple(str(item) for item in value)

    def table(self, key: str) -> TomlTable:
        """The sub-table ``key`` (required)."""
        value = self._get(key, _MISSING)
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {value!r}")
        return TomlTable(value, file=self.file, path=self.key_path(key), reason=self.reason)

    def tables(self, key: str) -> list[TomlTable]:
        """The non-empty array of tables ``key`` (``[[key]]`` in TOML)."""
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise self.error(key, f"expected a non-empty array of tables ([[{key}]]), got {value!r}")
        return [
            TomlTable(v, file=self.file, path=f"{self.key_path(key)}[{i}]", reason=self.reason)
            for i, v in enumerate(value)
        ]

    def finish(self) -> None:
        """Reject every key of this table that no getter asked for (catches typos)."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(sorted(self._used))})")
