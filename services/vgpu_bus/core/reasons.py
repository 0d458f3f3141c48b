"""The bus's error catalogue: one constructor per failure of the device core, with its reason.

Each function builds the ``vgpusim.common.errors`` instance the core raises, so a reason always
comes with the same class, errno, message (mdevctl's wording where mdevctl has the case) and
metadata keys. The servicer needs nothing from here: the errors carry their reason.

Glossary:
- reason: the ``ErrorInfo.reason`` string (UPPER_SNAKE_CASE), e.g. ``UUID_IN_USE``.
- holder: the owner that holds a device open (``metadata["owner"]``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from vgpusim.common.errors import AlreadyExists, Busy, InvalidArgument, NotFound, PermissionDenied, WrongState


def uuid_in_use(
    uuid: str, existing_parent: str, existing_type: str, parent: str, type_id: str
) -> AlreadyExists:
    """``UUID_IN_USE`` (EEXIST): the UUID exists (or is being created) somewhere on the bus."""
    if existing_parent != parent:
        message = "Device exists under different parent"
    elif existing_type != type_id:
        message = "Device exists with different type"
    else:
        message = "Device already exists"
    return AlreadyExists(
        message,
        reason="UUID_IN_USE",
        metadata={"uuid": uuid, "parent": existing_parent, "type_id": existing_type},
    )


def unknown_parent(parent: str, registered: Iterable[str]) -> NotFound:
    """``UNKNOWN_PARENT`` (ENOENT), with mdevctl's "Did you mean" hint for a case mismatch."""
    message = f"Unable to find parent device '{parent}'"
    similar = [name for name in registered if name.lower() == parent.lower()]
    if similar:
        message += f". Did you mean '{similar[0]}'?"
    return NotFound(message, reason="UNKNOWN_PARENT", errno=errno.ENOENT, metadata={"parent": parent})


def unknown_type(parent: str, type_id: str) -> InvalidArgument:
    """``UNKNOWN_TYPE`` (EINVAL): the parent's catalogue has no such type."""
    return InvalidArgument(
        f"Parent {parent} does not support mdev type {type_id}",
        reason="UNKNOWN_TYPE",
        metadata={"parent": parent, "type_id": type_id},
    )


def parent_removed(parent: str) -> NotFound:
    """``PARENT_REMOVED`` (ENODEV): the parent is going away (the kernel's ``unreg_sem`` trylock fails)."""
    return NotFound(
        f"Parent {parent} is not currently registered for mdev support",
        reason="PARENT_REMOVED",
        errno=errno.ENODEV,
        metadata={"parent": parent},
    )


def parent_exists(parent: str) -> AlreadyExists:
    """``PARENT_EXISTS`` (EEXIST): a parent of that name is registered (perhaps going away)."""
    return AlreadyExists(
        f"Parent {parent} is already registered", reason="PARENT_EXISTS", metadata={"parent": parent}
    )


def parent_busy(parent: str) -> Busy:
    """``PARENT_BUSY`` (EAGAIN): an unregistration of the parent is already running."""
    return Busy(
        f"Parent {parent} is already being unregistered",
        reason="PARENT_BUSY",
        errno=errno.EAGAIN,
        metadata={"parent": parent},
    )


def unknown_device(uuid: str) -> NotFound:
    """``UNKNOWN_DEVICE`` (ENODEV): no device with this UUID exists."""
    return NotFound(f"Mediated device {uuid} is not active", reason="UNKNOWN_DEVICE", metadata={"uuid": uuid})


def device_busy(uuid: str, state: str, why: str) -> Busy:
    """``DEVICE_BUSY`` (EAGAIN): a create, remove, open or close of the device is in flight."""
    return Busy(
        f"Device {uuid} is busy: {why}",
        reason="DEVICE_BUSY",
        errno=errno.EAGAIN,
        metadata={"uuid": uuid, "state": state},
    )


def device_in_use(uuid: str, holder: str) -> Busy:
    """``DEVICE_IN_USE`` (EBUSY): another owner holds the device open."""
    return Busy(
        f"Device {uuid} is in use by {holder}",
        reason="DEVICE_IN_USE",
        metadata={"owner": holder, "uuid": uuid},
    )


def device_not_open(uuid: str) -> WrongState:
    """``DEVICE_NOT_OPEN``: a close of a device nobody holds."""
    return WrongState(f"Device {uuid} is not open", reason="DEVICE_NOT_OPEN", metadata={"uuid": uuid})


def not_owner(uuid: str, holder: str, caller: str) -> PermissionDenied:
    """``NOT_OWNER`` (EPERM): a close by someone other than the holder."""
    return PermissionDenied(
        f"Device {uuid} is open by {holder}, not by {caller}",
        reason="NOT_OWNER",
        metadata={"owner": holder, "uuid": uuid},
    )
