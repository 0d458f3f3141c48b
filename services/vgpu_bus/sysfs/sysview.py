"""The ``sys/`` half of the tree, computed from the bus on every call (kernel-mdev §1).

Nothing is cached: each lookup, listing or read asks the :class:`~..core.VgpuBus` afresh, on
the bus's own event loop, so a device created or removed through gRPC shows (or vanishes) in
the very next system call, and ``available_instances``/``description`` are the vendor's live
answers. Resolving the structure (does parent ``P`` exist? device ``U``?) never calls the
vendor; only type directories and their files do, because ``description`` decides whether the
``description`` file exists (the kernel shows it only when the driver has one).

What is shown:

- parents that are going away (unregistration begun) lose their ``class/mdev_bus`` link and
  their ``mdev_supported_types`` directory, as in ``mdev_unregister_parent()``; their devices
  stay until revoked;
- devices still being created (``CREATING``) are not shown yet; devices being removed are shown
  until the vendor's remove returns;
- ``<U>/iommu_group`` links to a number of its own (the kernel gives each mdev an emulated
  group): the lowest number free when the device was first seen, released when it is gone;
- ``<U>/<name>`` for each vendor attribute the device was created with (the last value wins when
  a name repeats); writes are described in :mod:`.stores`.

Glossary:
- catalogue probe: ``parent_info(P, type_id="")``: the parent's record with no type, which the
  core answers without calling the vendor ("" is never a type-id).
- group number: the ``n`` of ``sys/kernel/iommu_groups/<n>``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from vgpusim.common.errors import NotFound
from vgpusim.vgpu_bus.core import DeviceInfo, DeviceState, ParentInfo, ParentState, TypeInfo, VgpuBus
from vgpusim.vgpu_bus.sysfs import layout, stores
from vgpusim.vgpu_bus.sysfs.layout import (
    DIR,
    IOMMU_GROUPS,
    MDEV_BUS,
    MDEV_DEVICES,
    PARENTS,
    RO_FILE,
    RW_FILE,
    TYPES_DIR,
    WO_FILE,
    FsError,
    Node,
    Path,
    enoent,
    link,
)

_NO_TYPE = ""
"""The type filter of a catalogue probe (see the glossary)."""


class IommuGroups:
    """Group numbers of the devices: the lowest free number at first sight, freed when gone."""

    def __init__(self) -> None:
        self._by_uuid: dict[str, int] = {}

    def update(self, uuids: Iterable[str]) -> None:
        """Make the numbered set exactly ``uuids`` (new ones numbered in the order given)."""
        live = list(uuids)
        wanted = set(live)
        for uuid in [uuid for uuid in self._by_uuid if uuid not in wanted]:
            del self._by_uuid[uuid]
        used = set(self._by_uuid.values())
        free = 0
        for uuid in live:
            if uuid in self._by_uuid:
                continue
            while free in used:
                free += 1
            self._by_uuid[uuid] = free
            used.add(free)

    def number(self, uuid: str) -> int:
        """The group of ``uuid`` (it must be numbered)."""
        return self._by_uuid[uuid]

    def owner(self, group: str) -> str | None:
        """The UUID whose group is named ``group``, if any."""
        for uuid, number in self._by_uuid.items():
            if str(number) == group:
                return uuid
        return None

    def numbers(self) -> dict[str, int]:
        """A copy of the numbering."""
        return dict(self._by_uuid)


class SysView:
    """The ``sys/`` part of the tree over one bus. Call only on the bus's event loop."""

    def __init__(self, bus: VgpuBus) -> None:
        self._bus = bus
        self.groups = IommuGroups()

    # -- structure -----------------------------------------------------------------------------

    async def resolve(self, path: Path) -> Node:
        """What the dynamic ``path`` under ``sys/`` is now; ``ENOENT`` if nothing."""
        match path:
            case ("sys", "class", "mdev_bus", parent):
                if (await self._parent(parent)).state is ParentState.GOING_AWAY:
                    raise enoent(path)
                return link(layout.class_link(parent))
            case ("sys", "bus", "mdev", "devices", uuid):
                device = self._device(uuid)
                return link(layout.bus_link(device.parent, uuid))
            case ("sys", "devices", layout.PCI_ROOT, parent):
                await self._parent(parent)
                return DIR
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR):
                if (await self._parent(parent)).state is ParentState.GOING_AWAY:
                    raise enoent(path)
                return DIR
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR, type_id, *rest):
                return await self._type_node(path, await self._type(parent, type_id), rest)
            case ("sys", "devices", layout.PCI_ROOT, parent, uuid, *rest):
                return self._device_node(path, self._device(uuid, parent), rest)
            case ("sys", "kernel", "iommu_groups", group, *rest):
                uuid = self._group_owner(group)
                if rest == []:
                    return DIR
                if rest == ["devices"]:
                    return DIR
                if rest == ["devices", uuid]:
                    return link(layout.group_device_link(self._device(uuid).parent, uuid))
        raise enoent(path)

    async def listdir(self, path: Path) -> list[tuple[str, Node]]:
        """The dynamic entries of the directory ``path`` (the fixed ones are ``tree.STATIC_DIRS``)."""
        if path == MDEV_BUS:
            parents = await self._parents()
            return [
                (p.name, link(layout.class_link(p.name)))
                for p in parents
                if p.state is not ParentState.GOING_AWAY
            ]
        if path == MDEV_DEVICES:
            return [(d.uuid, link(layout.bus_link(d.parent, d.uuid))) for d in self._devices()]
        if path == PARENTS:
            return [(p.name, DIR) for p in await self._parents()]
        if path == IOMMU_GROUPS:
            self._devices()  # renumbers the groups
            return sorted(((str(n), DIR) for n in self.groups.numbers().values()), key=lambda e: int(e[0]))
        node = await self.resolve(path)
        if node is not DIR:
            raise FsError(errno.ENOTDIR, "/".join(path))
        match path:
            case ("sys", "devices", layout.PCI_ROOT, parent):
                entries = [(d.uuid, DIR) for d in self._devices() if d.parent == parent]
                state = (await self._parent(parent)).state
                return entries if state is ParentState.GOING_AWAY else [(TYPES_DIR, DIR), *entries]
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR):
                catalogue = await self._bus.devices.parent_info(parent)
                return [(t.type_id, DIR) for t in catalogue.types]
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR, type_id):
                info = await self._type(parent, type_id)
                files = [(name, RO_FILE) for name in layout.TYPE_FILES_RO if name != "description"]
                if info.description:
                    files.append(("description", RO_FILE))
                return [*sorted(files), (layout.CREATE, WO_FILE), ("devices", DIR)]
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR, type_id, "devices"):
                return [
                    (d.uuid, link(layout.type_device_link(d.uuid)))
                    for d in self._devices()
                    if d.parent == parent and d.type_id == type_id
                ]
            case ("sys", "devices", layout.PCI_ROOT, parent, uuid):
                device = self._device(uuid, parent)
                return [(name, self._device_node(path, device, [name])) for name in _device_files(device)]
            case ("sys", "kernel", "iommu_groups", group):
                return [("devices", DIR)]
            case ("sys", "kernel", "iommu_groups", group, "devices"):
                uuid = self._group_owner(group)
                return [(uuid, await self.resolve((*path, uuid)))]
        return []

    # -- contents ------------------------------------------------------------------------------

    async def read(self, path: Path) -> bytes:
        """The content of the attribute file ``path``, computed now."""
        match path:
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR, type_id, name):
                info = await self._type(parent, type_id)
                return _type_file(info, name, path)
            case ("sys", "devices", layout.PCI_ROOT, parent, uuid, name):
                device = self._device(uuid, parent)
                node = self._device_node(path, device, [name])
                if not node.readable:
                    raise FsError(errno.EACCES, "/".join(path))
                values = [attr.value for attr in device.attrs if attr.name == name]
                if not values:
                    raise enoent(path)
                return (values[-1] + "\n").encode()
        raise enoent(path)

    async def write(self, path: Path, data: bytes) -> None:
        """One store to the attribute file ``path`` (one ``write()`` call), done before returning."""
        match path:
            case ("sys", "devices", layout.PCI_ROOT, parent, layout.TYPES_DIR, type_id, layout.CREATE):
                # No lookup first: the core answers a parent going away with ENODEV, as the kernel.
                await stores.store_create(self._bus, parent, type_id, data)
                return
            case ("sys", "devices", layout.PCI_ROOT, parent, uuid, name):
                device = self._device(uuid, parent)
                if name == layout.REMOVE:
                    await stores.store_remove(self._bus, device.uuid, data)
                    return
                if not self._device_node(path, device, [name]).writable:
                    raise FsError(errno.EACCES, "/".join(path))
                stores.store_attr(device, name, data)
                return
        node = await self.resolve(path)
        raise FsError(errno.EISDIR if node is DIR else errno.EACCES, "/".join(path))

    # -- internals -----------------------------------------------------------------------------

    async def _parents(self) -> tuple[ParentInfo, ...]:
        # The only way to learn the parents' names; it asks the vendor for each type (readdir only).
        return await self._bus.devices.list_parents()

    async def _parent(self, parent: str) -> ParentInfo:
        try:
            return await self._bus.devices.parent_info(parent, _NO_TYPE)
        except NotFound:
            raise enoent(("sys", "devices", layout.PCI_ROOT, parent)) from None

    async def _type(self, parent: str, type_id: str) -> TypeInfo:
        info = await self._parent(parent)
        if info.state is ParentState.GOING_AWAY:
            raise enoent(layout.parent_dir(parent))
        types = (await self._bus.devices.parent_info(parent, type_id)).types
        if not types:
            raise enoent((*layout.parent_dir(parent), TYPES_DIR, type_id))
        return types[0]

    def _devices(self) -> tuple[DeviceInfo, ...]:
        devices = tuple(d for d in self._bus.devices.list_devices() if d.state is not DeviceState.CREATING)
        self.groups.update(d.uuid for d in sorted(devices, key=lambda d: (d.created_at, d.uuid)))
        return devices

    def _device(self, uuid: str, parent: str | None = None) -> DeviceInfo:
        for device in self._devices():
            if device.uuid == uuid and (parent is None or device.parent == parent):
                return device
        raise enoent(layout.device_dir(parent or "?", uuid))

    def _group_owner(self, group: str) -> str:
        self._devices()
        uuid = self.groups.owner(group)
        if uuid is None:
            raise enoent((*IOMMU_GROUPS, group))
        return uuid

    async def _type_node(self, path: Path, info: TypeInfo, rest: list[str]) -> Node:
        match rest:
            case []:
                return DIR
            case ["devices"]:
                return DIR
            case [layout.CREATE]:
                return WO_FILE
            case ["description"] if info.description:
                return RO_FILE
            case [name] if name in layout.TYPE_FILES_RO and name != "description":
                return RO_FILE
            case ["devices", uuid]:
                device = self._device(uuid, info.parent)
                if device.type_id == info.type_id:
                    return link(layout.type_device_link(uuid))
        raise enoent(path)

    def _device_node(self, path: Path, device: DeviceInfo, rest: list[str]) -> Node:
        match rest:
            case []:
                return DIR
            case [layout.MDEV_TYPE]:
                return link(layout.type_link(device.type_id))
            case [layout.REMOVE]:
                return WO_FILE
            case [layout.IOMMU_GROUP]:
                return link(layout.group_link(self.groups.number(device.uuid)))
            case [name] if any(attr.name == name for attr in device.attrs):
                return RW_FILE
        raise enoent(path)


def _device_files(device: DeviceInfo) -> list[str]:
    attrs = {attr.name for attr in device.attrs} - set(layout.DEVICE_FIXED)
    return sorted({*layout.DEVICE_FIXED, *attrs})


def _type_file(info: TypeInfo, name: str, path: Path) -> bytes:
    if name == layout.CREATE:
        raise FsError(errno.EACCES, "/".join(path))
    if name == "available_instances":
        return f"{info.available_instances}\n".encode()
    if name == "device_api":
        return f"{info.device_api}\n".encode()
    if name == "name":
        return f"{info.name}\n".encode()
    if name == "description" and info.description:
        text = info.description
        return (text if text.endswith("\n") else text + "\n").encode()
    raise enoent(path)
