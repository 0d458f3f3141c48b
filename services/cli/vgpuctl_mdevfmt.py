"""mdevctl's formats, byte for byte: the JSON config it reads, and the ``types``/``list`` output.

The shapes are those of mdevctl 1.2.0 (``src/main.rs`` and its test data): serde_json's pretty
printer (2-space indent, keys in insertion order), parents in name order, types in type-id order,
devices in UUID order.  ``types --dumpjson`` is ``[{parent: [{type: {available_instances,
device_api[, name][, description]}}]}]``; ``list --dumpjson`` is ``[{parent: [{uuid: config}]}]``,
or just the config when ``-u`` matched a single device; both print ``[]`` when empty.  Text lines
are ``<uuid> <parent> <type> <auto|manual>[ (defined)| (active)]`` and, verbose, the attributes
as ``    @{i}: {"name":"value"}``.

Glossary:
- config: mdevctl's JSON of one device, ``{"mdev_type": T, "start": "auto"|"manual",
  "attrs": [{"name": "value"}, ...]}`` (the ``--jsonfile`` input and the ``--dumpjson`` leaf).
- entry: one listed device (active or defined) with the marker mdevctl appends:
  `` (defined)`` for an active device that has a definition, `` (active)`` for a running definition.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid as uuid_mod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vgpusim.cli.vgpuctl_output import dump_json, error_from_os
from vgpusim.client import bus_pb
from vgpusim.common.errors import InvalidArgument

__all__ = [
    "Config",
    "Entry",
    "format_list",
    "format_types_json",
    "format_types_text",
    "parse_config",
    "read_config",
    "uuid_arg",
]


def uuid_arg(text: str) -> str:
    """argparse type of ``-u``: any form Python's UUID parser takes, as canonical lower case."""
    try:
        return str(uuid_mod.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid UUID {text!r}") from None


@dataclass(frozen=True)
class Config:
    """A parsed mdevctl JSON config."""

    mdev_type: str
    start: bus_pb.StartPolicy.ValueType
    attrs: tuple[tuple[str, str], ...]


def parse_config(text: str) -> Config:
    """mdevctl's config JSON -> :class:`Config` (InvalidArgument, reason ``INVALID_JSON``, if malformed)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(str(exc), reason="INVALID_JSON") from None
    if not isinstance(value, dict) or value.get("mdev_type") is None or value.get("start") is None:
        raise InvalidArgument("invalid json", reason="INVALID_JSON")
    if not isinstance(value["mdev_type"], str):
        raise InvalidArgument("invalid json: mdev_type must be a string", reason="INVALID_JSON")
    start = bus_pb.START_POLICY_AUTO if value["start"] == "auto" else bus_pb.START_POLICY_MANUAL
    raw_attrs = value.get("attrs")
    if raw_attrs is not None and not isinstance(raw_attrs, list):
        raise InvalidArgument("attributes field is not an array", reason="INVALID_JSON")
    attrs: list[tuple[str, str]] = []
    for item in raw_attrs or ():
        if not isinstance(item, dict):
            raise InvalidArgument("invalid JSON format for attribute: not an object", reason="INVALID_JSON")
        if len(item) != 1:
            raise InvalidArgument("invalid JSON format for attribute: too many fields", reason="INVALID_JSON")
        ((key, val),) = item.items()
        if not isinstance(val, str):
            raise InvalidArgument(
                f"invalid JSON format for attribute {{{json.dumps(key)}, {json.dumps(val)}}}: "
                "value must be of type str",
                reason="INVALID_JSON",
            )
        attrs.append((key, val))
    return Config(value["mdev_type"], start, tuple(attrs))


def read_config(path: str, what: str) -> Config:
    """Read and parse ``--jsonfile`` (``/dev/stdin`` and ``-`` read standard input)."""
    try:
        if path in ("-", "/dev/stdin"):
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise error_from_os(exc, f"{what} {json.dumps(path)}", "JSONFILE_UNREADABLE") from None
    return parse_config(text)


# ---- types ----------------------------------------------------------------------------------


def _type_fields(t: bus_pb.MdevType) -> tuple[str, str]:
    return t.name.strip(), t.description.strip().replace("\n", ", ")


def format_types_text(parents: Iterable[bus_pb.Parent]) -> str:
    """``mdevctl types`` text (without the final empty line)."""
    out: list[str] = []
    for parent in sorted(parents, key=lambda p: p.name):
        out.append(f"{parent.name}\n")
        for t in sorted(parent.types, key=lambda t: t.type_id):
            name, description = _type_fields(t)
            out.append(f"  {t.type_id}\n    Available instances: {t.available_instances}\n")
            out.append(f"    Device API: {t.device_api}\n")
            out.append(f"    Name: {name}\n" if name else "")
            out.append(f"    Description: {description}\n" if description else "")
    return "".join(out)


def format_types_json(parents: Iterable[bus_pb.Parent]) -> str:
    """``mdevctl types --dumpjson``: ``[{parent: [{type: {available_instances, device_api, ...}}]}]``."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for parent in sorted(parents, key=lambda p: p.name):
        children: list[dict[str, Any]] = []
        for t in sorted(parent.types, key=lambda t: t.type_id):
            name, description = _type_fields(t)
            info: dict[str, Any] = {"available_instances": t.available_instances, "device_api": t.device_api}
            if name:
                info["name"] = name
            if description:
                info["description"] = description
            children.append({t.type_id: info})
        by_parent[parent.name] = children
    return dump_json([by_parent] if by_parent else [])


# ---- list -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One device of a listing."""

    uuid: str
    parent: str
    mdev_type: str
    auto: bool
    attrs: tuple[tuple[str, str], ...]
    marker: str

    def config(self) -> dict[str, Any]:
        """The mdevctl config JSON of this device."""
        return {
            "mdev_type": self.mdev_type,
            "start": "auto" if self.auto else "manual",
            "attrs": [{k: v} for k, v in self.attrs],
        }

    def text(self, verbose: bool) -> str:
        """The mdevctl text line (and, verbose, its attributes)."""
        line = (
            f"{self.uuid} {self.parent} {self.mdev_type} {'auto' if self.auto else 'manual'}{self.marker}\n"
        )
        if verbose and self.attrs:
            line += "  Attrs:\n" + "".join(
                f'    @{{{i}}}: {{"{k}":"{v}"}}\n' for i, (k, v) in enumerate(self.attrs)
            )
        return line


def format_list(entries: Sequence[Entry], *, dumpjson: bool, verbose: bool, uuid_given: bool) -> str:
    """``mdevctl list`` output (without the final newline ``println!`` adds)."""
    ordered = sorted(entries, key=lambda e: (e.parent, e.uuid))
    if not dumpjson:
        return "".join(e.text(verbose) for e in ordered)
    if uuid_given and len(ordered) == 1:
        return dump_json(ordered[0].config())
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for e in ordered:
        by_parent.setdefault(e.parent, []).append({e.uuid: e.config()})
    return dump_json([by_parent] if by_parent else [])
