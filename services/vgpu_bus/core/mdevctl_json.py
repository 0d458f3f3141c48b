"""mdevctl's JSON shapes, built from core records: ``types --dumpjson`` and ``list --dumpjson``.

Pure functions; the output is what mdevctl 1.x prints (reference ``mdevctl.md`` §2, read from
``src/main.rs``): parents sorted by name, types sorted by type-id, devices sorted by UUID, an
empty result is ``[]``, and :func:`dumps` formats like ``serde_json::to_string_pretty``.

Shapes::

    types:  [ { "<parent>": [ { "<type-id>": {"available_instances": N, "device_api": "vfio-pci",
                                             "name": "..", "description": ".."} } ] } ]
    list:   [ { "<parent>": [ { "<uuid>": {"mdev_type": "..", "start": "auto|manual",
                                          "attrs": [ {"name": "value"} ]} } ] } ]
    list -u U with one match:  {"mdev_type": .., "start": .., "attrs": [..]}

Glossary:
- config object: the ``{"mdev_type", "start", "attrs"}`` object mdevctl stores per device.
- active entry: a running device shown as a config object; ``start`` comes from a definition of
  the same UUID under the same parent (``manual`` if none), ``attrs`` from the device itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import groupby

from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core.model import Attr, Definition, DeviceInfo, DeviceState, StartPolicy, TypeInfo

JsonObject = dict[str, object]


def type_json(info: TypeInfo) -> JsonObject:
    """``{"<type-id>": {...}}``; ``name`` and ``description`` are left out when empty, and the
    description's newlines become ``", "`` as mdevctl does."""
    body: JsonObject = {"available_instances": info.available_instances, "device_api": info.device_api}
    if info.name:
        body["name"] = info.name
    description = info.description.strip().replace("\n", ", ")
    if description:
        body["description"] = description
    return {info.type_id: body}


def types_json(types: Iterable[TypeInfo]) -> list[JsonObject]:
    """``mdevctl types --dumpjson``."""
    ordered = sorted(types, key=lambda info: (info.parent, info.type_id))
    parents: JsonObject = {
        parent: [type_json(info) for info in group]
        for parent, group in groupby(ordered, key=lambda i: i.parent)
    }
    return [parents] if parents else []


def config_json(definition: Definition) -> JsonObject:
    """The config object of one device: ``{"mdev_type", "start", "attrs"}``."""
    return {
        "mdev_type": definition.type_id,
        "start": definition.start.value,
        "attrs": [{attr.name: attr.value} for attr in definition.attrs],
    }


def list_json(entries: Iterable[Definition], *, uuid: str | None = None) -> list[JsonObject] | JsonObject:
    """``mdevctl list [--defined] --dumpjson [-u U]`` of already filtered entries.

    With ``uuid`` given and exactly one entry, just that entry's config object (ready to be
    stored as a definition file), as mdevctl prints it.
    """
    ordered = sorted(entries, key=lambda entry: (entry.parent, entry.uuid))
    if uuid is not None and len(ordered) <= 1:
        return config_json(ordered[0]) if ordered else []
    parents: JsonObject = {
        parent: [{entry.uuid: config_json(entry)} for entry in group]
        for parent, group in groupby(ordered, key=lambda e: e.parent)
    }
    return [parents] if parents else []


def active_entries(
    devices: Iterable[DeviceInfo], definitions: Iterable[Definition]
) -> tuple[Definition, ...]:
    """Running devices as ``mdevctl list`` shows them (see "active entry"); ``CREATING`` ones are skipped."""
    starts = {(definition.uuid, definition.parent): definition.start for definition in definitions}
    return tuple(
        Definition(
            device.uuid,
            device.parent,
            device.type_id,
            starts.get((device.uuid, device.parent), StartPolicy.MANUAL),
            device.attrs,
        )
        for device in devices
        if device.state is not DeviceState.CREATING
    )


def dumps(value: object) -> str:
    """JSON text as mdevctl prints it (two-space indent, ``": "``, non-ASCII kept)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def definition_from_json(uuid: str, parent: str, value: object) -> Definition:
    """Read a config object (mdevctl ``--jsonfile`` / a definition file); mdevctl's errors.

    ``start`` other than ``"auto"`` means manual, as in mdevctl. Raises ``InvalidArgument``
    reason ``INVALID_JSON``. ``uuid`` and ``parent`` are taken as given (validate them apart).
    """
    if not isinstance(value, dict) or value.get("mdev_type") is None or value.get("start") is None:
        raise _invalid("invalid json")
    type_id, start, raw_attrs = value["mdev_type"], value["start"], value.get("attrs")
    if not isinstance(type_id, str):
        raise _invalid("invalid json")
    if raw_attrs is not None and not isinstance(raw_attrs, list):
        raise _invalid("attributes field is not an array")
    attrs = []
    for item in raw_attrs or []:
        if not isinstance(item, dict):
            raise _invalid("invalid JSON format for attribute: not an object")
        if len(item) != 1:
            raise _invalid("invalid JSON format for attribute: too many fields")
        ((name, attr_value),) = item.items()
        if not isinstance(attr_value, str):
            raise _invalid(f"invalid JSON format for attribute: value of {name!r} is not a string")
        attrs.append(Attr(name, attr_value))
    policy = StartPolicy.AUTO if start == "auto" else StartPolicy.MANUAL
    return Definition(uuid, parent, type_id, policy, tuple(attrs))


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_JSON")
