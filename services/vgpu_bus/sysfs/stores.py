"""The stores: what one ``write()`` to ``create``, ``remove`` or a vendor attribute does.

Like ``mdev_sysfs.c``, each store only parses its buffer and calls the core (the same
``DeviceBus.create_device``/``remove_device`` the gRPC servicer calls); the core's errors
carry the kernel's errno, which the writer gets unchanged (kernel-mdev §1.2, §1.3):

- ``create``: the buffer is the UUID, 36 bytes or 37 with a trailing newline (``EINVAL``
  otherwise, or for a malformed UUID); ``EEXIST`` if the UUID exists on any parent; ``ENODEV``
  if the parent is going away; then the vendor's own error (``ENOSPC`` when it ran out...).
  The device exists, with its directory and links, when ``write()`` returns.
- ``remove``: a ``kstrtoul`` number (``EINVAL`` otherwise); ``0`` does nothing, any other value
  removes the device (``EAGAIN`` while a create or remove of it runs, ``ETIMEDOUT`` if its owner
  does not close it in time). Gone, with every link, when ``write()`` returns.
- a vendor attribute: see :func:`store_attr`.

**Attributes and create.** The vendor contract (``VendorOps.create``) applies attributes at
create time, all or nothing, and has no operation to change one afterwards; mdevctl, on the
other hand, writes ``create`` and then each attribute file of the definition. So a ``create``
for a UUID that has a definition under this parent *with this type* creates the device with the
definition's attributes (what ``mdevctl start -u U`` then writes again, and what
``VgpuBus.definitions.start`` does), and an attribute write succeeds when it repeats a value
the device was created with.

Glossary:
- store: the kernel's name for the write handler of a sysfs attribute.
- kstrtoul: the kernel's unsigned parser: ``0x`` hex, leading ``0`` octal, else decimal, one
  optional trailing newline.
"""

from __future__ import annotations

import errno
import re

from vgpusim.vgpu_bus.core import Attr, DeviceInfo, VgpuBus, parse_uuid
from vgpusim.vgpu_bus.sysfs.layout import FsError

_KSTRTOUL = re.compile(r"\+?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\n?", re.ASCII)


def decode(data: bytes) -> str:
    """The buffer as text; ``EINVAL`` if it is not UTF-8 or holds a NUL."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.EINVAL, "not UTF-8") from None
    if "\x00" in text:
        raise FsError(errno.EINVAL, "NUL in the value")
    return text


def parse_kstrtoul(data: bytes) -> int:
    """The number in ``data`` as the kernel's ``kstrtoul(buf, 0, ...)`` reads it; ``EINVAL`` if none."""
    text = decode(data)
    if not _KSTRTOUL.fullmatch(text):
        raise FsError(errno.EINVAL, f"not a number: {text[:32]!r}")
    digits = text.strip().lstrip("+")
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    if digits.startswith("0"):
        return int(digits, 8)
    return int(digits)


def definition_attrs(bus: VgpuBus, uuid: str, parent: str, type_id: str) -> tuple[Attr, ...]:
    """The attributes of the definition of ``uuid`` under ``parent`` if it has ``type_id``, else none."""
    for defined in bus.definitions.list_defined(uuid=uuid, parent=parent):
        if defined.definition.type_id == type_id:
            return defined.definition.attrs
    return ()


async def store_create(bus: VgpuBus, parent: str, type_id: str, data: bytes) -> DeviceInfo:
    """``echo U > <parent>/mdev_supported_types/<type>/create``."""
    uuid = parse_uuid(decode(data))
    attrs = definition_attrs(bus, uuid, parent, type_id)
    return await bus.devices.create_device(uuid, parent, type_id, attrs)


async def store_remove(bus: VgpuBus, uuid: str, data: bytes) -> None:
    """``echo 1 > <uuid>/remove``."""
    if parse_kstrtoul(data):
        await bus.devices.remove_device(uuid)


def store_attr(device: DeviceInfo, name: str, data: bytes) -> None:
    """A write to ``<uuid>/<name>``, a vendor attribute the device was created with.

    Succeeds when the value (one trailing newline ignored) is one the device was created with
    for ``name`` (so mdevctl's writes after ``create`` succeed); any other value is ``EINVAL``,
    because the vendor cannot change an attribute of a live device. Unknown names never get
    here: their files do not exist (``ENOENT`` to ``stat``, ``EACCES`` to ``O_CREAT``).
    """
    value = decode(data)
    if value.endswith("\n"):
        value = value[:-1]
    values = [attr.value for attr in device.attrs if attr.name == name]
    if not values:
        raise FsError(errno.ENOENT, name)
    if value not in values:
        raise FsError(
            errno.EINVAL, f"attribute {name} of {device.uuid} is {values[-1]!r}; it is fixed at create"
        )
