"""Validation of the names the bus accepts: UUIDs, parents, type-ids, owners and attributes.

Every public entry point of the core runs its arguments through these functions first, so one
malformed string always gives the same error class and ``reason`` whichever call carried it.
They are pure and synchronous.

Glossary:
- canonical UUID: the 8-4-4-4-12 hex form the kernel's ``guid_parse`` accepts; any hex case on
  input, always reported lower-case (``%pUl``).
- type-id: ``<driver>-<type>``, the name of a ``mdev_supported_types/`` directory, e.g.
  ``i915-GVTg_V5_4``; the driver part is the parent driver's name and contains no ``-``.
- owner: the opaque id of whoever holds a device open (a VM's container id).
- attribute: one ``name=value`` pair of the ordered list mdevctl stores under ``attrs``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vgpusim.common.errors import InvalidArgument
from vgpusim.vgpu_bus.core.model import Attr

UUID_STRING_LEN = 36
"""Length of a canonical UUID; the kernel also accepts one more byte, a trailing newline."""

DEVICE_APIS = frozenset({"vfio-pci", "vfio-platform", "vfio-amba", "vfio-ccw", "vfio-ap"})
"""The ``device_api`` strings of the VFIO uapi header."""

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.I)
# A sysfs file name: no '/', no NUL, not '.' or '..'; we keep to a conservative printable subset.
_NAME_CHARS = r"A-Za-z0-9_.:+"
_PARENT_RE = re.compile(rf"[A-Za-z0-9][{_NAME_CHARS}-]{{0,127}}", re.ASCII)
_TYPE_ID_RE = re.compile(
    rf"(?P<driver>[A-Za-z0-9][{_NAME_CHARS}]{{0,63}})-(?P<name>[{_NAME_CHARS}-]{{1,127}})", re.ASCII
)
_ATTR_NAME_RE = re.compile(rf"[A-Za-z0-9_][{_NAME_CHARS}-]{{0,127}}", re.ASCII)
_OWNER_MAX = 256
_ATTR_VALUE_MAX = 4096


def parse_uuid(text: str) -> str:
    """The canonical lower-case form of ``text``, checked in the kernel's order (kernel-mdev §1.2).

    1. length: 36 bytes, or 37 when the last one is a newline (``UUID_STRING_LEN`` check);
    2. parse: the 8-4-4-4-12 hex form (``guid_parse``).

    Raises ``InvalidArgument`` reason ``INVALID_UUID`` (errno EINVAL) for either failure.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size == UUID_STRING_LEN + 1 and text.endswith("\n"):
        text = text[:-1]
    elif size != UUID_STRING_LEN:
        raise InvalidArgument(
            f"Invalid UUID {text!r}: {size} bytes, expected {UUID_STRING_LEN} (or {UUID_STRING_LEN + 1} "
            "with a trailing newline)",
            reason="INVALID_UUID",
            metadata={"uuid": text[:64]},
        )
    if not _UUID_RE.fullmatch(text):
        raise InvalidArgument(
            f"Invalid UUID {text!r}: not in the canonical 8-4-4-4-12 hex form",
            reason="INVALID_UUID",
            metadata={"uuid": text},
        )
    return text.lower()


def check_parent_name(parent: str) -> str:
    """``parent`` if it can name a parent device (``0000:00:02.0``, ``mtty``), else ``InvalidArgument``."""
    if not _PARENT_RE.fullmatch(parent):
        raise InvalidArgument(
            f"Invalid parent name {parent!r}: expected 1-128 characters of [A-Za-z0-9_.:+-]",
            reason="INVALID_PARENT_NAME",
            metadata={"parent": parent[:128]},
        )
    return parent


def split_type_id(type_id: str) -> tuple[str, str]:
    """``(driver, name)`` of a ``<driver>-<type>`` type-id; ``InvalidArgument`` ``INVALID_TYPE_ID`` if bad."""
    match = _TYPE_ID_RE.fullmatch(type_id)
    if match is None:
        raise InvalidArgument(
            f"Invalid mdev type-id {type_id!r}: expected '<driver>-<type>' (e.g. 'i915-GVTg_V5_4')",
            reason="INVALID_TYPE_ID",
            metadata={"type_id": type_id[:128]},
        )
    return match["driver"], match["name"]


def check_type_id(type_id: str) -> str:
    """``type_id`` if well-formed (see :func:`split_type_id`)."""
    split_type_id(type_id)
    return type_id


def check_device_api(device_api: str) -> str:
    """``device_api`` if it is one of :data:`DEVICE_APIS`, else ``InvalidArgument`` ``INVALID_DEVICE_API``."""
    if device_api not in DEVICE_APIS:
        raise InvalidArgument(
            f"Invalid device_api {device_api!r}: expected one of {', '.join(sorted(DEVICE_APIS))}",
            reason="INVALID_DEVICE_API",
            metadata={"device_api": device_api[:64]},
        )
    return device_api


def check_owner(owner: str) -> str:
    """``owner`` if it is a non-empty printable id of at most 256 characters, else ``INVALID_OWNER``."""
    if not owner or len(owner) > _OWNER_MAX or not owner.isprintable():
        raise InvalidArgument(
            f"Invalid owner id {owner[:64]!r}: expected 1-{_OWNER_MAX} printable characters",
            reason="INVALID_OWNER",
        )
    return owner


def check_attrs(attrs: Iterable[Attr]) -> tuple[Attr, ...]:
    """The attributes as a tuple, each name a sysfs file name and each value printable text.

    Order is kept and names may repeat (mdevctl writes them one by one, in order).
    Raises ``InvalidArgument`` reason ``INVALID_ATTRIBUTE`` naming the first bad index.
    """
    checked = tuple(attrs)
    for index, attr in enumerate(checked):
        if not _ATTR_NAME_RE.fullmatch(attr.name):
            problem = f"name {attr.name[:64]!r} is not a sysfs attribute name"
        elif len(attr.value) > _ATTR_VALUE_MAX or "\x00" in attr.value:
            problem = f"value of {attr.name!r} is longer than {_ATTR_VALUE_MAX} characters or contains NUL"
        else:
            continue
        raise InvalidArgument(
            f"Invalid attribute @{{{index}}}: {problem}",
            reason="INVALID_ATTRIBUTE",
            metadata={"index": str(index)},
        )
    return checked
